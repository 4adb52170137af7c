"""Tests of miracl_grid.trainables.schedule (Appendix A.4/A.5.1, Eqs. 10–11, METHOD §6)."""
from __future__ import annotations

import pytest
import torch

from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.methods import MiraclMethod
from miracl_grid.trainables.schedule import (ScheduleError, beta, correction_active, first_corrected_epoch, selection_due,
                                 set_weight_decay)


def test_paper_defaults_warmup_selection_and_correction_epochs():
    # t_w = 5, T = 30: warm-up 1..5, GMM fitted at the end of epochs 5..30, corrected epochs 6..30
    assert [selection_due(t, 5) for t in (4, 5, 30)] == [False, True, True]
    assert [correction_active(t, 5) for t in (5, 6, 30)] == [False, True, True]
    assert first_corrected_epoch(5) == 6
    assert not correction_active(10, 5, use_correction=False) and not selection_due(10, 5, use_correction=False)


def test_zero_warmup_needs_one_epoch_of_statistics():
    assert first_corrected_epoch(0) == 2
    assert selection_due(1, 0) and not correction_active(1, 0) and correction_active(2, 0)


def test_beta_linear_from_one_to_beta_end():
    # first corrected epoch 6, last 30: β = 1 − 0.5·(t − 6)/24
    assert beta(6, 5, 30) == 1.0
    assert beta(18, 5, 30) == pytest.approx(0.75)
    assert beta(30, 5, 30) == pytest.approx(0.5)
    assert beta(31, 5, 30) == pytest.approx(0.5)      # clamped after the last epoch
    assert beta(5, 5, 30) == 0.0                      # warm-up: Eq. 11 reduces to Eq. 10
    values = [beta(t, 5, 30, beta_end=0.2) for t in range(6, 31)]
    steps = [a - b for a, b in zip(values, values[1:])]
    assert all(step == pytest.approx(0.8 / 24) for step in steps)


def test_beta_degenerate_single_corrected_epoch():
    assert beta(6, 5, 6) == 1.0
    assert beta(2, 1, 2, beta_end=0.3) == 1.0


def _weight_decays_by_epoch(config: TrialConfig, epochs) -> list[list[float]]:
    """Adam's weight decay of each param group after MIRACL's `configure_epoch` of each epoch."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam([{"params": [model.weight]}, {"params": [model.bias]}], lr=1e-3,
                                 weight_decay=config.weight_decay)
    method = MiraclMethod(config, observed=torch.zeros(4, 2))
    decays = []
    for epoch in epochs:
        method.configure_epoch(epoch, optimizer)
        decays.append([group["weight_decay"] for group in optimizer.param_groups])
    return decays


def test_weight_decay_switches_at_correction_start_and_stays():
    config = TrialConfig(epochs=30, warmup_epochs=5, weight_decay=0.0, corrected_weight_decay=1e-5)
    assert _weight_decays_by_epoch(config, (1, 5, 6, 7, 30)) == [[0.0, 0.0]] * 2 + [[1e-5, 1e-5]] * 3
    assert _weight_decays_by_epoch(config.replace(use_correction=False), (5, 6, 7)) == [[0.0, 0.0]] * 3
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam([{"params": [model.weight]}, {"params": [model.bias]}], lr=1e-3, weight_decay=1e-5)
    assert set_weight_decay(optimizer, 0.5) == [1e-5, 1e-5]


def test_weight_decay_reaches_the_adam_step():
    # Adam with L2 weight decay adds wd·θ to the gradient: with a zero loss gradient θ must move.
    parameter = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.Adam([parameter], lr=0.1, weight_decay=0.0)
    set_weight_decay(optimizer, 1e-5)
    parameter.grad = torch.zeros(1)
    optimizer.step()
    assert parameter.item() < 1.0


def test_schedule_from_trial_config():
    config = TrialConfig(epochs=12, warmup_epochs=3, beta_end=0.4, weight_decay=0.0, corrected_weight_decay=2e-5)
    first = first_corrected_epoch(config.warmup_epochs)
    assert first == 4
    assert [beta(t, config.warmup_epochs, config.epochs, config.beta_end) for t in (3, 4, 12)] == \
        [0.0, 1.0, pytest.approx(0.4)]
    assert _weight_decays_by_epoch(config, (3, 4)) == [[0.0, 0.0], [2e-5, 2e-5]]
    assert not selection_due(8, config.warmup_epochs, use_correction=False)
    assert not correction_active(8, config.warmup_epochs, use_correction=False)


def test_bad_arguments_are_rejected():
    with pytest.raises(ScheduleError, match="1-based"):
        selection_due(0, 5)
    with pytest.raises(ScheduleError, match="beta_end"):
        beta(7, 5, 30, beta_end=1.5)
    with pytest.raises(ScheduleError, match="warmup_epochs"):
        first_corrected_epoch(-1)
