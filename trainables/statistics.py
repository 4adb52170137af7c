"""Per-pair training statistics of MIRACL's selection (METHOD §3, paper Eq. 1).

`PairStatistics` holds, for every train instance-label pair (N×L), the current epoch's
predicted probability ``p``, the per-pair BCE against the *observed* (noisy) label and the
correctness history ``c_il = 1[(p_il > 0.5) == ỹ_il]`` as an int64 bit field (bit ``e`` =
correctness at the ``e``-th recorded epoch, 0-based), so at most 63 epochs are recorded.

Row ``i`` of every buffer is *train position* ``i`` (0..N-1); the training loop maps a
global instance index to its train position before calling `record_batch`.

Life cycle per epoch::

    stats.record_batch(positions, probabilities, observed)   # every batch, on every rank
    stats.gather(all_gather_fn)                              # DDP only: merge all ranks
    stats.close_epoch()                                      # append this epoch's bits
    difficulty = stats.difficulty("durations")               # Eq. 1 as resolved in §3
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

MAX_EPOCHS = 63
"""Bits 0..62 of an int64 hold the correctness history (bit 63, the sign bit, is unused)."""

DIFFICULTY_FORMS = ("durations", "events")

AllGatherFunction = Callable[[torch.Tensor], Sequence[torch.Tensor]]


class StatisticsError(ValueError):
    """Bad input to `PairStatistics` (the message names the argument and what was expected)."""


class PairStatistics:
    """Per-pair probability, BCE and correctness history over the train split (METHOD §3).

    Buffers (all on ``device``):
      probabilities    float32 N×L  p_il of the latest record (current epoch)
      bce              float32 N×L  -[ỹ log p + (1-ỹ) log(1-p)] against the observed label
      current_correct  bool    N×L  c_il of the current (open) epoch
      history          int64   N×L  bit e = c_il at recorded epoch e (0-based), e < epochs_recorded
      recorded         bool    N    rows recorded in the current (open) epoch
      epochs_recorded  int          number of closed epochs (<= 63)
    """

    def __init__(self, num_instances: int, num_labels: int, device: torch.device | str = "cpu"):
        if num_instances < 1 or num_labels < 1:
            raise StatisticsError(f"PairStatistics: expected num_instances >= 1 and num_labels >= 1, "
                                  f"got {num_instances} and {num_labels}")
        self.num_instances = int(num_instances)
        self.num_labels = int(num_labels)
        self.device = torch.device(device)
        shape = (self.num_instances, self.num_labels)
        self.probabilities = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.bce = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.current_correct = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.history = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.recorded = torch.zeros(self.num_instances, dtype=torch.bool, device=self.device)
        self.epochs_recorded = 0

    # ------------------------------------------------------------------------------------
    def record_batch(self, positions: torch.Tensor, probabilities: torch.Tensor,
                     observed: torch.Tensor) -> None:
        """Store one batch (vectorised scatter; any rank).

        positions      LongTensor B    train positions 0..N-1 (duplicates: the first one wins)
        probabilities  B×L in [0, 1]   sigmoid of the logits (detached here)
        observed       B×L in {0, 1}   observed (noisy) labels ỹ, NOT corrected ones
        """
        positions = positions.to(self.device, torch.int64).reshape(-1)
        probabilities = probabilities.detach().to(self.device, torch.float32)
        observed = observed.detach().to(self.device, torch.float32)
        size = positions.numel()
        if probabilities.shape != (size, self.num_labels) or observed.shape != (size, self.num_labels):
            raise StatisticsError(
                f"record_batch: expected probabilities and observed of shape ({size}, {self.num_labels}) "
                f"for {size} positions, got {tuple(probabilities.shape)} and {tuple(observed.shape)}")
        if size == 0:
            return
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= self.num_instances:
            raise StatisticsError(f"record_batch: positions must lie in 0..{self.num_instances - 1} "
                                  f"(train positions), got range {low}..{high}")
        keep = first_occurrence(positions)
        positions, probabilities, observed = positions[keep], probabilities[keep], observed[keep]
        self._store(positions, probabilities, pair_bce(probabilities, observed),
                    (probabilities > 0.5) == (observed > 0.5))

    def _store(self, positions: torch.Tensor, probabilities: torch.Tensor, bce: torch.Tensor,
               correct: torch.Tensor) -> None:
        self.probabilities[positions] = probabilities
        self.bce[positions] = bce
        self.current_correct[positions] = correct
        self.recorded[positions] = True

    # ------------------------------------------------------------------------------------
    def gather(self, all_gather_fn: AllGatherFunction) -> None:
        """Merge the rows recorded on every rank so all ranks hold identical buffers (§3, DDP).

        ``all_gather_fn(tensor) -> list of every rank's tensor`` (rank order) needs equal
        shapes, so the row count is gathered first and every payload is padded to the
        maximum. An instance recorded on several ranks (DistributedSampler pads with
        duplicate indices) takes the values of the lowest rank that recorded it, so the
        merge is deterministic and identical everywhere.
        """
        local_positions = torch.nonzero(self.recorded).reshape(-1)
        count = torch.tensor([local_positions.numel()], dtype=torch.int64, device=self.device)
        counts = [int(c.reshape(-1)[0]) for c in all_gather_fn(count)]
        width = max(counts)
        if width == 0:
            return

        def padded(tensor: torch.Tensor) -> list[torch.Tensor]:
            pad = torch.zeros((width - tensor.shape[0],) + tuple(tensor.shape[1:]),
                              dtype=tensor.dtype, device=tensor.device)
            gathered = all_gather_fn(torch.cat([tensor, pad]).contiguous())
            return [g.to(self.device)[:n] for g, n in zip(gathered, counts)]

        positions = torch.cat(padded(local_positions))
        probabilities = torch.cat(padded(self.probabilities[local_positions]))
        bce = torch.cat(padded(self.bce[local_positions]))
        correct = torch.cat(padded(self.current_correct[local_positions].to(torch.uint8))).bool()
        keep = first_occurrence(positions)
        self._store(positions[keep], probabilities[keep], bce[keep], correct[keep])
        logger.debug("gathered %d rows from %d ranks", int(keep.numel()), len(counts))

    # ------------------------------------------------------------------------------------
    def close_epoch(self, require_complete: bool = True) -> None:
        """Append the current epoch's correctness bits to the history and open a new epoch.

        With ``require_complete`` every train position must have been recorded this epoch
        (after `gather` under DDP); otherwise unrecorded rows repeat their previous bit
        (0 = incorrect when there is none).
        """
        if self.epochs_recorded >= MAX_EPOCHS:
            raise StatisticsError(f"close_epoch: the correctness history holds at most {MAX_EPOCHS} epochs")
        missing = int((~self.recorded).sum())
        if missing and require_complete:
            raise StatisticsError(
                f"close_epoch: {missing} of {self.num_instances} train positions were not recorded "
                f"this epoch (call gather() under DDP, or pass require_complete=False)")
        bits = self.current_correct.clone()
        if missing and self.epochs_recorded > 0:
            previous = ((self.history >> (self.epochs_recorded - 1)) & 1).bool()
            bits[~self.recorded] = previous[~self.recorded]
        elif missing:
            bits[~self.recorded] = False
        self.history |= bits.to(torch.int64) << self.epochs_recorded
        self.epochs_recorded += 1
        self.recorded.zero_()

    # ------------------------------------------------------------------------------------
    def difficulty(self, form: str = "durations") -> torch.Tensor:
        """Per-pair difficulty D = D_m − D_f over the recorded history (Eq. 1; METHOD §3). float64 N×L.

        ``durations`` (resolved default): D_m = mean length of the runs of incorrect epochs,
        D_f = mean length of the runs of correct epochs; a pair without any run of one kind
        takes 0 for that mean (e.g. always correct → D = 0 − E = −E).
        ``events`` (paper-literal): D_m = #(incorrect at t−1 → correct at t), D_f =
        #(correct → incorrect); the first epoch has no predecessor and counts no event.
        No history → all zeros. Bit operations on the whole N×L field (no loop over pairs or epochs).
        """
        return history_difficulty(self.history, self.epochs_recorded, form)

    # ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed for a bit-for-bit resume (tensors cloned to CPU)."""
        return {"num_instances": self.num_instances, "num_labels": self.num_labels,
                "epochs_recorded": self.epochs_recorded,
                "probabilities": self.probabilities.cpu().clone(), "bce": self.bce.cpu().clone(),
                "current_correct": self.current_correct.cpu().clone(),
                "history": self.history.cpu().clone(), "recorded": self.recorded.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("num_instances"), state.get("num_labels")) != (self.num_instances, self.num_labels):
            raise StatisticsError(
                f"load_state_dict: checkpoint is for {state.get('num_instances')}×{state.get('num_labels')} "
                f"pairs, these statistics are {self.num_instances}×{self.num_labels}")
        epochs = int(state["epochs_recorded"])
        if not 0 <= epochs <= MAX_EPOCHS:
            raise StatisticsError(f"load_state_dict: epochs_recorded = {epochs}, expected 0..{MAX_EPOCHS}")
        for name in ("probabilities", "bce", "current_correct", "history", "recorded"):
            target = getattr(self, name)
            value = state[name]
            if value.shape != target.shape or value.dtype != target.dtype:
                raise StatisticsError(f"load_state_dict: field '{name}' has {value.dtype} "
                                      f"{tuple(value.shape)}, expected {target.dtype} {tuple(target.shape)}")
            target.copy_(value.to(self.device))
        self.epochs_recorded = epochs


def pair_bce(probabilities: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Element-wise BCE −[y log p + (1−y) log(1−p)] (logs clamped at −100 like torch). B×L → B×L."""
    return torch.nn.functional.binary_cross_entropy(probabilities.float(), observed.float(),
                                                    reduction="none")


def first_occurrence(positions: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the first occurrence of each distinct value of a 1-D tensor."""
    unique, inverse = torch.unique(positions, return_inverse=True)
    order = torch.arange(positions.numel(), device=positions.device)
    first = torch.full((unique.numel(),), positions.numel(), dtype=torch.int64, device=positions.device)
    first.scatter_reduce_(0, inverse, order, reduce="amin", include_self=True)
    return torch.sort(first).values


def popcount(values: torch.Tensor) -> torch.Tensor:
    """Number of set bits of non-negative int64 values (SWAR bit counting). Same shape, int64."""
    x = values - ((values >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x += x >> 8
    x += x >> 16
    x += x >> 32
    return x & 0x7F


def history_difficulty(history: torch.Tensor, epochs: int, form: str = "durations") -> torch.Tensor:
    """Eq. 1 from an int64 correctness bit field (bit e = correct at epoch e). N×L → float64 N×L.

    See `PairStatistics.difficulty` for the two forms. Computed with bit operations on the
    whole field (no loop over epochs): with h the field restricted to the recorded epochs
    and s = h << 1 (bit e of s = bit e−1 of h), a correct run starts where h & ~s, an
    incorrect run where ~h & (s | 1), a memorisation event where h & ~s beyond epoch 0, a
    forgetting event where ~h & s; counts are popcounts.
    """
    if form not in DIFFICULTY_FORMS:
        raise StatisticsError(f"difficulty form {form!r}: expected one of {DIFFICULTY_FORMS}")
    if not 0 <= epochs <= MAX_EPOCHS:
        raise StatisticsError(f"difficulty: epochs = {epochs}, expected 0..{MAX_EPOCHS}")
    if epochs == 0:
        return torch.zeros(history.shape, dtype=torch.float64, device=history.device)
    mask = (1 << epochs) - 1
    correct = history & mask
    previous = (correct << 1) & mask
    incorrect = ~correct & mask
    if form == "events":
        memorised = popcount(correct & ~previous & (mask ^ 1))
        forgotten = popcount(incorrect & previous)
        return (memorised - forgotten).double()
    correct_epochs = popcount(correct).double()
    correct_runs = popcount(correct & ~previous).double()
    incorrect_runs = popcount(incorrect & (previous | 1)).double()
    zero = torch.zeros((), dtype=torch.float64, device=history.device)
    mean_incorrect = torch.where(incorrect_runs > 0, (epochs - correct_epochs) / incorrect_runs.clamp(min=1), zero)
    mean_correct = torch.where(correct_runs > 0, correct_epochs / correct_runs.clamp(min=1), zero)
    return mean_incorrect - mean_correct
