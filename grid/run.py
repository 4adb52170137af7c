"""Fan out a named sweep of the MIRACL grid on Ray Tune, one Ray Train DDP job per trial.

    python grid/run.py --sweep lambda_cons                  # embedded cohort, quick preset
    python grid/run.py --sweep main --data mimic3:/data/phenotyping --notes notes.parquet \
        --preset paper --address auto --workers-per-trial 2 --gpus-per-worker 0.5 \
        --storage s3://bucket/runs --cohort-cache /mnt/efs/cohorts
    python grid/run.py --sweep lambda_cons --resume         # continue an interrupted sweep
    python grid/run.py --sweep lambda_cons --seeds 30,40,100 # extend it: runs only the new cells
    python grid/run.py --list | --sweep NAME --dry-run

Writes the sweep folder `<storage>/<name>` (default `./runs/<sweep>`, layout in `miracl_grid.grid.folder`):
one trial per config hash, then `results.parquet`, `trials.parquet` and `report.md` there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # `python grid/run.py` from a checkout: its root (not grid/) goes first on the path, so
    # `miracl_grid` (and the subpackages it maps) import from this checkout, installed or not.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")     # Tune's CLIReporter with our metric columns
# Ctrl-C/SIGTERM are ours (`_stop_handler`): they stop the sweep through a Tune stopper.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")

from miracl_grid.trainables.config import ConfigError  # noqa: E402

logger = logging.getLogger("miracl_grid.grid.run")

# Ray Train's controller polls its workers every 2 s by default; each epoch report and the end
# of every trial wait for a poll. Measured on the quick preset: 0.25 s cuts ~1 s per epoch and
# ~4 s per trial of pure waiting (bench/bench_grid.py).
RAY_WORKER_ENVIRONMENT = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                          "TOKENIZERS_PARALLELISM": "false"}
TEXT_SHARDS = ".text_shards"      # --encode-on-cluster's finished shards (resume) inside the cohort folder
PAPER_L_AVG, PAPER_NUM_LABELS = 4.575, 25   # MIMIC-IV PHE (METHOD §10), for --list without a cohort


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python grid/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from miracl_grid.grid.sweeps import SWEEPS

    parser.add_argument("--sweep", help=", ".join(SWEEPS))
    parser.add_argument("--list", action="store_true", help="print the sweeps and their trial counts")
    parser.add_argument("--dry-run", action="store_true", help="print the trials, run nothing")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None,
                      help="synthetic (default) | mimic3:PATH | mimic4:TASKDIR|LISTFILE[,TSDIR] | "
                           "mimic3-raw:MIMIC_III_DIR | a materialised cohort dir")
    data.add_argument("--notes", default=None, help="notes table (stay,text) for mimic3 / mimic3-raw sources")
    data.add_argument("--noteevents", default=None, help="mimic3 / mimic3-raw: MIMIC-III NOTEEVENTS (notes selected "
                      "per stay, see miracl_grid.data.noteevents); mimic3 needs --icustays")
    data.add_argument("--icustays", default=None, help="mimic3 with --noteevents: MIMIC-III ICUSTAYS (stay times)")
    data.add_argument("--encoder", default=None, help="text encoder (HF id or path); default: packaged MiniLM")
    data.add_argument("--encode-on-cluster", action="store_true",
                      help="compute the notes' text features as a Ray job (one task per length bucket, on GPU "
                           "workers when the cluster has them; resumable) instead of in this process")
    data.add_argument("--cohort-cache", default=None,
                      help="where materialised cohorts live (shared storage on a cluster; default ./runs/cohorts)")
    trials = parser.add_argument_group("trials")
    trials.add_argument("--preset", choices=("quick", "paper"), default=None,
                        help="quick (default for the embedded cohort) or paper (default for MIMIC)")
    trials.add_argument("--seeds", default=None, help="comma list replacing the sweep's seeds")
    trials.add_argument("--noise", default=None, help="e.g. 'symmetric:0.2,0.2;asymmetric:0,0.4'")
    trials.add_argument("--arms", default=None,
                        help="the compared rows to run instead of the sweep's, e.g. miracl,asl,medfuse: a "
                             "registered method on its default backbone, flexcare/medfuse/m3care (BCE on that "
                             "backbone) or an ablation variant (the method itself: --set method=NAME)")
    trials.add_argument("--methods", dest="old_methods", default=None, help=argparse.SUPPRESS)
    trials.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE[,VALUE]",
                        help="TrialConfig override; a comma list widens the grid")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--address", default=None, help="Ray address ('auto' after `ray up`); default: local Ray")
    cluster.add_argument("--workers-per-trial", type=int, default=None,
                         help="Ray Train DDP workers per trial; 0 runs the loop in the Tune trial's own "
                              "process (no worker group). Default: 0 for the quick preset, 1 otherwise")
    cluster.add_argument("--cpus-per-worker", type=float, default=1.0)
    cluster.add_argument("--gpus-per-worker", type=float, default=0.0, help="fractions share a GPU")
    cluster.add_argument("--max-concurrent", type=int, default=0,
                         help="0: as many as the cluster's current resources fit (set it on autoscaling clusters)")
    cluster.add_argument("--max-failures", type=int, default=2)
    cluster.add_argument("--storage", default="./runs", help="local path or pyarrow URI (s3://...)")
    cluster.add_argument("--node-local-cache", default=None, metavar="DIR",
                         help="folder on every node's local disk: each node copies the cohort there once "
                              "and its trials read that copy instead of --cohort-cache every epoch")
    cluster.add_argument("--name", default=None, help="experiment name (default: the sweep name)")
    cluster.add_argument("--resume", action="store_true",
                         help="continue the sweep in its folder (an error when there is none); finished "
                              "trials are kept, new cells of a changed command run beside them")
    cluster.add_argument("--no-report", action="store_true", help="skip miracl_grid.analysis.report at the end")
    return parser


def _is_embedded(data: str | None) -> bool:
    return data in (None, "synthetic")


def cohort_location(args, runtime: dict) -> tuple[str, Path, dict]:
    """Where the run's cohort is or will be: (source, directory, prepare options). Builds nothing.

    A materialised cohort given as ``--data DIR`` is its own location; any other source lives
    under ``--cohort-cache`` in a folder named by a hash of the source and its options.
    """
    if args.data and not _is_embedded(args.data) and ":" not in args.data:
        cohort = Path(args.data).resolve()
        if not (cohort / "manifest.json").is_file():
            raise ConfigError(f"--data {args.data}: not a materialised cohort (no manifest.json) and not "
                              "'synthetic', 'mimic3:PATH', 'mimic4:TASKDIR|LISTFILE[,TSDIR]' or "
                              "'mimic3-raw:MIMIC_III_DIR'")
        return "", cohort, {}
    source = args.data or "synthetic"
    options: dict = {"encoder": args.encoder, "notes": args.notes}
    options.update({k: v for k, v in (("noteevents", args.noteevents), ("icustays", args.icustays)) if v})
    if _is_embedded(args.data):
        synthetic = runtime["synthetic_cohort"]
        options.update(patients=synthetic["num_patients"], hours=synthetic["max_hours"])
    key = hashlib.sha256(json.dumps([source, options], sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = Path(args.cohort_cache or Path(args.storage if "://" not in args.storage else ".") / "cohorts")
    return source, cache.resolve() / key, {k: v for k, v in options.items() if v is not None}


def prepare_data(args, runtime: dict) -> Path:
    """Materialise (or reuse, by content hash) the cohort once for every trial."""
    from miracl_grid.data.prepare import prepare_cohort

    source, cohort, options = cohort_location(args, runtime)
    if not source:
        return cohort
    if args.encode_on_cluster:    # the notes' token features by a Ray job on the cluster's (GPU) workers
        from miracl_grid.grid.encode_text import ClusterNoteEncoder

        connect_ray(args)
        options["note_encoder"] = ClusterNoteEncoder(cohort / TEXT_SHARDS)
    prepared = Path(prepare_cohort(source, cohort, **options))
    shutil.rmtree(cohort / TEXT_SHARDS, ignore_errors=True)     # kept only until the text cache is written
    return prepared


def connect_ray(args) -> None:
    """Join `--address` (or start a local Ray) once per process; tests may have started one already."""
    import ray

    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False if not args.address else None,
                 log_to_driver=False, runtime_env={"env_vars": RAY_WORKER_ENVIRONMENT})


def expand_requested_sweep(args, preset: str, runtime: dict, l_avg: float, num_labels: int) -> list:
    """The trials of ``--sweep`` with every narrowing/widening flag applied (validated configs)."""
    from miracl_grid.grid.presets import preset_trial_defaults
    from miracl_grid.grid.sweeps import expand_sweep, parse_set_arguments

    return expand_sweep(args.sweep, l_avg=l_avg, num_labels=num_labels, seeds=args.seeds, noise=args.noise,
                        arms=args.arms, overrides=parse_set_arguments(args.set),
                        preset=preset_trial_defaults(preset), preset_seeds=runtime["seeds"])


def check_text_keys(trials, cohort_dir: Path) -> None:
    """Every trial's text-feature key exists in the cohort and its files pass the full check
    (unknown key / other encoder / damaged file: CohortError)."""
    from miracl_grid.data.dataset import CohortData

    for key in sorted({t.config["text_feature_key"] for t in trials}):
        # full file check once per sweep (trials run the quick one)
        CohortData(cohort_dir, text_key=key or None, verify="full").text()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.old_methods is not None:
        print(f"error: --methods is now --arms (an arm is a compared row: a method on a backbone, e.g. flexcare = "
              f"method bce on backbone flexcare; a method is what --set method=NAME trains): "
              f"use --arms {args.old_methods}", file=sys.stderr)
        return 2
    from miracl_grid.data.errors import CohortError
    from miracl_grid.grid.folder import SWEEP_FILE, SweepFolder
    from miracl_grid.grid.presets import preset_runtime, preset_trial_defaults
    from miracl_grid.grid.sweeps import describe_sweeps, format_trials, get_sweep

    preset = args.preset = args.preset or ("quick" if _is_embedded(args.data) else "paper")
    runtime = preset_runtime(preset)
    if args.list:   # counted exactly as a run of this preset expands them
        print(f"trials per sweep as a run of preset {preset} (seeds {', '.join(map(str, runtime['seeds']))}) "
              "expands them; --seeds/--noise/--arms/--set change that (see --dry-run)")
        print(describe_sweeps(PAPER_L_AVG, PAPER_NUM_LABELS, preset=preset_trial_defaults(preset),
                              preset_seeds=runtime["seeds"]))
        print(f"(balanced rho- shown for L_avg={PAPER_L_AVG}; a run derives it from its cohort)")
        return 0
    if not args.sweep:
        print("error: --sweep NAME is required (see --list)", file=sys.stderr)
        return 2
    if args.workers_per_trial is None:
        args.workers_per_trial = 0 if preset == "quick" else 1
    if args.workers_per_trial < 0:
        print("error: --workers-per-trial must be >= 0", file=sys.stderr)
        return 2
    if args.node_local_cache and not Path(args.node_local_cache).is_absolute():
        print(f"error: --node-local-cache {args.node_local_cache}: expected an absolute path (it names a "
              "folder on every node)", file=sys.stderr)
        return 2
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    folder = SweepFolder(f"{storage.rstrip('/')}/{args.name or args.sweep}")
    if args.resume and not folder.holds_sweep():
        print(f"error: --resume: no sweep to resume in {folder.uri} (no {SWEEP_FILE}); run the command "
              "without --resume to start it", file=sys.stderr)
        return 2
    # Everything that can be checked without the cohort is checked before it is built: the sweep
    # name, the flags and every trial's config (a cohort build takes minutes on real data).
    try:
        from miracl_grid.data.materialise import load_manifest

        get_sweep(args.sweep)
        source, cohort_dir, _ = cohort_location(args, runtime)
        # digest checked: a damaged manifest is a clean error
        manifest = load_manifest(cohort_dir) if (cohort_dir / "manifest.json").is_file() else None
        l_avg, num_labels = ((manifest["l_avg_train"], manifest["num_labels"]) if manifest
                             else (PAPER_L_AVG, PAPER_NUM_LABELS))
        trials = expand_requested_sweep(args, preset, runtime, l_avg, num_labels)
        if args.dry_run:   # never builds a cohort; checks the text keys of one that exists
            if manifest:
                check_text_keys(trials, cohort_dir)
            state = "" if manifest else " (not built yet: a run builds it)"
            print(f"sweep {args.sweep}: {len(trials)} trials, preset {preset}, cohort {cohort_dir}{state}")
            if not manifest and any(t.config["noise_model"] == "balanced" for t in trials):
                print(f"(balanced rho- shown for L_avg={PAPER_L_AVG}; a run derives it from its cohort)")
            print(format_trials(trials))
            return 0
        cohort_dir = prepare_data(args, runtime)
        manifest = load_manifest(cohort_dir)
        trials = expand_requested_sweep(args, preset, runtime, manifest["l_avg_train"], manifest["num_labels"])
        check_text_keys(trials, cohort_dir)
    except (ConfigError, CohortError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sweep {args.sweep}: {len(trials)} trials, preset {preset}, cohort {cohort_dir}")
    return run_sweep(args, trials, cohort_dir, manifest, folder)


def fitting_trials(cluster: dict, args) -> int:
    """How many trials the cluster's *current* resources run at once (>= 1).

    The Tune driver of a trial reserves no CPU (it only waits), so without this cap Tune would
    start every trial's driver at once and leave them queueing for worker groups. On an
    autoscaling cluster that starts without GPU nodes pass --max-concurrent explicitly.
    """
    workers = max(1, args.workers_per_trial)     # an in-process trial holds one worker's share
    per_trial_cpus = workers * args.cpus_per_worker
    fits = int(cluster.get("CPU", 0) // per_trial_cpus) if per_trial_cpus else 1
    if args.gpus_per_worker:
        fits = min(fits, int(cluster.get("GPU", 0) // (workers * args.gpus_per_worker)))
    return max(1, fits)


def run_sweep(args, trials, cohort_dir: Path, manifest: dict, folder) -> int:
    """Register the sweep's cells in its folder, train the unfinished ones, collect, report."""
    from miracl_grid.grid.folder import FolderError
    from miracl_grid.grid.provenance import sweep_provenance
    from miracl_grid.trainables.checkpoints import storage_full

    stop_requests: list[str] = []
    previous = {sig: signal.signal(sig, _stop_handler(stop_requests)) for sig in STOP_SIGNALS}
    try:
        with folder.lock():
            folder.claim(sweep=args.sweep, cohort_hash=manifest.get("cohort_hash", ""))
            provenance = {key: sweep_provenance(manifest, key or None, preset=args.preset)
                          for key in {t.config["text_feature_key"] for t in trials}}
            cells = [(folder.register(t.name, args.sweep, t.config, provenance[t.config["text_feature_key"]]), t)
                     for t in trials]
            return _train_and_collect(args, folder, cells, cohort_dir, stop_requests)
    except FolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted again before the results were written; every finished epoch is "
              f"checkpointed: run the same command with --resume to continue ({folder.uri})", file=sys.stderr)
        return 130
    except OSError as error:
        if not storage_full(error):
            raise
        print(f"error: storage full: {error}. Earlier results and checkpoints in {folder.uri} are intact; "
              "free space, then run the same command with --resume", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_handler(requests: list):
    """First Ctrl-C/SIGTERM: stop the sweep cleanly (the Tune stopper sees `requests`); a second
    one raises KeyboardInterrupt."""
    def handler(number, frame) -> None:
        if requests:
            raise KeyboardInterrupt
        requests.append(signal.Signals(number).name)
        print(f"\n{signal.Signals(number).name} received: stopping the sweep after its running trials' "
              "last checkpoints (again to abort)", file=sys.stderr, flush=True)
    return handler


def _epochs_done(folder, identity: str) -> int:
    latest = folder.checkpoint_store(identity).latest()
    return latest.epoch if latest else 0


def _train_and_collect(args, folder, cells, cohort_dir: Path, stop_requests: list) -> int:
    from miracl_grid.grid.results import FINISHED_STATUS, write_results

    planned = {identity for identity, _ in cells}
    to_run = [(identity, trial) for identity, trial in cells
              if _epochs_done(folder, identity) < int(trial.config["epochs"])]
    others = [record["id"] for record in folder.trial_records() if record["id"] not in planned]
    print(f"{folder.uri}: {len(cells) - len(to_run)} of this command's {len(cells)} trials finished "
          f"earlier (kept), {len(to_run)} to run"
          + (f"; {len(others)} trials of earlier commands kept as they are" if others else ""))
    started = time.perf_counter()
    failures: dict[str, str] = {}
    if to_run and not stop_requests:
        failures = _run_trials(args, folder, to_run, cohort_dir, stop_requests)
    results_path, frame, expected = write_results(folder)
    mine = expected[expected["trial_id"].isin(planned)]
    unfinished = mine.loc[mine["status"] != FINISHED_STATUS, "trial_id"].tolist()
    print(f"{len(mine) - len(unfinished)} of {len(mine)} trials finished ({time.perf_counter() - started:.0f} s "
          f"this run); experiment: {folder.uri}")
    print(f"results: {results_path}")
    if failures:
        print(f"{len(failures)} trial(s) failed after retries:", *(f"{k}: {v}" for k, v in failures.items()),
              sep="\n  ", file=sys.stderr)
        if any(message.startswith("storage full") for message in failures.values()):
            print(f"error: storage full while trials wrote checkpoints; earlier checkpoints and results in "
                  f"{folder.uri} are intact: free space, then run the same command with --resume", file=sys.stderr)
    if frame.empty:
        print("no trial reported an epoch; no report", file=sys.stderr)
    elif not args.no_report and folder.local_dir() is not None:
        _report(folder, complete=not (expected["status"] != FINISHED_STATUS).any())
    if stop_requests or (unfinished and not failures):
        print(f"{stop_requests[0] if stop_requests else 'interrupted'}: {len(unfinished)} trial(s) unfinished "
              f"(their finished epochs are checkpointed); run the same command with --resume to continue",
              file=sys.stderr)
        return 143 if stop_requests == ["SIGTERM"] else 130
    return 1 if failures else 0


def _report(folder, *, complete: bool) -> None:
    from miracl_grid.analysis.collect import ResultsError
    from miracl_grid.analysis.report import write_report

    try:
        report = write_report(folder.local_dir(), allow_partial=not complete)
    except ResultsError as error:
        print(f"report: not written ({error})")
        return
    print(f"report: {report}" + ("" if complete else " (partial: unfinished trials listed in it)"))
    figures = report.parent / "figures"
    if figures.is_dir():
        print(f"figures: {figures}")


def _run_trials(args, folder, to_run, cohort_dir: Path, stop_requests: list) -> dict[str, str]:
    """One fresh Tune experiment over `to_run`; returns {trial id: error} of trials that failed."""
    import ray

    from miracl_grid.grid.runner import Resources, build_tuner
    from miracl_grid.trainables.checkpoints import storage_full

    connect_ray(args)   # tests (and notebooks) may have started one already
    for sig in STOP_SIGNALS:   # ray.init installs its own SIGTERM handler (sys.exit): ours again
        signal.signal(sig, _stop_handler(stop_requests))
    resources = Resources(args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker,
                          args.max_concurrent or fitting_trials(ray.cluster_resources(), args),
                          args.max_failures)
    for identity, _ in to_run:
        folder.record_failure(identity, None)
    run_name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    tuner = build_tuner(to_run, experiment_dir=folder.uri, run_name=run_name, cohort_dir=str(cohort_dir),
                        resources=resources, stop_requests=stop_requests,
                        fail_once=os.environ.get("MIRACL_FAIL_ONCE"), node_local_cache=args.node_local_cache)
    failures = {}
    for result in tuner.fit():
        if result.error is None:
            continue
        identity = Path(result.path).name          # the Tune trial folder is named by trial id
        message = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:300]}"
        if storage_full(result.error) or any(text in str(result.error)
                                             for text in ("No space left on device", "storage full")):
            message = f"storage full ({message})"
        failures[identity] = message
        folder.record_failure(identity, message)
    return failures


if __name__ == "__main__":
    # Run the package's module, not this __main__ copy, so Ray pickles trainables by reference.
    from miracl_grid.grid.run import main as package_main
    sys.exit(package_main())
