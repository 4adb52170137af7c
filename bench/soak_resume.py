"""Soak: kill the grid driver at random points of a 2-trial sweep, resume, check the result.

One local Ray session; an uninterrupted reference run of the sweep first; then, per iteration,
a fresh sweep folder: `python grid/run.py` in a subprocess (connected to the session), SIGKILL
of its process group once the trials have checkpointed a random number k of epochs in total
(k uniform in 0 .. 2·epochs−1, then a random 0–1 s more, so kills land during start-up,
mid-epoch, between a checkpoint and its report, and after a trial finished), then the same
command with ``--resume`` (without it when the kill came before the sweep folder was
registered: nothing to resume), which must exit 0. Checked per iteration:

  - every trial has each epoch 1..E exactly once in `results.parquet`, status TERMINATED;
  - every trial's last-epoch metrics equal the reference run's (exactly; time/* and paths aside).

Alternate iterations run the trials one after the other (--max-concurrent 1: one finishes,
the other is part-way) and side by side (--max-concurrent 2). Prints one line per iteration
and a summary with the counts.

Usage: nice -n 10 python bench/soak_resume.py [--iterations 20] [--epochs 6] [--seed 0] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

TINY = dict(warmup_epochs=1, batch_size=32, hidden_size=32, fusion_layers=1, num_experts=4, top_k_experts=2,
            max_note_tokens=32, max_series_bins=24, cosine_t_max=2)
IGNORED_PREFIXES = ("time/", "artifact/")


def command(cohort: Path, storage: Path, epochs: int, concurrent: int, address: str, *extra: str) -> list[str]:
    settings = [item for key, value in {**TINY, "epochs": epochs}.items() for item in ("--set", f"{key}={value}")]
    return [sys.executable, str(REPOSITORY / "grid" / "run.py"), "--sweep", "lambda_cons", "--data", str(cohort),
            "--preset", "quick", "--seeds", "30", "--noise", "symmetric:0.2,0.2", "--arms", "miracl", "--set", "lambda_cons=0,0.1",
            *settings, "--storage", str(storage), "--max-concurrent", str(concurrent), "--no-report",
            "--address", address, *extra]


def epochs_checkpointed(sweep: Path) -> int:
    """Sum over trials of the newest complete checkpoint's epoch (files only, no Ray)."""
    total = 0
    for trial in (sweep / "trials").glob("*"):
        epochs = [int(path.parent.name.split("_")[1]) for path in (trial / "checkpoints").glob("epoch_*/COMPLETE")]
        total += max(epochs, default=0)
    return total


def last_epoch_metrics(sweep: Path) -> tuple[dict[str, dict], list[str]]:
    """({trial name: last-epoch metrics}, problems) from a finished sweep's results.parquet."""
    from miracl_grid.grid.results import FINISHED_STATUS, read_results

    frame, _, _ = read_results(sweep)
    problems, finals = [], {}
    for trial_id, rows in frame.groupby("trial_id"):
        epochs = rows["epoch"].tolist()
        planned = int(rows["config/epochs"].iloc[0])
        if sorted(epochs) != list(range(1, planned + 1)):
            problems.append(f"{trial_id}: epochs {epochs}, expected each of 1..{planned} once")
        if set(rows["status"]) != {FINISHED_STATUS}:
            problems.append(f"{trial_id}: status {sorted(set(rows['status']))}")
        last = rows.loc[rows["epoch"].idxmax()]
        finals[trial_id.rsplit("-", 1)[0]] = {key: value for key, value in last.items()
                                              if key.startswith(("test/", "train/", "correction/", "noise/"))}
    return finals, problems


def differences(reference: dict[str, dict], finals: dict[str, dict]) -> list[str]:
    found = []
    if set(reference) != set(finals):
        return [f"trials {sorted(finals)} != reference {sorted(reference)}"]
    for trial, metrics in reference.items():
        for key, value in metrics.items():
            other = finals[trial].get(key)
            same = (isinstance(value, float) and isinstance(other, float) and math.isnan(value) and math.isnan(other)) \
                or value == other
            if not same:
                found.append(f"{trial} {key}: {other!r} != reference {value!r}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/soak_resume")
    args = parser.parse_args()
    os.environ.update(RAY_TRAIN_V2_ENABLED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      PYTHONPATH=str(REPOSITORY))
    work = Path(args.work)
    shutil.rmtree(work / "runs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    import ray

    from miracl_grid.data.prepare import prepare_cohort
    from miracl_grid.grid.run import RAY_WORKER_ENVIRONMENT

    cohort = work / "cohort"
    if not (cohort / "manifest.json").is_file():
        prepare_cohort("synthetic", cohort, patients=120, hours=24, seed=7, max_tokens=32, max_bins=24,
                       progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(work / "ray"),
             runtime_env={"env_vars": {**RAY_WORKER_ENVIRONMENT, "HF_HUB_OFFLINE": "1"}})
    address = ray.get_runtime_context().gcs_address
    rng = random.Random(args.seed)

    started = time.perf_counter()
    reference_dir = work / "runs" / "reference"
    subprocess.run(command(cohort, reference_dir, args.epochs, 2, address), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference, problems = last_epoch_metrics(reference_dir / "lambda_cons")
    assert not problems, problems
    print(f"reference run: {time.perf_counter() - started:.0f} s, {len(reference)} trials × {args.epochs} epochs",
          flush=True)

    passed, not_interrupted, outcomes = 0, 0, []
    for iteration in range(1, args.iterations + 1):
        storage = work / "runs" / f"iteration{iteration:02d}"
        sweep = storage / "lambda_cons"
        concurrent = 1 if iteration % 2 else 2
        target = rng.randrange(0, 2 * args.epochs)
        jitter = rng.uniform(0.0, 1.0)
        log = (work / "runs" / f"iteration{iteration:02d}.log").open("w")
        driver = subprocess.Popen(command(cohort, storage, args.epochs, concurrent, address), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        while driver.poll() is None and epochs_checkpointed(sweep) < target:
            time.sleep(0.05)
        time.sleep(jitter)
        interrupted = driver.poll() is None
        if interrupted:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        at_kill = epochs_checkpointed(sweep)
        not_interrupted += not interrupted
        # a kill before the driver registered the sweep leaves nothing to resume (`--resume` says
        # so and exits 2, tested elsewhere): then the same command without it starts the sweep
        registered = (sweep / "sweep.json").is_file()
        resume_started = time.perf_counter()
        resumed = subprocess.run(command(cohort, storage, args.epochs, concurrent, address,
                                         *(["--resume"] if registered else [])),
                                 stdout=log, stderr=subprocess.STDOUT)
        log.close()
        resume_s = time.perf_counter() - resume_started
        problems = [] if resumed.returncode == 0 else [f"resume exited {resumed.returncode}"]
        if (sweep / "results.parquet").is_file():
            finals, found = last_epoch_metrics(sweep)
            problems += found + differences(reference, finals)
        else:
            problems.append("no results.parquet")
        passed += not problems
        outcomes.append({"iteration": iteration, "concurrent": concurrent, "target": target,
                         "epochs_at_kill": at_kill, "interrupted": interrupted, "registered": registered,
                         "resume_s": round(resume_s, 1),
                         "ok": not problems, "problems": problems[:5]})
        print(json.dumps(outcomes[-1]), flush=True)
    ray.shutdown()
    print(f"soak: {passed}/{args.iterations} iterations finished with every epoch once and last-epoch metrics "
          f"equal to the uninterrupted run ({args.iterations - not_interrupted} killed mid-sweep, "
          f"{not_interrupted} finished before the kill); kill points (epochs checkpointed of "
          f"{2 * args.epochs}): {sorted(o['epochs_at_kill'] for o in outcomes)}; "
          f"wall {time.perf_counter() - started:.0f} s", flush=True)
    return 0 if passed == args.iterations else 1


if __name__ == "__main__":
    sys.exit(main())
