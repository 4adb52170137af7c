"""GPU check: the grid's GPU paths on one GPU, with epoch times and the MIRACL/BCE ratio.

Three sweeps of `python grid/run.py` on one synthetic cohort, each reading `results.parquet`:

  1. whole GPU: MIRACL and its BCE baseline (FlexCare backbone), one worker each with
     --gpus-per-worker 1 (process group: nccl) -> median epoch time after warm-up per method,
     ratio MIRACL/BCE (target <= 1.03; the paper's Table 6: 1.057);
  2. one 2-worker DDP trial whose workers share the GPU (--gpus-per-worker 0.5; gloo, as NCCL
     refuses two ranks on one GPU) -> epoch time, both ranks' devices;
  3. two 1-worker trials sharing the GPU at once (--gpus-per-worker 0.5 --max-concurrent 2)
     -> epoch times of both (compare with run 1 for the cost of sharing).

Every rank must report a CUDA device (`placement/devices`), else the check fails. Exit 2 when
this machine has no CUDA device. Usage: bench/gpu_check.sh [--patients 700] [--epochs 4]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parent.parent
RUNS = {   # name: (methods, workers per trial, GPUs per worker, concurrent trials)
    "whole_gpu": ("flexcare,miracl", 1, 1.0, 1),
    "ddp_shared_gpu": ("miracl", 2, 0.5, 1),
    "two_trials_one_gpu": ("flexcare,miracl", 1, 0.5, 2),
}


def grid_command(name: str, cohort: Path, storage: Path, epochs: int) -> list[str]:
    methods, workers, gpus, concurrent = RUNS[name]
    trial = {"epochs": epochs, "warmup_epochs": 1, "cosine_t_max": epochs}
    settings = [item for key, value in trial.items() for item in ("--set", f"{key}={value}")]
    return [sys.executable, str(REPOSITORY / "grid" / "run.py"), "--sweep", "main", "--arms", methods,
            "--data", str(cohort), "--preset", "quick", "--seeds", "30", "--noise", "symmetric:0.4,0.4", *settings,
            "--workers-per-trial", str(workers), "--gpus-per-worker", str(gpus),
            "--max-concurrent", str(concurrent), "--storage", str(storage), "--name", name, "--no-report"]


def summarise(frame: pd.DataFrame, warmup: int = 1) -> pd.DataFrame:
    """One row per trial: median epoch time after warm-up, devices of the ranks, last mAP."""
    rows = []
    for trial, group in frame.groupby("trial_id"):
        corrected = group[group["epoch"] > warmup]
        devices = sorted(set(",".join(group["placement/devices"]).split(",")))
        rows.append({"trial": trial, "method": group["config/method"].iloc[0],
                     "epoch_s": statistics.median(corrected["time/epoch_s"]), "devices": " ".join(devices),
                     "test_mAP": group.loc[group["is_last_epoch"], "test/mAP"].iloc[0],
                     "wall_s": group["time/trial_wall_s"].max()})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=700)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--storage", default=None, help="default: a fresh temporary folder")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}); run it on a GPU machine", file=sys.stderr)
        return 2
    storage = Path(args.storage or tempfile.mkdtemp(prefix="gpu_check"))
    from miracl_grid.data.prepare import prepare_cohort

    cohort = prepare_cohort("synthetic", storage / "cohort", patients=args.patients, hours=24, max_tokens=64,
                            max_bins=48, progress=False)
    print(f"GPU {torch.cuda.get_device_name(0)}; cohort {cohort}; {args.epochs} epochs, warm-up 1")
    failures = 0
    for name in RUNS:
        completed = subprocess.run(grid_command(name, cohort, storage, args.epochs), cwd=REPOSITORY,
                                   env={"PYTHONPATH": str(REPOSITORY), **_environment()},
                                   capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"{name}: grid/run.py failed ({completed.returncode})\n{completed.stderr[-3000:]}")
            failures += 1
            continue
        summary = summarise(pd.read_parquet(storage / name / "results.parquet"))
        print(f"\n{name}  ({RUNS[name][1]} worker(s) x {RUNS[name][2]} GPU, {RUNS[name][3]} concurrent)")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if not all(device.startswith("cuda") for devices in summary["devices"] for device in devices.split()):
            print(f"{name}: FAIL: a rank did not train on a CUDA device")
            failures += 1
        if name == "whole_gpu":
            by_method = summary.set_index("method")["epoch_s"]
            print(f"ratio MIRACL/BCE epoch time = {by_method['miracl'] / by_method['bce']:.3f}"
                  "  (target <= 1.03; paper Table 6: 1.057)")
    return 1 if failures else 0


def _environment() -> dict[str, str]:
    import os

    return {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "HF_HUB_OFFLINE": "1"}


if __name__ == "__main__":
    sys.exit(main())
