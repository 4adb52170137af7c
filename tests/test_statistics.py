"""Tests of miracl_grid.trainables.statistics (METHOD §3, Eq. 1): bit history, difficulty, gather, resume."""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
import torch.distributed as distributed

from gloo import run_on_gloo
from miracl_grid.trainables.distributed import all_gather_variable
from miracl_grid.trainables.statistics import (MAX_EPOCHS, PairStatistics, StatisticsError,
                                   history_difficulty)


def history_from_rows(rows: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Bit field N×1 from per-pair lists of 0/1 correctness (bit e = epoch e)."""
    epochs = len(rows[0])
    values = [sum(bit << e for e, bit in enumerate(row)) for row in rows]
    return torch.tensor(values, dtype=torch.int64).reshape(-1, 1), epochs


def reference_difficulty(row: list[int], form: str) -> float:
    """Straight Python Eq. 1 from a 0/1 correctness sequence (itertools.groupby runs)."""
    if form == "events":
        memorised = sum(1 for a, b in zip(row, row[1:]) if a == 0 and b == 1)
        forgotten = sum(1 for a, b in zip(row, row[1:]) if a == 1 and b == 0)
        return float(memorised - forgotten)
    runs = [(key, len(list(group))) for key, group in itertools.groupby(row)]
    incorrect = [length for key, length in runs if key == 0]
    correct = [length for key, length in runs if key == 1]
    mean_incorrect = sum(incorrect) / len(incorrect) if incorrect else 0.0
    mean_correct = sum(correct) / len(correct) if correct else 0.0
    return mean_incorrect - mean_correct


# --- hand-computed cases ----------------------------------------------------------------------
def test_difficulty_hand_computed():
    rows = [[0, 0, 1, 1, 1, 0, 1],   # incorrect runs 2,1 → 1.5; correct runs 3,1 → 2; events 2−1
            [1, 1, 1, 1, 1, 1, 1],   # never incorrect: 0 − 7
            [0, 0, 0, 0, 0, 0, 0],   # never correct: 7 − 0
            [1, 0, 1, 0, 1, 0, 1]]   # runs of 1: 1 − 1 = 0; events 3 − 3
    history, epochs = history_from_rows(rows)
    durations = history_difficulty(history, epochs, "durations").reshape(-1).tolist()
    events = history_difficulty(history, epochs, "events").reshape(-1).tolist()
    assert durations == [-0.5, -7.0, 7.0, 0.0]
    assert events == [1.0, 0.0, 0.0, 0.0]


def test_difficulty_matches_python_reference_on_random_histories():
    rng = np.random.default_rng(3)
    for epochs in (1, 2, 5, 30, MAX_EPOCHS):
        rows = rng.integers(0, 2, size=(200, epochs)).tolist()
        history, _ = history_from_rows(rows)
        for form in ("durations", "events"):
            got = history_difficulty(history, epochs, form)
            assert got.dtype == torch.float64
            expected = np.array([reference_difficulty(row, form) for row in rows])
            np.testing.assert_allclose(got.reshape(-1).numpy(), expected, rtol=1e-15, atol=0)


def test_events_form_is_bounded_by_one():
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 2, size=(500, 20)).tolist()
    history, epochs = history_from_rows(rows)
    values = history_difficulty(history, epochs, "events")
    assert set(values.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_no_history_gives_zero_and_bad_form_is_rejected():
    stats = PairStatistics(4, 3)
    assert torch.equal(stats.difficulty(), torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(StatisticsError, match="difficulty form"):
        stats.difficulty("loss")


# --- recording ---------------------------------------------------------------------------------
def correctness(stats: PairStatistics) -> torch.Tensor:
    """The history's bits unpacked: bool E×N×L (bit e of a pair = epoch e + 1 correct)."""
    shifts = torch.arange(stats.epochs_recorded).reshape(-1, 1, 1)
    return ((stats.history.unsqueeze(0) >> shifts) & 1).bool()


def test_record_close_sets_correctness_bits_and_bce():
    stats = PairStatistics(3, 2)
    probabilities = torch.tensor([[0.9, 0.2], [0.4, 0.7], [0.5, 0.51]])
    observed = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    stats.record_batch(torch.tensor([2, 0]), probabilities[[2, 0]], observed[[2, 0]])
    stats.record_batch(torch.tensor([1]), probabilities[[1]], observed[[1]])
    stats.close_epoch()
    # c = 1[(p > 0.5) == y]; p = 0.5 is a negative prediction
    expected = torch.tensor([[True, False], [True, False], [True, True]])
    assert stats.epochs_recorded == 1
    assert torch.equal(correctness(stats)[0], expected)
    expected_bce = -(observed * torch.log(probabilities) + (1 - observed) * torch.log(1 - probabilities))
    torch.testing.assert_close(stats.bce, expected_bce)
    torch.testing.assert_close(stats.probabilities, probabilities)


def test_duplicate_positions_in_a_batch_keep_the_first():
    stats = PairStatistics(2, 1)
    stats.record_batch(torch.tensor([1, 0, 1]), torch.tensor([[0.9], [0.1], [0.2]]), torch.ones(3, 1))
    assert stats.probabilities[1, 0].item() == pytest.approx(0.9)


def test_bad_positions_and_shapes_are_rejected():
    stats = PairStatistics(5, 2)
    with pytest.raises(StatisticsError, match="train positions"):
        stats.record_batch(torch.tensor([5]), torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(StatisticsError, match="shape"):
        stats.record_batch(torch.tensor([0]), torch.zeros(1, 3), torch.zeros(1, 3))


def test_close_epoch_requires_every_row_unless_told_otherwise():
    stats = PairStatistics(3, 1)
    stats.record_batch(torch.tensor([0, 1, 2]), torch.tensor([[0.9], [0.9], [0.1]]), torch.ones(3, 1))
    stats.close_epoch()
    stats.record_batch(torch.tensor([0]), torch.tensor([[0.1]]), torch.ones(1, 1))
    with pytest.raises(StatisticsError, match="2 of 3"):
        stats.close_epoch()
    stats.close_epoch(require_complete=False)
    # row 0 recorded (now incorrect); rows 1, 2 repeat their previous bits (correct, incorrect)
    assert correctness(stats)[:, :, 0].T.tolist() == [[True, False], [True, True], [False, False]]


def test_history_is_capped_at_63_epochs():
    stats = PairStatistics(1, 1)
    for _ in range(MAX_EPOCHS):
        stats.record_batch(torch.tensor([0]), torch.tensor([[0.9]]), torch.ones(1, 1))
        stats.close_epoch()
    assert stats.difficulty().item() == -float(MAX_EPOCHS)
    with pytest.raises(StatisticsError, match="at most 63"):
        stats.close_epoch()


def test_state_dict_resume_is_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    epochs = [(torch.rand(40, 4, generator=generator), (torch.rand(40, 4, generator=generator) < 0.3).float())
              for _ in range(6)]

    def run(stats, chunk):
        for probabilities, observed in chunk:
            stats.record_batch(torch.arange(40), probabilities, observed)
            stats.close_epoch()

    straight = PairStatistics(40, 4)
    run(straight, epochs)
    first = PairStatistics(40, 4)
    run(first, epochs[:3])
    state = first.state_dict()
    resumed = PairStatistics(40, 4)
    resumed.load_state_dict(state)
    run(resumed, epochs[3:])
    for name in ("probabilities", "bce", "history", "current_correct", "recorded"):
        assert torch.equal(getattr(straight, name), getattr(resumed, name)), name
    assert torch.equal(straight.difficulty(), resumed.difficulty())
    with pytest.raises(StatisticsError, match="checkpoint is for"):
        PairStatistics(41, 4).load_state_dict(state)


# --- gather ------------------------------------------------------------------------------------
class ThreadAllGather:
    """An in-process all_gather over threads (slot per rank, two barriers)."""

    def __init__(self, world: int):
        self.slots = [None] * world
        self.barrier = threading.Barrier(world)

    def for_rank(self, rank: int):
        def gather(tensor):
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            result = [slot.clone() for slot in self.slots]
            self.barrier.wait()
            return result
        return gather


def test_gather_merges_shards_with_padding_duplicates_identically_on_every_rank():
    world, size, labels = 3, 10, 2
    generator = torch.Generator().manual_seed(1)
    probabilities = torch.rand(size, labels, generator=generator)
    observed = (torch.rand(size, labels, generator=generator) < 0.5).float()
    # DistributedSampler-like: 10 indices padded to 12 by repeating 0 and 1, interleaved
    padded = list(range(size)) + [0, 1]
    shards = [padded[rank::world] for rank in range(world)]
    ranks = [PairStatistics(size, labels) for _ in range(world)]
    for rank, shard in enumerate(shards):
        index = torch.tensor(shard)
        noise = 0.01 * rank  # a duplicate differs between ranks (e.g. dropout): lowest rank wins
        ranks[rank].record_batch(index, (probabilities[index] + noise).clamp(0, 1), observed[index])
    fake = ThreadAllGather(world)
    threads = [threading.Thread(target=ranks[rank].gather, args=(fake.for_rank(rank),)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = probabilities.clone()
    for rank, shard in enumerate(shards):
        for position in shard:
            owner = min(r for r, s in enumerate(shards) if position in s)
            expected[position] = (probabilities[position] + 0.01 * owner).clamp(0, 1)
    for stats in ranks:
        stats.close_epoch()  # complete on every rank after the gather
        torch.testing.assert_close(stats.probabilities, expected, rtol=0, atol=0)
        assert torch.equal(stats.history, ranks[0].history)
        assert torch.equal(stats.bce, ranks[0].bce)


def _gloo_worker(rank: int, world: int, init_file: str, queue) -> None:
    distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        stats = PairStatistics(7, 2)
        index = torch.tensor([0, 2, 4, 6] if rank == 0 else [1, 3, 5])  # uneven shards
        probabilities = torch.full((index.numel(), 2), 0.25) + index.reshape(-1, 1) / 10
        stats.record_batch(index, probabilities, torch.zeros(index.numel(), 2))
        stats.gather(all_gather_variable)      # what the loop gathers with
        stats.close_epoch()
        queue.put((rank, stats.probabilities.numpy().copy(), stats.history.numpy().copy()))
    finally:
        distributed.destroy_process_group()


def test_gather_with_real_gloo_all_gather():
    results = sorted(run_on_gloo(_gloo_worker))
    expected = torch.full((7, 2), 0.25) + torch.arange(7).reshape(-1, 1) / 10
    for _, probabilities, history in results:
        torch.testing.assert_close(torch.from_numpy(probabilities), expected)
        assert torch.equal(torch.from_numpy(history), (expected <= 0.5).long())  # correct iff predicted 0
