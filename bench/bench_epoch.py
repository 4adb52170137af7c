"""Benchmark: MIRACL epoch time / BCE-only epoch time on the same backbone and data.

Runs the real per-worker loop (`trainables.loop.run_training`, one process, no Ray) for the
same trial config twice — method "bce" and method "miracl" — on one materialised cohort,
and prints, for the epochs after warm-up (when MIRACL selects and corrects):

  - mean epoch time of each method and their ratio (target <= 1.03; the paper's Table 6: 1.057)
  - MIRACL's split: training passes (incl. its contrastive loss), epoch-end selection +
    correction, evaluation, and the selection share of the epoch

The two runs alternate epochs' worth of work on a shared, noisy machine, so each method is
run `--repeats` times alternately and the per-epoch medians are compared.

Usage: python bench/bench_epoch.py [--cohort DIR | --patients 700] [--epochs 4] [--repeats 2]
       [--hidden 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from data.prepare import prepare_cohort
from trainables.loop import run_training


def run(cohort: Path, method: str, trial: dict) -> list[dict]:
    return run_training({"trial": {**trial, "method": method}, "cohort_dir": str(cohort)},
                        lambda metrics, folder: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", default=None, help="materialised cohort (default: a fresh synthetic one)")
    parser.add_argument("--patients", type=int, default=700)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cohort = Path(args.cohort) if args.cohort else prepare_cohort(
        "synthetic", Path(tempfile.mkdtemp()) / "cohort", patients=args.patients, hours=24,
        max_tokens=64, max_bins=48, progress=False)
    trial = dict(epochs=args.epochs, warmup_epochs=args.warmup, batch_size=64, hidden_size=args.hidden,
                 fusion_layers=2, num_experts=4, max_note_tokens=64, max_series_bins=48, cosine_t_max=2,
                 rho_pos=0.4, rho_neg=0.4)
    epoch_times: dict[str, list[float]] = {"bce": [], "miracl": []}
    splits: dict[str, list[float]] = {"train": [], "selection": [], "eval": []}
    for _ in range(args.repeats):
        for method in ("bce", "miracl"):
            corrected_epochs = run(cohort, method, trial)[args.warmup:]
            epoch_times[method] += [m["time/epoch_s"] for m in corrected_epochs]
            if method == "miracl":
                for part in splits:
                    splits[part] += [m[f"time/{part}_s"] for m in corrected_epochs]
    bce, miracl = (statistics.median(epoch_times[m]) for m in ("bce", "miracl"))
    print(f"cohort {cohort}; epochs after warm-up: {len(epoch_times['bce'])} per method")
    print(f"median epoch time  BCE {bce:.3f} s   MIRACL {miracl:.3f} s   ratio MIRACL/BCE = {miracl / bce:.3f}"
          "  (target <= 1.03; paper Table 6: 1.057)")
    medians = {part: statistics.median(values) for part, values in splits.items()}
    print("MIRACL split (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
          + f"; selection+correction share of the epoch = {medians['selection'] / miracl:.2%}")


if __name__ == "__main__":
    main()
