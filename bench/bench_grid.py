"""Benchmark: grid throughput and Ray's per-trial overhead for the quick preset.

Runs `python grid/run.py` on the same embedded cohort and trials three ways — in-process
trials (`--workers-per-trial 0`, the quick preset's default) with `--max-concurrent 1` and 2,
and one-worker Ray Train worker groups (`--workers-per-trial 1`) with `--max-concurrent 2` —
and prints from each run's `results.parquet` and Tune's per-trial `result.json`
(`<sweep folder>/tune/run-*/<trial_id>/result.json`):

  - trials per hour (trials / sweep wall time of `tuner.fit()`)
  - Ray's per-trial overhead: the Tune trial's time to its first report minus the loop's own
    time to its first report (worker-group start, imports, data opening), as a share of the
    trial's total time (target < 10 %)

Usage: python bench/bench_grid.py [--trials 4] [--storage /tmp/bench_grid] [extra grid/run.py args]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parent.parent
LAMBDAS = ("0", "0.01", "0.05", "0.1", "0.2", "0.5")


def first_and_last_report(trial_dir: Path) -> tuple[float, float]:
    lines = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    return lines[0]["time_total_s"], lines[-1]["time_total_s"]


def run(workers: int, concurrency: int, trials: int, storage: Path, extra: list[str]) -> dict:
    name = f"workers{workers}_concurrent{concurrency}"
    shutil.rmtree(storage / name, ignore_errors=True)
    command = [sys.executable, str(REPOSITORY / "grid" / "run.py"), "--sweep", "lambda_cons", "--seeds", "30",
               "--noise", "symmetric:0.2,0.2", "--set", "lambda_cons=" + ",".join(LAMBDAS[:trials]),
               "--max-concurrent", str(concurrency), "--workers-per-trial", str(workers), "--storage", str(storage), "--name", name,
               "--no-report", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    frame = pd.read_parquet(storage / name / "results.parquet")
    overheads, shares = [], []
    for trial_id, rows in frame.groupby("trial_id"):
        first_tune, last_tune = first_and_last_report(next((storage / name / "tune").glob(f"run-*/{trial_id}")))
        first_loop = float(rows.sort_values("epoch")["time/trial_wall_s"].iloc[0])
        overhead = first_tune - first_loop
        overheads.append(overhead)
        shares.append(overhead / last_tune)
    return {"workers": workers, "concurrency": concurrency, "trials": frame["trial_id"].nunique(), "wall_s": wall,
            "trials_per_hour": 3600 * frame["trial_id"].nunique() / wall,
            "overhead_s": sum(overheads) / len(overheads), "overhead_share": sum(shares) / len(shares),
            "trial_s": float(frame.groupby("trial_id")["time/trial_wall_s"].max().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="λ_cons values to run (<= 6)")
    parser.add_argument("--storage", default="/tmp/bench_grid")
    args, extra = parser.parse_known_args()
    storage = Path(args.storage).resolve()
    results = [run(w, c, args.trials, storage, extra) for w, c in ((0, 1), (0, 2), (1, 2))]
    for r in results:
        mode = "in-process trials" if r["workers"] == 0 else f"{r['workers']}-worker groups"
        print(f"{mode}, max-concurrent {r['concurrency']}: {r['trials']} trials in {r['wall_s']:.0f} s "
              f"= {r['trials_per_hour']:.0f} trials/h; loop time per trial {r['trial_s']:.0f} s; "
              f"Ray overhead to first epoch {r['overhead_s']:.1f} s = {r['overhead_share']:.1%} of a trial")
    print(f"throughput ratio, in-process 2 vs 1 concurrent = "
          f"{results[1]['trials_per_hour'] / results[0]['trials_per_hour']:.2f}; "
          f"in-process vs worker groups at 2 concurrent = "
          f"{results[1]['trials_per_hour'] / results[2]['trials_per_hour']:.2f}")


if __name__ == "__main__":
    main()
