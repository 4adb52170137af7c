"""Global batch plans: coverage, world-size independence, patient packing, shard weights."""
import numpy as np
import pytest

from miracl_grid.trainables.batching import epoch_batches, shard, shard_weight


@pytest.mark.parametrize("sampler", ["random", "patient"])
def test_every_item_exactly_once_and_seeded(sampler):
    groups = np.repeat(np.arange(40), np.tile([1, 2, 3, 4], 10))   # 100 stays, 40 patients
    batches = epoch_batches(len(groups), 16, seed=3, epoch=2, sampler=sampler, groups=groups)
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(len(groups)))
    again = epoch_batches(len(groups), 16, seed=3, epoch=2, sampler=sampler, groups=groups)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = epoch_batches(len(groups), 16, seed=3, epoch=3, sampler=sampler, groups=groups)
    assert not np.array_equal(np.concatenate(other), flat)


def test_patient_sampler_keeps_patients_whole_and_bounds_size():
    groups = np.repeat(np.arange(40), np.tile([1, 2, 3, 4], 10))
    batches = epoch_batches(len(groups), 16, seed=0, epoch=0, sampler="patient", groups=groups)
    owner = {}
    for number, batch in enumerate(batches):
        for patient in np.unique(groups[batch]):
            assert owner.setdefault(patient, number) == number, "patient split across batches"
        assert len(batch) <= 16 + 3
    assert sum(len(b) for b in batches[:-1]) >= 16 * (len(batches) - 1)


def test_shards_partition_a_batch_and_weights_average_to_global_mean():
    batch = np.arange(11)
    pieces = [shard(batch, r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate(pieces), batch)
    # DDP averages (weight_r * mean_r) over ranks; that must equal the global mean.
    values = np.random.default_rng(0).random(11)
    ddp_average = np.mean([shard_weight(len(p), 11, 3) * values[p].mean() for p in pieces])
    assert ddp_average == pytest.approx(values.mean())


def test_small_last_batch_merged_so_each_rank_gets_rows():
    batches = epoch_batches(33, 16, seed=0, epoch=0, minimum_batch=2)
    assert [len(b) for b in batches] == [16, 17]
