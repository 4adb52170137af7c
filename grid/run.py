"""Fan out a named sweep of the MIRACL grid on Ray Tune, one Ray Train DDP job per trial.

    python grid/run.py --sweep lambda_cons                  # embedded cohort, quick preset
    python grid/run.py --sweep main --data mimic3:/data/phenotyping --notes notes.parquet \
        --preset paper --address auto --workers-per-trial 2 --gpus-per-worker 0.5 \
        --storage s3://bucket/runs --cohort-cache /mnt/efs/cohorts
    python grid/run.py --sweep lambda_cons --resume         # continue an interrupted sweep
    python grid/run.py --list | --sweep NAME --dry-run

Writes Tune's experiment folder `<storage>/<name>` (default `./runs/<sweep>`), then
`results.parquet` and `report.md` there, and prints their paths.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")     # Tune's CLIReporter with our metric columns
# Every epoch checkpoints and Tune (num_to_keep=2) then snapshots its experiment state, which is
# what lets --resume skip finished trials; its "snapshotting too often" warning is expected here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from trainables.config import ConfigError  # noqa: E402

logger = logging.getLogger("grid.run")

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
    parser.add_argument("--sweep", help="main, lambda_cons, alpha, ablation, stability")
    parser.add_argument("--list", action="store_true", help="print the sweeps and their trial counts")
    parser.add_argument("--dry-run", action="store_true", help="print the trials, run nothing")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None,
                      help="synthetic (default) | mimic3:PATH | mimic4:TASKDIR|LISTFILE[,TSDIR] | a materialised cohort dir")
    data.add_argument("--notes", default=None, help="notes table (stay,text) for mimic3 sources")
    data.add_argument("--noteevents", default=None, help="mimic3: MIMIC-III NOTEEVENTS (notes selected per stay, "
                      "see data.noteevents); needs --icustays")
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
    trials.add_argument("--methods", default=None, help="e.g. miracl,asl,medfuse")
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
    cluster.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    cluster.add_argument("--no-report", action="store_true", help="skip analysis.report at the end")
    return parser


def _is_embedded(data: str | None) -> bool:
    return data in (None, "synthetic")


def prepare_data(args, runtime: dict) -> Path:
    """Materialise (or reuse, by content hash) the cohort once for every trial."""
    from data.prepare import prepare_cohort

    if args.data and not _is_embedded(args.data) and ":" not in args.data:
        cohort = Path(args.data).resolve()
        if not (cohort / "manifest.json").is_file():
            raise ConfigError(f"--data {args.data}: not a materialised cohort (no manifest.json) and not "
                              "'synthetic', 'mimic3:PATH' or 'mimic4:TASKDIR|LISTFILE[,TSDIR]'")
        return cohort
    source = args.data or "synthetic"
    options: dict = {"encoder": args.encoder, "notes": args.notes}
    options.update({k: v for k, v in (("noteevents", args.noteevents), ("icustays", args.icustays)) if v})
    if _is_embedded(args.data):
        synthetic = runtime["synthetic_cohort"]
        options.update(patients=synthetic["num_patients"], hours=synthetic["max_hours"])
    key = hashlib.sha256(json.dumps([source, options], sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = Path(args.cohort_cache or Path(args.storage if "://" not in args.storage else ".") / "cohorts")
    out = cache.resolve() / key
    if args.encode_on_cluster:    # the notes' token features by a Ray job on the cluster's (GPU) workers
        from grid.encode_text import ClusterNoteEncoder

        connect_ray(args)
        options["note_encoder"] = ClusterNoteEncoder(out / TEXT_SHARDS)
    cohort = Path(prepare_cohort(source, out, **{k: v for k, v in options.items() if v is not None}))
    shutil.rmtree(out / TEXT_SHARDS, ignore_errors=True)     # kept only until the text cache is written
    return cohort


def connect_ray(args) -> None:
    """Join `--address` (or start a local Ray) once per process; tests may have started one already."""
    import ray

    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False if not args.address else None,
                 log_to_driver=False, runtime_env={"env_vars": RAY_WORKER_ENVIRONMENT})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    from grid.presets import preset_runtime, preset_trial_defaults
    from grid.sweeps import describe_sweeps, expand_sweep, format_trials, parse_set_arguments

    if args.list:
        print(describe_sweeps(PAPER_L_AVG, PAPER_NUM_LABELS))
        print(f"(balanced rho- shown for L_avg={PAPER_L_AVG}; a run derives it from its cohort)")
        return 0
    if not args.sweep:
        print("error: --sweep NAME is required (see --list)", file=sys.stderr)
        return 2
    preset = args.preset or ("quick" if _is_embedded(args.data) else "paper")
    if args.workers_per_trial is None:
        args.workers_per_trial = 0 if preset == "quick" else 1
    if args.workers_per_trial < 0:
        print("error: --workers-per-trial must be >= 0", file=sys.stderr)
        return 2
    if args.node_local_cache and not Path(args.node_local_cache).is_absolute():
        print(f"error: --node-local-cache {args.node_local_cache}: expected an absolute path (it names a "
              "folder on every node)", file=sys.stderr)
        return 2
    runtime = preset_runtime(preset)
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    experiment = args.name or args.sweep
    experiment_dir = f"{storage.rstrip('/')}/{experiment}"
    try:
        from data.errors import CohortError
        from data.materialise import load_manifest

        cohort_dir = prepare_data(args, runtime)
        manifest = load_manifest(cohort_dir)   # digest checked: a damaged manifest is a clean error
        trials = expand_sweep(args.sweep, l_avg=manifest["l_avg_train"], num_labels=manifest["num_labels"],
                              seeds=args.seeds, noise=args.noise, methods=args.methods,
                              overrides=parse_set_arguments(args.set), preset=preset_trial_defaults(preset),
                              preset_seeds=runtime["seeds"])
        from data.dataset import CohortData

        for key in sorted({t.config["text_feature_key"] for t in trials}):
            # full file check once per sweep (trials run the quick one); unknown key / other encoder: error now
            CohortData(cohort_dir, text_key=key or None, verify="full").text()
    except (ConfigError, CohortError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sweep {args.sweep}: {len(trials)} trials, preset {preset}, cohort {cohort_dir}")
    if args.dry_run:
        print(format_trials(trials))
        return 0
    return run_sweep(args, trials, cohort_dir, manifest, storage, experiment, experiment_dir)


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


def run_sweep(args, trials, cohort_dir: Path, manifest: dict, storage: str, experiment: str,
              experiment_dir: str) -> int:
    import ray

    from grid.provenance import sweep_provenance
    from grid.results import ERROR_STATUS, collect_experiment, fetch_result_files, write_results
    from grid.runner import Resources, build_tuner, restore_tuner

    connect_ray(args)
    resources = Resources(args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker,
                          args.max_concurrent or fitting_trials(ray.cluster_resources(), args),
                          args.max_failures)
    started = time.perf_counter()
    if args.resume:
        tuner = restore_tuner(experiment_dir)
    else:
        tuner = build_tuner(trials, experiment_name=experiment, storage=storage, cohort_dir=str(cohort_dir),
                            resources=resources, fail_once=os.environ.get("MIRACL_FAIL_ONCE"),
                            node_local_cache=args.node_local_cache)
    grid = tuner.fit()
    statuses = {}
    failed = []
    for result in grid:
        name = result.config["trial"]["name"]
        statuses[name] = ERROR_STATUS if result.error else "TERMINATED"
        if result.error:
            failed.append(f"{name}: {type(result.error).__name__}: {str(result.error).splitlines()[0][:200]}")
    with tempfile.TemporaryDirectory() as scratch:
        local = fetch_result_files(experiment_dir, scratch) if "://" in experiment_dir else experiment_dir
        frame = collect_experiment(local, sweep=args.sweep, statuses=statuses,
                                   provenance=sweep_provenance(manifest))
    frame["experiment"] = experiment
    results_path = write_results(frame, experiment_dir)
    print(f"{len(statuses)} trials in {time.perf_counter() - started:.0f} s; results: {results_path}")
    if failed:
        print(f"{len(failed)} trial(s) failed after retries:", *failed, sep="\n  ", file=sys.stderr)
    if not args.no_report and "://" not in experiment_dir:
        from analysis.report import write_report

        report = write_report(experiment_dir, allow_partial=bool(failed))
        print(f"report: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
