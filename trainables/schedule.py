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


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> list[float]:
    """Set ``weight_decay`` in every param group; returns the previous values."""
    previous = [group.get("weight_decay", 0.0) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["weight_decay"] = float(value)
    return previous
