"""Single-trial entry point: one Ray Train `TorchTrainer` job, last-epoch metrics printed.

    python -m miracl_grid.trainables.train --data DIR --epochs N --workers K [--FIELD VALUE ...]

Every `TrialConfig` field is a flag (`--lambda-cons 0.2`, `--method asl`, ...).
`--list-methods` prints the method and backbone registries.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from miracl_grid.trainables.config import ConfigError, TrialConfig

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

# Ray loggers that only add noise to this CLI's output, and the level they are raised to in every
# Ray worker process. ray[tune,train] ships without Ray's dashboard, so its State API is absent and
# Train's PlacementGroupCleaner (the safety net for a controller that dies without removing its
# placement group) warns about that every second of a run.
RAY_NOISY_LOGGERS: dict[str, int] = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}


def quiet_ray_worker_logs() -> None:
    """Ray `worker_process_setup_hook`: apply `RAY_NOISY_LOGGERS` in a worker process.

    It also points the worker's State API client at its own cluster (``RAY_ADDRESS``): with
    several local Ray instances on one machine the client otherwise cannot choose one and the
    cleaner's thread dies with a traceback instead of logging.
    """
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    for name, level in RAY_NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def process_group_backend(workers: int, gpus_per_worker: float) -> str:
    """torch.distributed backend of a K-worker trial.

    nccl when every worker holds at least one whole GPU (so ranks are on distinct GPUs).
    gloo otherwise: on CPU, and when workers hold GPU *fractions* — Ray then packs two ranks of
    one trial onto the same physical GPU, which NCCL rejects ("Duplicate GPU detected"); gloo
    runs those collectives through host memory instead. One worker has no collectives at all.
    """
    if workers < 1 or gpus_per_worker < 0:
        raise ValueError(f"workers = {workers}, gpus_per_worker = {gpus_per_worker}: expected >= 1 and >= 0")
    return "nccl" if gpus_per_worker >= 1 else "gloo"


def scaling_config(workers: int, cpus_per_worker: float, gpus_per_worker: float):
    """Ray Train ScalingConfig for K DDP workers, each reserving these CPUs and GPU (share)."""
    import ray.train

    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    return ray.train.ScalingConfig(num_workers=workers, use_gpu=bool(gpus_per_worker),
                                   resources_per_worker=resources)


def build_trainer(loop_config: dict, *, workers: int, cpus_per_worker: float = 1.0,
                  gpus_per_worker: float = 0.0, storage_path: str, name: str,
                  max_failures: int = 0, callbacks=None):
    """A TorchTrainer running `train_loop_per_worker`, which checkpoints into (and resumes from)
    ``loop_config["checkpoint_root"]`` (`miracl_grid.trainables.checkpoints`); Ray Train itself gets metrics only.
    The workers train on their GPU exactly when they reserve one (``use_gpu`` in the loop config).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from miracl_grid.trainables.loop import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, "use_gpu": gpus_per_worker > 0},
        torch_config=TorchConfig(backend=process_group_backend(workers, gpus_per_worker)),
        scaling_config=scaling_config(workers, cpus_per_worker, gpus_per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(TrialConfig):
        if field.name == "extra":
            continue
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, dest=f"config_{field.name}", default=None, metavar="VALUE",
                            help=f"TrialConfig.{field.name} (default {field.default!r})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m miracl_grid.trainables.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="materialised cohort directory (python -m miracl_grid.data.prepare)")
    parser.add_argument("--workers", type=int, default=1, help="DDP workers (Ray Train)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--storage", default="./runs/single", help="Ray Train storage path")
    parser.add_argument("--name", default=None,
                        help="run name (same name + storage resumes from <storage>/<name>/checkpoints)")
    parser.add_argument("--address", default=None, help="Ray address ('auto' for a running cluster)")
    parser.add_argument("--max-failures", type=int, default=1)
    parser.add_argument("--list-methods", action="store_true", help="print methods and backbones")
    _add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from miracl_grid.trainables.backbones import BACKBONES
    from miracl_grid.trainables.registry import METHODS

    if args.list_methods:
        print("methods:  ", ", ".join(sorted(METHODS)))
        print("backbones:", ", ".join(sorted(BACKBONES)))
        return 0
    if not args.data:
        print("error: --data DIR is required (prepare one with `python -m miracl_grid.data.prepare`)", file=sys.stderr)
        return 2
    values = {key[len("config_"):]: value for key, value in vars(args).items()
              if key.startswith("config_") and value is not None}
    try:
        config = TrialConfig.from_dict(values).validate(tuple(BACKBONES))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cohort = Path(args.data).resolve()
    if not (cohort / "manifest.json").is_file():
        print(f"error: {cohort}: not a materialised cohort (no manifest.json)", file=sys.stderr)
        return 2
    from miracl_grid.data.dataset import CohortData
    from miracl_grid.data.errors import CohortError

    from miracl_grid.data.noise import NoiseError, balanced_rho_neg, check_balanced_rho_neg

    try:  # the checks every worker would run (arrays, text key, text meta) fail here, before Ray starts
        manifest = CohortData(cohort, text_key=config.text_feature_key or None).manifest
        if config.noise_model == "balanced":    # ρ− from this cohort's L_avg, as a sweep derives it
            l_avg, num_labels = manifest["l_avg_train"], manifest["num_labels"]
            if "rho_neg" in values:
                check_balanced_rho_neg(config.rho_pos, config.rho_neg, l_avg=l_avg, num_labels=num_labels)
            else:
                config = config.replace(rho_neg=balanced_rho_neg(config.rho_pos, l_avg, num_labels))
    except (CohortError, NoiseError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import ray

    ray.init(address=args.address, include_dashboard=False, log_to_driver=True,
             runtime_env={"worker_process_setup_hook": quiet_ray_worker_logs})
    storage = str(Path(args.storage).resolve()) if "://" not in args.storage else args.storage
    name = args.name or f"{config.method}_{config.backbone}_{config.content_hash()}"
    checkpoint_root = f"{storage.rstrip('/')}/{name}/checkpoints"
    trainer = build_trainer({"trial": config.to_flat_dict(), "cohort_dir": str(cohort),
                             "threads": max(1, int(args.cpus_per_worker)),
                             "checkpoint_root": checkpoint_root},
                            workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                            gpus_per_worker=args.gpus_per_worker, storage_path=storage, name=name,
                            max_failures=args.max_failures)
    result = trainer.fit()
    from miracl_grid.trainables.checkpoints import CheckpointStore

    history = CheckpointStore(checkpoint_root).history()    # the trial's own record of every epoch
    metrics = {k: v for k, v in (history[-1] if history else {}).items() if not k.startswith("artifact/")}
    print(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    print(f"run directory: {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
