"""bench/gpu_check.py without a GPU: its grid commands parse and request what they claim, its
summary reads a results frame correctly, and on a CPU-only machine it exits 2 with a message."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.parametrize("name, workers, gpus, concurrent", [
    ("whole_gpu", 1, 1.0, 1), ("ddp_shared_gpu", 2, 0.5, 1), ("two_trials_one_gpu", 1, 0.5, 2)])
def test_grid_commands_request_the_gpu_shares(tmp_path, name, workers, gpus, concurrent):
    from miracl_grid.grid.run import build_parser

    args = build_parser().parse_args(gpu_check.grid_command(name, tmp_path / "c", tmp_path, 4)[2:])
    assert (args.workers_per_trial, args.gpus_per_worker, args.max_concurrent) == (workers, gpus, concurrent)
    assert args.name == name and "epochs=4" in args.set


def test_summary_medians_after_warmup_and_devices():
    frame = pd.DataFrame({
        "trial_id": ["a"] * 3 + ["b"] * 3, "config/method": ["bce"] * 3 + ["miracl"] * 3,
        "epoch": [1, 2, 3] * 2, "is_last_epoch": [False, False, True] * 2,
        "time/epoch_s": [9.0, 1.0, 3.0, 9.0, 2.0, 4.0], "time/trial_wall_s": [1, 2, 3, 4, 5, 6],
        "test/mAP": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "placement/devices": ["cuda:0"] * 3 + ["cuda:0,cuda:0"] * 3})
    summary = gpu_check.summarise(frame).set_index("trial")
    assert summary.loc["a", "epoch_s"] == 2.0 and summary.loc["b", "epoch_s"] == 3.0   # epoch 1 = warm-up
    assert summary.loc["b", "devices"] == "cuda:0" and summary.loc["b", "test_mAP"] == 0.6
    assert summary.loc["b", "wall_s"] == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only exit")
def test_exits_2_without_cuda():
    completed = subprocess.run([str(REPOSITORY / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                               env={**os.environ, "PYTHON": sys.executable})
    assert completed.returncode == 2 and "no CUDA device" in completed.stderr
