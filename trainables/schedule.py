"""MIRACL's training schedule (Appendix A.4, Algorithm 1, Eqs. 10–11; METHOD §6). Epochs are 1-based.

- Warm-up: epochs 1..t_w train on L_bce(ỹ) + λ_cons·L_cons (Eq. 10).
- Selection (GMM fit + correction) runs at the END of every epoch t ≥ max(t_w, 1)
  (Algorithm 1, line 11; at least one epoch of statistics is needed, so t_w = 0 behaves
  like t_w = 1), and its corrected labels are used in epoch t + 1.
- Corrected epochs: t ≥ first_corrected_epoch = max(t_w, 1) + 1 use
  β_t·L_bce(ỹ_corr) + (1 − β_t)·L_bce(ỹ) + λ_cons·L_cons (Eq. 11).
- β_t falls linearly from 1 at the first corrected epoch to ``beta_end`` at the last epoch
  (resolved). With a single corrected epoch (first = last) β = 1 (the schedule's start
  value). Before the first corrected epoch β = 0, so Eq. 11 reduces to Eq. 10.
- Adam's weight decay switches to ``corrected_weight_decay`` (1e-5) from the first
  corrected epoch on (Appendix A.5.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class ScheduleError(ValueError):
    """Bad schedule arguments (the message names the argument)."""


def _check_epoch(epoch: int) -> None:
    if epoch < 1:
        raise ScheduleError(f"epoch = {epoch}: epochs are 1-based")


def first_corrected_epoch(warmup_epochs: int) -> int:
    """First epoch trained on corrected labels: max(t_w, 1) + 1."""
    if warmup_epochs < 0:
        raise ScheduleError(f"warmup_epochs = {warmup_epochs}, expected >= 0")
    return max(warmup_epochs, 1) + 1


def is_warmup(epoch: int, warmup_epochs: int) -> bool:
    """True for the warm-up epochs 1..t_w (Eq. 10 loss)."""
    _check_epoch(epoch)
    return epoch <= warmup_epochs


def correction_active(epoch: int, warmup_epochs: int, use_correction: bool = True) -> bool:
    """True when epoch trains on corrected labels (Eq. 11): epoch ≥ max(t_w, 1) + 1."""
    _check_epoch(epoch)
    return use_correction and epoch >= first_corrected_epoch(warmup_epochs)


def selection_due(epoch: int, warmup_epochs: int, use_correction: bool = True) -> bool:
    """True when the GMMs are fitted and labels corrected at the END of this epoch (t ≥ max(t_w, 1))."""
    _check_epoch(epoch)
    return use_correction and epoch >= max(warmup_epochs, 1)


def beta(epoch: int, warmup_epochs: int, total_epochs: int, beta_end: float = 0.5) -> float:
    """β_t of Eq. 11: 1 at the first corrected epoch, linear to ``beta_end`` at ``total_epochs``.

    0 before the first corrected epoch; ``beta_end`` after the last; 1 when the first
    corrected epoch is the last one (or later).
    """
    _check_epoch(epoch)
    if not 0.0 <= beta_end <= 1.0:
        raise ScheduleError(f"beta_end = {beta_end}, expected a weight in [0, 1]")
    first = first_corrected_epoch(warmup_epochs)
    if epoch < first:
        return 0.0
    if total_epochs <= first:
        return 1.0
    fraction = min((epoch - first) / (total_epochs - first), 1.0)
    return 1.0 + (beta_end - 1.0) * fraction


def weight_decay(epoch: int, warmup_epochs: int, base_weight_decay: float,
                 corrected_weight_decay: float, use_correction: bool = True) -> float:
    """Weight decay for this epoch: the corrected value once correction is active (A.5.1)."""
    return corrected_weight_decay if correction_active(epoch, warmup_epochs, use_correction) else base_weight_decay


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> list[float]:
    """Set ``weight_decay`` in every param group; returns the previous values."""
    previous = [group.get("weight_decay", 0.0) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["weight_decay"] = float(value)
    return previous


@dataclass(frozen=True)
class CorrectionSchedule:
    """The schedule of one trial; build with `CorrectionSchedule.from_config(TrialConfig)`."""
    warmup_epochs: int = 5
    total_epochs: int = 30
    beta_end: float = 0.5
    base_weight_decay: float = 0.0
    corrected_weight_decay: float = 1e-5
    use_correction: bool = True

    @classmethod
    def from_config(cls, config) -> "CorrectionSchedule":
        return cls(warmup_epochs=config.warmup_epochs, total_epochs=config.epochs, beta_end=config.beta_end,
                   base_weight_decay=config.weight_decay,
                   corrected_weight_decay=config.corrected_weight_decay,
                   use_correction=config.use_correction)

    @property
    def first_corrected_epoch(self) -> int:
        return first_corrected_epoch(self.warmup_epochs)

    def is_warmup(self, epoch: int) -> bool:
        return is_warmup(epoch, self.warmup_epochs)

    def correction_active(self, epoch: int) -> bool:
        return correction_active(epoch, self.warmup_epochs, self.use_correction)

    def selection_due(self, epoch: int) -> bool:
        return selection_due(epoch, self.warmup_epochs, self.use_correction)

    def beta(self, epoch: int) -> float:
        """β_t (0 whenever correction is not active)."""
        if not self.correction_active(epoch):
            return 0.0
        return beta(epoch, self.warmup_epochs, self.total_epochs, self.beta_end)

    def weight_decay(self, epoch: int) -> float:
        return weight_decay(epoch, self.warmup_epochs, self.base_weight_decay,
                            self.corrected_weight_decay, self.use_correction)

    def apply_weight_decay(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """Set the optimiser's weight decay for ``epoch`` (idempotent; safe after a resume). Returns it."""
        value = self.weight_decay(epoch)
        set_weight_decay(optimizer, value)
        return value
