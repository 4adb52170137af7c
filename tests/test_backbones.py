"""Backbones (METHOD §11): output contract, masking/padding, batch (in)dependence, MoE gating and
balance loss, orthogonality and context losses against hand-computed values, overfitting."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as functional

from miracl_grid.trainables.backbones import BACKBONES, BackboneOutput, build_backbone
from miracl_grid.trainables.backbones.flexcare import (FusionLayout, NoisyTopKExperts, balance_loss, cv_squared,
                                           orthogonality_loss)
from miracl_grid.trainables.backbones.m3care import impute_from_neighbours
from miracl_grid.trainables.config import TrialConfig

CHANNELS, NOTE_DIM, LABELS, HIDDEN = 5, 12, 4, 16
CONFIG = TrialConfig(hidden_size=HIDDEN, lstm_layers=2, fusion_layers=2, fusion_heads=2, num_experts=4,
                     top_k_experts=2, dropout=0.1, moe_loss_weight=0.01, orthogonality_loss_weight=0.01,
                     cbmlc_lambda=0.5)
# instances: both, EHR only, note only, neither, both, both
MIXED = ([7, 3, 0, 0, 5, 2], [4, 0, 9, 0, 2, 9])
AUXILIARY_KEYS = {"flexcare": {"moe_balance", "orthogonality"}, "medfuse": set(), "m3care": set(),
                  "cbmlc": {"context"}}


def build(name: str, config: TrialConfig = CONFIG, seed: int = 0) -> torch.nn.Module:
    """A backbone whose zero-initialised parameters (gates, biases) are perturbed, so no test is vacuous."""
    torch.manual_seed(seed)
    names = torch.randn(LABELS, NOTE_DIM)
    model = build_backbone(name, config, num_labels=LABELS, series_channels=CHANNELS, note_dim=NOTE_DIM,
                           label_name_embeddings=names)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def make_batch(series_length, note_length, steps=None, tokens=None, seed=0, padding=0.0) -> dict:
    """Batch dict as `miracl_grid.data.dataset.collate` makes it; ``padding`` fills positions beyond the lengths
    (0 = the contract's zero padding; anything else checks that padding is never read)."""
    generator = torch.Generator().manual_seed(seed)
    series_length, note_length = torch.tensor(series_length), torch.tensor(note_length)
    size = len(series_length)
    steps = steps or max(1, int(series_length.max()))
    tokens = tokens or max(1, int(note_length.max()))
    series_valid = (torch.arange(steps)[None, :] < series_length[:, None])[..., None]
    note_valid = (torch.arange(tokens)[None, :] < note_length[:, None])[..., None]
    series = torch.where(series_valid, torch.randn(size, steps, CHANNELS, generator=generator),
                         padding * torch.randn(size, steps, CHANNELS, generator=generator))
    note = torch.where(note_valid, torch.randn(size, tokens, NOTE_DIM, generator=generator),
                       padding * torch.randn(size, tokens, NOTE_DIM, generator=generator))
    return {"index": torch.arange(size), "patient": torch.arange(size), "series": series,
            "series_length": series_length, "has_series": series_length > 0, "note": note,
            "note_length": note_length, "has_note": note_length > 0,
            "labels": (torch.rand(size, LABELS, generator=generator) > 0.5).float()}


def select(batch: dict, rows) -> dict:
    rows = torch.as_tensor(rows)
    return {key: value[rows] for key, value in batch.items()}


def pad(batch: dict, extra_steps: int, extra_tokens: int, value: float, seed: int = 5) -> dict:
    generator = torch.Generator().manual_seed(seed)
    padded = dict(batch)
    size = batch["series"].shape[0]
    padded["series"] = torch.cat([batch["series"], value * torch.randn(size, extra_steps, CHANNELS,
                                                                       generator=generator)], 1)
    padded["note"] = torch.cat([batch["note"], value * torch.randn(size, extra_tokens, NOTE_DIM,
                                                                   generator=generator)], 1)
    return padded


def assert_outputs_close(first: BackboneOutput, second: BackboneOutput, atol: float = 1e-5) -> None:
    torch.testing.assert_close(first.logits, second.logits, atol=atol, rtol=0)
    torch.testing.assert_close(first.ehr_embedding, second.ehr_embedding, atol=atol, rtol=0)
    torch.testing.assert_close(first.note_embedding, second.note_embedding, atol=atol, rtol=0)
    for key in first.unimodal_logits:
        torch.testing.assert_close(first.unimodal_logits[key], second.unimodal_logits[key], atol=atol, rtol=0)


# --- contract ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_mixed_batch_finite_outputs_and_gradients(name):
    model = build(name).train()
    batch = make_batch(*MIXED)
    output = model(batch)
    assert isinstance(output, BackboneOutput)
    assert output.logits.shape == (6, LABELS)
    assert output.ehr_embedding.shape == (6, HIDDEN) and output.note_embedding.shape == (6, HIDDEN)
    assert set(output.auxiliary_losses) == AUXILIARY_KEYS[name]
    for tensor in (output.logits, output.ehr_embedding, output.note_embedding, *output.unimodal_logits.values()):
        assert torch.isfinite(tensor).all()
    for value in output.auxiliary_losses.values():
        assert value.dim() == 0 and torch.isfinite(value)
    loss = (functional.binary_cross_entropy_with_logits(output.logits, batch["labels"])
            + sum(output.auxiliary_losses.values())
            + output.ehr_embedding[batch["has_series"]].pow(2).mean()
            + output.note_embedding[batch["has_note"]].pow(2).mean()
            + sum(logits.mean() for logits in output.unimodal_logits.values()))
    loss.backward()
    without_gradient = [key for key, parameter in model.named_parameters() if parameter.grad is None]
    assert without_gradient == []
    for key, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), key
    assert model.series_encoder.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert model.note_encoder.projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("padding", [0.0, 3.0])
def test_padding_beyond_lengths_does_not_change_outputs(name, padding):
    model = build(name).eval()
    batch = make_batch(*MIXED)
    with torch.no_grad():
        reference = model(batch)
        padded = model(pad(batch, extra_steps=5, extra_tokens=6, value=padding))
    assert_outputs_close(reference, padded)
    for key, value in reference.auxiliary_losses.items():
        torch.testing.assert_close(value, padded.auxiliary_losses[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_content_of_an_absent_modality_is_never_read(name):
    model = build(name).eval()
    batch = make_batch(*MIXED)
    altered = dict(batch)
    absent_series = ~batch["has_series"]
    absent_note = ~batch["has_note"]
    altered["series"] = torch.where(absent_series[:, None, None], torch.randn_like(batch["series"]), batch["series"])
    altered["note"] = torch.where(absent_note[:, None, None], torch.randn_like(batch["note"]), batch["note"])
    assert not torch.equal(altered["series"], batch["series"]) and not torch.equal(altered["note"], batch["note"])
    with torch.no_grad():
        assert_outputs_close(model(batch), model(altered))


@pytest.mark.parametrize("name", ["flexcare", "medfuse", "cbmlc"])
def test_instance_logits_do_not_depend_on_the_rest_of_the_batch(name):
    model = build(name).eval()
    batch = make_batch(*MIXED)
    with torch.no_grad():
        together = model(batch).logits
        for row in range(6):
            alone = model(select(batch, [row])).logits
            torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=0)
        order = torch.tensor([5, 3, 1, 0, 4, 2])
        shuffled = model(select(batch, order)).logits
    torch.testing.assert_close(shuffled, together[order], atol=1e-5, rtol=0)


def test_m3care_depends_on_the_batch_only_through_imputed_modalities():
    model = build("m3care").eval()
    batch = make_batch(*MIXED)
    with torch.no_grad():
        reference = model(batch).logits
        other_note = dict(batch, note=batch["note"].clone())
        other_note["note"][4, :2] = torch.randn(2, NOTE_DIM)          # instance 4 has both modalities
        note_changed = model(other_note).logits
        other_series = dict(batch, series=batch["series"].clone())
        other_series["series"][4, :5] = torch.randn(5, CHANNELS)
        series_changed = model(other_series).logits
        for row in (0, 5):                                            # complete instances: unaffected
            alone = model(select(batch, [row])).logits[0]
            torch.testing.assert_close(alone, reference[row], atol=1e-5, rtol=0)
    for row in (0, 3, 5):   # complete ones, and the one with no modality (no neighbour is comparable)
        torch.testing.assert_close(note_changed[row], reference[row], atol=1e-5, rtol=0)
        torch.testing.assert_close(series_changed[row], reference[row], atol=1e-5, rtol=0)
    # the incomplete ones impute from instance 4 (among others): EHR-only reads its note,
    # note-only its series (and each also compares itself with 4 on the modality it has)
    assert (note_changed[1] - reference[1]).abs().max() > 1e-4
    assert (series_changed[2] - reference[2]).abs().max() > 1e-4


def test_medfuse_feeds_only_the_available_modalities_in_order():
    model = build("medfuse").eval()
    batch = make_batch(*MIXED)
    with torch.no_grad():
        logits = model(batch).logits
        encoded = model.encode(batch)
        for row in range(6):
            steps = []
            if batch["has_series"][row]:
                steps.append(encoded.ehr_pooled[row] + model.modality_types[0])
            if batch["has_note"][row]:
                steps.append(encoded.note_pooled[row] + model.modality_types[1])
            if not steps:
                steps.append(model.empty_embedding)
            _, (final_hidden, _) = model.fusion(torch.stack(steps)[None])
            torch.testing.assert_close(model.head(final_hidden[-1, 0]), logits[row], atol=1e-5, rtol=0)


def test_m3care_falls_back_to_the_learned_embedding_without_candidates():
    model = build("m3care").eval()
    batch = make_batch([4, 6, 2], [0, 0, 0])                          # nobody has a note
    with torch.no_grad():
        together = model(batch).logits
        alone = torch.cat([model(select(batch, [row])).logits for row in range(3)])
        changed_missing = model.missing_embeddings.clone()
        model.missing_embeddings[1] += 1.0
        moved = model(batch).logits
        model.missing_embeddings.copy_(changed_missing)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert torch.isfinite(together).all()
    assert (moved - together).abs().min() > 1e-5                      # every row used the fallback


def test_impute_from_neighbours_hand_case():
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    similarity = torch.tensor([[9.0, 0.0, math.log(3.0)], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    candidates = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    fallback = torch.tensor([-1.0, -1.0])
    imputed, has_candidate = impute_from_neighbours(values, similarity, candidates, fallback)
    # row 0: softmax(0, ln 3) = (1/4, 3/4) over rows 1, 2 (self excluded although most similar)
    torch.testing.assert_close(imputed[0], torch.tensor([1.5, 1.75]))
    torch.testing.assert_close(imputed[1], fallback)
    torch.testing.assert_close(imputed[2], values[0])
    assert has_candidate.tolist() == [True, False, True]


# --- FlexCare parts ---------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_moe_routes_each_token_to_exactly_k_experts(training):
    torch.manual_seed(3)
    experts = NoisyTopKExperts(8, 8, num_experts=6, k=2).train(training)
    with torch.no_grad():
        for parameter in (experts.gate, experts.query_gate, experts.noise):
            parameter.normal_()
    inputs, queries = torch.randn(40, 8), torch.randn(40, 8)
    available = torch.arange(40) % 4 != 0
    outputs, gates, importance, load = experts(inputs, queries, available)
    assert ((gates > 0).sum(dim=1) == 2).all()
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(40))
    torch.testing.assert_close(importance.sum(), available.sum().float())
    # outputs = the gate-weighted sum of the selected experts, each run on its own
    for row in (0, 1, 17):
        expected = torch.zeros(8)
        for expert in gates[row].nonzero().flatten().tolist():
            hidden = torch.relu(inputs[row] @ experts.first_weight[expert] + experts.first_bias[expert])
            expected += gates[row, expert] * (hidden @ experts.second_weight[expert] + experts.second_bias[expert])
        torch.testing.assert_close(outputs[row], expected, atol=1e-5, rtol=1e-5)
    if not training:                                      # eval: clean gates, load = routed counts
        routed = ((gates > 0) & available[:, None]).sum(dim=0).float()
        torch.testing.assert_close(load, routed)
        clean = inputs @ experts.gate + queries @ experts.query_gate
        assert torch.equal(gates > 0, torch.zeros_like(gates, dtype=torch.bool).scatter(
            1, clean.topk(2, dim=1).indices, True))


def test_moe_smooth_load_is_differentiable_in_training():
    torch.manual_seed(4)
    experts = NoisyTopKExperts(8, 8, num_experts=5, k=2).train()
    _, _, importance, load = experts(torch.randn(30, 8), torch.randn(30, 8), torch.ones(30, dtype=torch.bool))
    assert load.sum() > 0
    balance_loss(importance, load).backward()
    assert experts.noise.grad.abs().sum() > 0 and experts.gate.grad.abs().sum() > 0


def test_balance_loss_hand_cases():
    uniform = torch.full((4,), 5.0)
    assert balance_loss(uniform, uniform) < 1e-8
    collapsed = torch.tensor([2.0, 0.0, 0.0, 0.0])          # mean 0.5, unbiased var 1 -> CV² = 4
    torch.testing.assert_close(cv_squared(collapsed), torch.tensor(4.0))
    torch.testing.assert_close(balance_loss(collapsed, collapsed), torch.tensor(8.0))
    half = torch.tensor([1.0, 1.0, 0.0, 0.0])               # mean 0.5, var 1/3 -> CV² = 4/3
    assert balance_loss(uniform, uniform) < balance_loss(half, half) < balance_loss(collapsed, collapsed)


def test_orthogonality_loss_hand_cases():
    orthonormal = torch.eye(3)[None] * torch.tensor([2.0, 0.5, 7.0])[None, :, None]   # scale-free
    everything = torch.ones(1, 3, dtype=torch.bool)
    assert orthogonality_loss(orthonormal, everything) < 1e-12
    sixty = torch.tensor([[[1.0, 0.0], [0.5, math.sqrt(3) / 2], [2.0, 0.0]]])   # cos 60° = 0.5
    first_two = torch.tensor([[True, True, False]])       # the parallel third token is unavailable
    torch.testing.assert_close(orthogonality_loss(sixty, first_two), torch.tensor(0.5))  # 2 · 0.5²
    torch.testing.assert_close(orthogonality_loss(sixty, everything), torch.tensor(2 * 0.25 * 2 + 2 * 1.0))
    # instances with fewer than two available tokens do not count
    batch = torch.cat([sixty, sixty])
    mixed = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(orthogonality_loss(batch, mixed), torch.tensor(0.5))


def test_flexcare_layout_masks_hand_case():
    ehr_mask = torch.tensor([[True, False], [False, False]])
    note_mask = torch.tensor([[True], [True]])
    layout = FusionLayout.of(ehr_mask, note_mask)
    allowed = torch.isfinite(layout.prefix_allowed)
    # prefix rows over [task, c_both, c_ehr, c_note, ehr0, ehr1, note0]
    assert torch.equal(allowed[0], torch.tensor([
        [1, 1, 1, 1, 1, 0, 1],
        [0, 1, 0, 0, 1, 0, 1],
        [0, 0, 1, 0, 1, 0, 0],
        [0, 0, 0, 1, 0, 0, 1]], dtype=torch.bool))
    assert torch.equal(allowed[1], torch.tensor([      # no series: nobody reads the EHR block
        [1, 1, 1, 1, 0, 0, 1],
        [0, 1, 0, 0, 0, 0, 1],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 1]], dtype=torch.bool))
    # modality blocks: real keys; an instance without the modality attends its padded position 0
    assert torch.isfinite(layout.ehr_keys).squeeze(1).tolist() == [[True, False], [True, False]]
    assert torch.isfinite(layout.note_keys).squeeze(1).tolist() == [[True], [True]]
    assert layout.ehr_rows.tolist() == [0] and layout.note_rows.tolist() == [0, 1]
    prefix, ehr, note = torch.randn(2, 4, 3), torch.randn(2, 2, 3), torch.randn(2, 1, 3)
    rows = layout.pack(prefix, ehr, note)
    assert rows.shape == (8 + 1 + 2, 3)
    back_prefix, back_ehr, back_note = layout.unpack(rows)
    torch.testing.assert_close(back_prefix, prefix)
    torch.testing.assert_close(back_ehr, ehr * ehr_mask[..., None])
    torch.testing.assert_close(back_note, note)


def test_flexcare_overfits_sixteen_instances():
    config = CONFIG.replace(dropout=0.0)
    model = build("flexcare", config, seed=1).train()
    batch = make_batch([5, 3, 0, 6, 2, 6, 1, 4, 6, 0, 5, 3, 2, 6, 4, 1],
                       [7, 0, 4, 2, 0, 8, 3, 1, 8, 6, 0, 5, 2, 7, 8, 4], seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        output = model(batch)
        loss = functional.binary_cross_entropy_with_logits(output.logits, batch["labels"])
        losses.append(loss.item())
        optimizer.zero_grad()
        (loss + sum(output.auxiliary_losses.values())).backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]


# --- CbMLC ------------------------------------------------------------------------------------

def test_cbmlc_context_loss_matches_hand_computation():
    model = build("cbmlc")                                  # label embeddings perturbed away from h(s)
    names = model.label_names
    by_hand = (names - names.mean(dim=0)) @ model.context_projection
    torch.testing.assert_close(model.context_targets, by_hand, atol=1e-5, rtol=1e-5)
    expected = CONFIG.cbmlc_lambda * ((model.label_embeddings - by_hand) ** 2).sum()
    output = model.eval()(make_batch(*MIXED))
    torch.testing.assert_close(output.auxiliary_losses["context"], expected, atol=1e-5, rtol=1e-5)
    assert expected > 0
    trainable = {id(parameter) for parameter in model.parameters()}
    assert id(model.context_targets) not in trainable and id(model.context_projection) not in trainable


def test_cbmlc_label_map_keeps_label_name_geometry_and_starts_at_zero():
    torch.manual_seed(0)
    names = torch.randn(LABELS, NOTE_DIM) + 5.0             # a shared offset, as mean-pooled encodings have
    model = build_backbone("cbmlc", CONFIG, num_labels=LABELS, series_channels=CHANNELS, note_dim=NOTE_DIM,
                           label_name_embeddings=names)
    ratio = torch.pdist(model.context_targets.double()) / torch.pdist(names.double())
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((model.context_targets ** 2).sum(dim=1).mean(), torch.tensor(float(HIDDEN)))
    torch.testing.assert_close(model.label_embeddings.detach(), model.context_targets)
    assert model(make_batch(*MIXED)).auxiliary_losses["context"].item() == 0.0


def test_cbmlc_needs_label_name_embeddings_of_the_right_shape():
    with pytest.raises(ValueError, match="label_name_embeddings"):
        build_backbone("cbmlc", CONFIG, num_labels=LABELS, series_channels=CHANNELS, note_dim=NOTE_DIM)
    with pytest.raises(ValueError, match=r"\(4, D\)"):
        build_backbone("cbmlc", CONFIG, num_labels=LABELS, series_channels=CHANNELS, note_dim=NOTE_DIM,
                       label_name_embeddings=torch.randn(LABELS + 1, NOTE_DIM))


# --- registry and input checks ----------------------------------------------------------------

def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="cbmlc.*flexcare.*m3care.*medfuse"):
        build_backbone("lamp", CONFIG, num_labels=LABELS, series_channels=CHANNELS, note_dim=NOTE_DIM)


@pytest.mark.parametrize("field, change", [
    ("series", lambda batch: batch["series"][..., :-1]),
    ("note", lambda batch: batch["note"][..., :-1]),
    ("series_length", lambda batch: batch["series_length"] + 100),
    ("has_note", lambda batch: batch["has_note"][:-1]),
])
def test_malformed_batch_names_the_field(field, change):
    model = build("medfuse")
    batch = make_batch(*MIXED)
    batch[field] = change(batch)
    with pytest.raises(ValueError, match=f"'{field}'"):
        model(batch)
