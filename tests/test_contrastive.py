"""Tests of miracl_grid.trainables.contrastive (Eq. 9, METHOD §6): loop reference and a 2-process gloo DDP check."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.distributed as distributed

from gloo import run_on_gloo
from miracl_grid.trainables.contrastive import ContrastiveError, patient_contrastive_loss


def loop_reference(ehr, note, has_series, has_note, patient, temperature):
    """Eq. 9 written out row by row in Python (independent of the masked implementation)."""
    rows, ids = [], []
    for i in range(len(patient)):
        if has_series[i]:
            rows.append(ehr[i])
            ids.append(int(patient[i]))
    for i in range(len(patient)):
        if has_note[i]:
            rows.append(note[i])
            ids.append(int(patient[i]))
    rows = [row / row.norm() for row in rows]
    losses = []
    for a in range(len(rows)):
        positives = [p for p in range(len(rows)) if p != a and ids[p] == ids[a]]
        if not positives:
            continue
        denominator = sum(torch.exp(rows[a] @ rows[k] / temperature) for k in range(len(rows)) if k != a)
        terms = [torch.log(torch.exp(rows[a] @ rows[p] / temperature) / denominator) for p in positives]
        losses.append(-sum(terms) / len(positives))
    if not losses:
        return None
    return sum(losses) / len(losses)


def random_batch(size, dimension, generator, patients):
    ehr = torch.randn(size, dimension, generator=generator, dtype=torch.float64)
    note = torch.randn(size, dimension, generator=generator, dtype=torch.float64)
    has_series = torch.rand(size, generator=generator) < 0.75
    has_note = torch.rand(size, generator=generator) < 0.6
    patient = torch.randint(0, patients, (size,), generator=generator)  # several stays per patient
    return ehr, note, has_series, has_note, patient


@pytest.mark.parametrize("seed", range(6))
def test_matches_loop_reference_value_and_gradient(seed):
    generator = torch.Generator().manual_seed(seed)
    ehr, note, has_series, has_note, patient = random_batch(12, 5, generator, patients=5)
    ehr.requires_grad_(True)
    note.requires_grad_(True)
    loss = patient_contrastive_loss(ehr, note, has_series, has_note, patient, temperature=0.5)
    expected = loop_reference(ehr, note, has_series, has_note, patient, 0.5)
    assert expected is not None
    torch.testing.assert_close(loss, expected)
    gradient = torch.autograd.grad(loss, (ehr, note))
    expected_gradient = torch.autograd.grad(expected, (ehr, note))
    for got, want in zip(gradient, expected_gradient):
        torch.testing.assert_close(got, want)


def test_hand_computed_two_rows():
    # one patient, EHR and note rows only: ℓ = −log(exp(s)/exp(s)) = 0 for both anchors
    ehr = torch.tensor([[1.0, 0.0]])
    note = torch.tensor([[0.0, 1.0]])
    loss = patient_contrastive_loss(ehr, note, torch.tensor([True]), torch.tensor([True]), torch.tensor([7]), 0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # two patients, orthogonal vs aligned: anchor a's positive has cos 0, negatives cos 1 and 0
    ehr = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    note = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    loss = patient_contrastive_loss(ehr, note, torch.tensor([True, True]), torch.tensor([True, True]),
                                    torch.tensor([0, 1]), 1.0)
    # each anchor: positive sim 0, denominator over 3 others: exp(0) [pos] + exp(1) + exp(0)
    assert loss.item() == pytest.approx(-math.log(1 / (2 + math.e)), rel=1e-6)


def test_no_positive_gives_zero_with_gradient_and_missing_everything():
    ehr = torch.randn(3, 4, requires_grad=True)
    note = torch.randn(3, 4, requires_grad=True)
    loss = patient_contrastive_loss(ehr, note, torch.tensor([True, True, False]),
                                    torch.tensor([False, False, True]), torch.tensor([0, 1, 2]), 0.07)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(ehr.grad, torch.zeros(3, 4))
    none = patient_contrastive_loss(ehr, note, torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool),
                                    torch.tensor([0, 0, 0]), 0.07)
    assert none.item() == 0.0 and none.requires_grad


def test_a_single_present_row_has_no_nan_gradient():
    ehr = torch.randn(2, 4, requires_grad=True)
    note = torch.randn(2, 4, requires_grad=True)
    loss = patient_contrastive_loss(ehr, note, torch.tensor([True, False]), torch.tensor([False, False]),
                                    torch.tensor([0, 0]), 0.07)
    loss.backward()
    assert not torch.isnan(ehr.grad).any()


def test_bad_input_is_rejected():
    with pytest.raises(ContrastiveError, match="shape"):
        patient_contrastive_loss(torch.zeros(3, 4), torch.zeros(3, 5), torch.ones(3, dtype=torch.bool),
                                 torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long), 0.07)
    with pytest.raises(ContrastiveError, match="temperature"):
        patient_contrastive_loss(torch.zeros(3, 4), torch.zeros(3, 4), torch.ones(3, dtype=torch.bool),
                                 torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long), 0.0)


# --- DDP (2 gloo processes) ------------------------------------------------------------------------
class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ehr = torch.nn.Linear(6, 4)
        self.note = torch.nn.Linear(6, 4)

    def forward(self, series, notes):
        return self.ehr(series), self.note(notes)


def _global_batch():
    generator = torch.Generator().manual_seed(42)
    size = 12
    series = torch.randn(size, 6, generator=generator)
    notes = torch.randn(size, 6, generator=generator)
    has_series = torch.rand(size, generator=generator) < 0.8
    has_note = torch.rand(size, generator=generator) < 0.7
    patient = torch.randint(0, 5, (size,), generator=generator)  # patients straddle both ranks
    return series, notes, has_series, has_note, patient


SPLIT = 7  # uneven local batches: rank 0 gets 7 instances, rank 1 gets 5


def _ddp_worker(rank: int, world: int, init_file: str, queue) -> None:
    torch.manual_seed(0)
    distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from miracl_grid.trainables.distributed import autograd_all_gather
        torch.manual_seed(0)
        model = TwoHeads()
        reference = TwoHeads()
        reference.load_state_dict(model.state_dict())
        series, notes, has_series, has_note, patient = _global_batch()
        # single-process loss and gradient on the whole global batch
        ehr, note = reference(series, notes)
        full_loss = patient_contrastive_loss(ehr, note, has_series, has_note, patient, 0.1)
        full_loss.backward()
        expected = {name: p.grad.clone() for name, p in reference.named_parameters()}
        # DDP on this rank's slice
        local = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        ehr, note = ddp(series[local], notes[local])
        with warnings.catch_warnings(record=True) as caught:   # the production all-gather, no deprecation
            warnings.simplefilter("always")
            loss = patient_contrastive_loss(ehr, note, has_series[local], has_note[local], patient[local], 0.1,
                                            gather=autograd_all_gather)
            loss.backward()
        deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
        mean_loss = loss.detach().clone()
        distributed.all_reduce(mean_loss)
        mean_loss /= world
        errors = {name: float((p.grad - expected[name]).abs().max()) for name, p in model.named_parameters()}
        queue.put((rank, float(full_loss), float(mean_loss), errors,
                   max(float(g.abs().max()) for g in expected.values()), deprecations))
    finally:
        distributed.destroy_process_group()


def test_ddp_averaged_gradient_equals_single_process_gradient():
    results = run_on_gloo(_ddp_worker)
    for rank, full_loss, mean_loss, errors, scale, deprecations in results:
        assert not deprecations, deprecations
        assert scale > 1e-3  # the gradient is not trivially zero
        assert mean_loss == pytest.approx(full_loss, rel=1e-5), rank
        for name, error in errors.items():
            assert error < 1e-5, (rank, name, error)
