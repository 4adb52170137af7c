"""Global batch plans shared by all DDP ranks (METHOD §6 `sampler`, §7 batch size).

A *plan* is the epoch's sequence of global batches (arrays of dataset positions), a pure
function of (seed, epoch) and the data — never of the world size. Each rank trains on its
contiguous shard of every global batch, so a K-worker run sees exactly the batches of a
1-worker run and, with the loss scaled by `shard_weight`, DDP's gradient average equals the
single-process gradient of the global batch mean.

- ``random`` (the paper's): a seeded permutation cut into batches of `batch_size`.
- ``patient`` (beyond the paper): patients are permuted and whole patients are packed into
  batches, so a patient's stays share a batch and cross-visit contrastive positives occur.
  A batch closes once it holds at least `batch_size` stays, so it may exceed `batch_size` by
  at most (stays of one patient − 1).
A final batch smaller than the world size is merged into the previous one so every rank
gets at least one row of every global batch.
"""
from __future__ import annotations

import numpy as np


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, *,
                  sampler: str = "random", groups: np.ndarray | None = None,
                  minimum_batch: int = 1) -> list[np.ndarray]:
    """The epoch's global batches: list of int64 position arrays covering 0..num_items-1 once.

    groups: int array (num_items,) of patient ids, required for ``sampler="patient"``.
    """
    if num_items < 1:
        raise ValueError("epoch_batches: the training split is empty")
    rng = np.random.default_rng([seed, epoch])
    if sampler == "random":
        order = rng.permutation(num_items)
        cuts = np.arange(batch_size, num_items, batch_size)
    elif sampler == "patient":
        if groups is None or len(groups) != num_items:
            raise ValueError("epoch_batches: sampler='patient' needs one patient id per item")
        unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
        patient_rank = rng.permutation(len(unique))[inverse]
        # stays ordered by their patient's random rank; a stable sort keeps a patient together
        order = np.argsort(patient_rank, kind="stable")
        sizes = np.bincount(patient_rank, minlength=len(unique))      # stays per ranked patient
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])           # first stay of each patient
        batch_of_patient = starts // batch_size                         # a patient joins the batch its first stay falls in
        change = np.flatnonzero(np.diff(batch_of_patient)) + 1
        cuts = starts[change]
    else:
        raise ValueError(f"epoch_batches: unknown sampler {sampler!r} (expected 'random' or 'patient')")
    batches = np.split(order.astype(np.int64), cuts)
    if len(batches) > 1 and len(batches[-1]) < minimum_batch:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous slice of a global batch (np.array_split semantics)."""
    return np.array_split(batch, world_size)[rank]


def shard_weight(local_count: int, global_count: int, world_size: int) -> float:
    """Factor turning a local *mean* loss into the share that DDP's averaging expects.

    DDP averages gradients over ranks; scaling each local mean by
    local_count·world_size/global_count makes that average the gradient of the global mean.
    """
    return local_count * world_size / global_count
