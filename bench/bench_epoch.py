"""Benchmark: MIRACL epoch time / BCE epoch time, and today's epoch against the d2eee07 loop.

Runs the real per-worker loop (`miracl_grid.trainables.loop.run_training`, one process, no Ray, ONE
compute thread) on one materialised cohort with the quick preset's trial settings, three
trials side by side:

  original  method "miracl" in the loop of commit d2eee07 (`bench/original_code.py`)
  bce       method "bce" in today's loop
  miracl    method "miracl" in today's loop

The three trials run in lock-step, one epoch each in turn (a round), so a change of machine
load hits all three alike. An epoch's time is the CPU time of its thread (`time.thread_time`:
with one compute thread every operation runs in the calling thread), which a loaded machine
inflates far less than wall time; it includes the epoch's checkpoint save, alike for all three.
Every ratio is formed within a round and the median over rounds is printed with a 95 %
bootstrap interval over rounds (the resolution of the number). Rounds
before the end of warm-up are left out of MIRACL/BCE (MIRACL only selects and corrects after
it); the first round is left out of original/today (start-up).

  - MIRACL/BCE epoch ratio (target <= 1.03; the paper's Table 6: 1.057). MIRACL does strictly
    more work than BCE, so a ratio below 1 beyond the interval means the measurement is wrong;
  - per-epoch speed-up original/today (MIRACL epochs);
  - MIRACL's split: training passes, epoch-end selection + correction, evaluation;
  - the same computation: with the weights of today's MIRACL run after its last epoch, the
    eval-mode loss (BCE on the observed batch labels + the backbone's auxiliary losses) and
    the logits on fixed train batches, original vs today's backbone (the paper-preset math:
    TrialConfig fields unknown to d2eee07 at their defaults). Expected |Δ| ~1e-6.

Usage: python bench/bench_epoch.py [--cohort DIR] [--epochs 10] [--warmup 2] [--repeats 2]
       [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional

from miracl_grid.data.dataset import CohortData, CohortDataset, collate
from miracl_grid.data.prepare import prepare_cohort
from miracl_grid.grid.presets import preset_runtime, preset_trial_defaults
from original_code import ORIGINAL_COMMIT, import_original, original_cohort_view
from miracl_grid.trainables.backbones import build_backbone
from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.loop import CHECKPOINT_FILE, run_training

RUNNERS = ("original", "bce", "miracl")
SPLIT_PARTS = ("train", "selection", "eval")
LOSS_BATCHES, LOSS_BATCH_SIZE = 8, 32


class LockStep:
    """Lets threads take turns: runner i works only while it holds the turn (one epoch each)."""

    def __init__(self, count: int):
        self.turn, self.count, self.finished = 0, count, set()
        self.condition = threading.Condition()

    def wait(self, runner: int) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == runner)

    def pass_on(self, runner: int, finished: bool = False) -> None:
        with self.condition:
            if finished:
                self.finished.add(runner)
            if len(self.finished) < self.count:
                following = (runner + 1) % self.count
                while following in self.finished:
                    following = (following + 1) % self.count
                self.turn = following
            self.condition.notify_all()


def run_in_lock_step(jobs: list) -> list:
    """jobs: callables job(report) -> result, report(metrics, folder) is called once per epoch;
    runs them in threads that take one epoch each in turn; returns their results in order."""
    step = LockStep(len(jobs))
    results: list = [None] * len(jobs)
    errors: list = []

    def work(index: int, job) -> None:
        def report(metrics, folder):
            step.pass_on(index)
            step.wait(index)
        step.wait(index)
        try:
            results[index] = job(report)
        except BaseException as error:  # surfaced in the main thread
            errors.append(error)
        finally:
            step.pass_on(index, finished=True)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def median_interval(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median and its 95 % bootstrap interval (2,000 resamples)."""
    data = np.asarray(values, dtype=float)
    resampled = np.random.default_rng(seed).choice(data, size=(2000, len(data)), replace=True)
    low, high = np.percentile(np.median(resampled, axis=1), [2.5, 97.5])
    return float(np.median(data)), float(low), float(high)


def eval_loss_difference(cohort: Path, trial: dict, state: dict) -> tuple[float, float, float]:
    """(max |Δ loss|, max |Δ logit|, mean loss) of original vs today's backbone, eval mode, same weights."""
    from trainables_original.backbones import build_backbone as build_original
    from trainables_original.config import TrialConfig as OriginalConfig

    data = CohortData(cohort)
    config = TrialConfig.from_dict(trial)
    options = dict(num_labels=data.labels.shape[1], series_channels=int(data.manifest["series"]["channels"]),
                   note_dim=data.note_dim)
    today = build_backbone(config.backbone, config, **options)
    original = build_original(config.backbone, OriginalConfig.from_dict(trial), **options)
    today.load_state_dict(state)
    original.load_state_dict(state)
    dataset = CohortDataset(data, data.rows("train"), max_series_bins=config.max_series_bins,
                            max_note_tokens=config.max_note_tokens)
    loss_gaps, logit_gaps, losses = [], [], []
    with torch.no_grad():
        for start in range(0, LOSS_BATCHES * LOSS_BATCH_SIZE, LOSS_BATCH_SIZE):
            batch = collate([dataset[i] for i in range(start, start + LOSS_BATCH_SIZE)])
            values = []
            for model in (today.eval(), original.eval()):
                output = model(batch)
                loss = functional.binary_cross_entropy_with_logits(output.logits, batch["labels"]) \
                    + sum(output.auxiliary_losses.values())
                values.append((float(loss), output.logits))
            loss_gaps.append(abs(values[0][0] - values[1][0]))
            logit_gaps.append(float((values[0][1] - values[1][1]).abs().max()))
            losses.append(values[0][0])
    return max(loss_gaps), max(logit_gaps), statistics.mean(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", default=None, help="materialised cohort (default: the quick preset's embedded one)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of all three trials (seed 30, 31, ...)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.threads <= (os.cpu_count() or 1):
        parser.error(f"--threads {args.threads}: expected 1 .. {os.cpu_count()} (never more threads than cores)")
    if not 1 <= args.warmup < args.epochs:
        parser.error("expected 1 <= --warmup < --epochs")
    torch.set_num_threads(args.threads)
    workspace = Path(tempfile.mkdtemp(prefix="bench_epoch_"))
    original_loop = import_original(workspace / "original")
    if args.cohort:
        cohort = Path(args.cohort)
    else:
        synthetic = preset_runtime("quick")["synthetic_cohort"]
        quick = preset_trial_defaults("quick")
        cohort = prepare_cohort("synthetic", workspace / "cohort", patients=synthetic["num_patients"],
                                hours=synthetic["max_hours"], max_tokens=quick["max_note_tokens"],
                                max_bins=quick["max_series_bins"], progress=False)
    original_cohort = original_cohort_view(cohort, workspace / "original_cohort")
    known = set(original_loop.TrialConfig.field_names())
    quick = {**preset_trial_defaults("quick"), "epochs": args.epochs, "warmup_epochs": args.warmup,
             "noise_model": "symmetric", "rho_pos": 0.4, "rho_neg": 0.4}
    changed = {k: v for k, v in quick.items() if k not in known and v != getattr(TrialConfig(), k)}
    trial = {k: v for k, v in quick.items() if k in known}
    if changed:
        print(f"note: the quick preset sets fields unknown to {ORIGINAL_COMMIT} ({changed}); "
              "the bench runs without them (paper-preset math)")

    epoch_times: dict[str, list[list[float]]] = {name: [] for name in RUNNERS}   # thread CPU s
    wall_times: dict[str, list[list[float]]] = {name: [] for name in RUNNERS}
    splits: dict[str, list[float]] = {part: [] for part in (*SPLIT_PARTS, "epoch")}
    last_state: dict = {}
    for repeat in range(args.repeats):
        seeded = {**trial, "seed": 30 + repeat}

        def job(loop, method, keep_state=False):
            def run(report):
                cpu_times, started = [], [time.thread_time()]

                def record(metrics, folder):
                    cpu_times.append(time.thread_time() - started[0])
                    if keep_state and metrics["epoch"] == args.epochs:
                        last_state["model"] = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)["model"]
                    report(metrics, folder)
                    started[0] = time.thread_time()
                source = original_cohort if loop is original_loop.run_training else cohort
                history = loop({"trial": {**seeded, "method": method}, "cohort_dir": str(source)}, record)
                return history, cpu_times
            return run

        results = run_in_lock_step([job(original_loop.run_training, "miracl"), job(run_training, "bce"),
                                    job(run_training, "miracl", keep_state=True)])
        for name, (history, cpu_times) in zip(RUNNERS, results):
            epoch_times[name].append(cpu_times)
            wall_times[name].append([m["time/epoch_s"] for m in history])
        histories = [history for history, _ in results]
        for m in histories[2][args.warmup:]:
            for part in splits:
                splits[part].append(m[f"time/{part}_s"])

    def rounds(name: str, first: int, times=epoch_times) -> list[float]:
        return [t for run in times[name] for t in run[first:]]

    miracl_over_bce = [m / b for m, b in zip(rounds("miracl", args.warmup), rounds("bce", args.warmup))]
    speedup = [o / m for o, m in zip(rounds("original", 1), rounds("miracl", 1))]
    wall_speedup = [o / m for o, m in zip(rounds("original", 1, wall_times), rounds("miracl", 1, wall_times))]
    loss_gap, logit_gap, loss = eval_loss_difference(cohort, trial, last_state["model"])

    print(f"cohort {cohort}; {args.repeats} run(s) x {args.epochs} epochs in lock-step, {args.threads} thread(s); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name in RUNNERS:
        print(f"  median epoch {name:8s} {statistics.median(rounds(name, 1)):.3f} s CPU "
              f"({statistics.median(rounds(name, 1, wall_times)):.3f} s wall)")
    ratio, low, high = median_interval(miracl_over_bce)
    print(f"MIRACL/BCE epoch ratio = {ratio:.3f}  [95% CI {low:.3f}, {high:.3f}] over {len(miracl_over_bce)} "
          "rounds after warm-up  (target <= 1.03; paper Table 6: 1.057)")
    ratio, low, high = median_interval(speedup)
    print(f"speed-up per MIRACL epoch vs {ORIGINAL_COMMIT} = {ratio:.3f}x  [95% CI {low:.3f}, {high:.3f}] "
          f"over {len(speedup)} rounds  (wall clock: {median_interval(wall_speedup)[0]:.3f}x)")
    medians = {part: statistics.median(values) for part, values in splits.items()}
    share = statistics.median(s / e for s, e in zip(splits["selection"], splits["epoch"]))
    print("today's MIRACL split (median wall s): " + ", ".join(f"{k} {medians[k]:.3f}" for k in SPLIT_PARTS)
          + f"; selection+correction share of the epoch = {share:.2%}")
    print(f"same computation: eval-mode loss on {LOSS_BATCHES} fixed train batches of {LOSS_BATCH_SIZE} "
          f"(mean {loss:.4f}), {ORIGINAL_COMMIT} vs today: max |dloss| = {loss_gap:.2e}, "
          f"max |dlogit| = {logit_gap:.2e}")


if __name__ == "__main__":
    main()
