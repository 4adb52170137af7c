"""What the single-trial CLI prints: its result, no Ray cleaner noise, no deprecations of ours.

Slow (a real 2-worker Ray Train job in a subprocess with its own local Ray instance).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
TINY_FLAGS = ("--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32", "--hidden-size", "16",
              "--fusion-layers", "1", "--num-experts", "2", "--max-note-tokens", "32", "--max-series-bins", "24")
OUR_WARNING = re.compile(re.escape(str(REPOSITORY)) +
                         r"/(data|trainables|grid|analysis)/[\w/]+\.py:\d+: \w*(Deprecation|Future)Warning")


@pytest.mark.slow
def test_single_trial_cli_prints_its_result_without_noise(tiny_cohort, tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    result = subprocess.run(
        [sys.executable, "-m", "miracl_grid.trainables.train", "--data", str(tiny_cohort), "--workers", "2",
         "--method", "miracl", "--rho-pos", "0.4", "--rho-neg", "0.4", *TINY_FLAGS,
         "--storage", str(tmp_path / "runs")],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert '"test/mAP"' in result.stdout and "run directory: " in result.stdout
    assert "PlacementGroupCleaner" not in output, [line for line in output.splitlines()
                                                   if "PlacementGroupCleaner" in line][:5]
    assert not OUR_WARNING.search(output), OUR_WARNING.search(output)[0]
