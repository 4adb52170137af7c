"""Run a list of trials as one Ray Tune experiment, one Ray Train `TorchTrainer` job per trial.

Ray Train V2 pattern: the Tune trainable is a light *driver* function (no CPU reserved: it
only waits) that builds a `TorchTrainer` whose worker group holds the trial's resources and
reports every epoch back to Tune through `TuneReportCallback`.

Failure handling, two levels:
- a worker dies -> Ray Train restarts the worker group from the trial's latest checkpoint
  (`ray.train.FailureConfig(max_failures)`);
- the driver/trial dies -> Tune retries the trial (`tune.FailureConfig(max_failures)`).

Either way the loop resumes from the newest complete checkpoint in the trial's own store
(`miracl_grid.trainables.checkpoints`, under the sweep folder's `trials/<trial_id>/checkpoints`), never from
a checkpoint Tune or Ray Train recorded. Each run of the grid is a fresh Tune experiment over
the cells that are not finished yet (`miracl_grid.grid.folder`); Tune's experiment state is never restored.

Data: trials read one materialised cohort directory by path. On a cluster that path must be
on shared storage (NFS/EFS mounted at the same path on every node); see README. With a
node-local cache folder, each worker reads a copy staged once per node (`miracl_grid.data.staging`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from miracl_grid.grid.folder import ARTIFACTS_FOLDER, TRAIN_RUNS_FOLDER, TUNE_FOLDER, SweepFolder
from miracl_grid.grid.sweeps import Trial

logger = logging.getLogger(__name__)

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@dataclass(frozen=True)
class Resources:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent: int = 1
    max_failures: int = 2            # Tune trial retries; Ray Train worker-group restarts alike


def run_trial(param: dict) -> None:
    """Tune function trainable: one TorchTrainer job for one trial (the V2 driver pattern).

    With ``workers_per_trial == 0`` the trial runs the same loop inside the Tune trial's own
    process instead (single process, no worker group), reporting and checkpointing through
    `ray.tune` — see `run_trial_in_process` for when and why.
    """
    trial, runtime = param["trial"], param["runtime"]
    folder = SweepFolder(runtime["experiment_dir"])
    loop_config = trial_loop_config(trial, runtime)
    if runtime["workers_per_trial"] == 0:
        run_trial_in_process(loop_config)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from miracl_grid.trainables.train import build_trainer

    trainer = build_trainer(
        loop_config, workers=runtime["workers_per_trial"], cpus_per_worker=runtime["cpus_per_worker"],
        gpus_per_worker=runtime["gpus_per_worker"],
        storage_path=folder.child(TRAIN_RUNS_FOLDER), name=trial["id"], max_failures=runtime["max_failures"],
        callbacks=[TuneReportCallback()])
    trainer.fit()


def trial_loop_config(trial: dict, runtime: dict) -> dict:
    """The `miracl_grid.trainables.loop` config of one registered trial (``id``, ``name``,
    ``config``): its checkpoints and selection artifacts go into its own folder of the sweep
    folder ``runtime["experiment_dir"]`` (`miracl_grid.grid.folder`; artifacts on local storage only)."""
    folder = SweepFolder(runtime["experiment_dir"])
    local = folder.local_dir()
    return {
        "trial": trial["config"],
        "cohort_dir": runtime["cohort_dir"],
        "threads": max(1, int(runtime["cpus_per_worker"])),
        "use_gpu": runtime["gpus_per_worker"] > 0,
        "node_local_cache": runtime.get("node_local_cache"),
        "artifact_dir": str(Path(folder.trial_dir(trial["id"])) / ARTIFACTS_FOLDER) if local else None,
        "checkpoint_root": folder.checkpoint_store(trial["id"]).root_uri,
        "fail_once": _fail_hook(runtime, trial["name"]),
    }


def run_trial_in_process(loop_config: dict) -> None:
    """The loop in the Tune trial's process: for trials too small to pay for a worker group.

    Measured on the quick preset here (bench/bench_grid.py): starting a Ray Train controller
    and worker group costs ~19 s before the first epoch of a ~35 s trial when two trials start
    together on 2 cores (over a third of the trial). In-process trials skip that; checkpoints go
    to the same per-trial store the workers use (`miracl_grid.trainables.loop.run_with_store`).
    """
    from ray import tune

    from miracl_grid.trainables.checkpoints import CheckpointStore
    from miracl_grid.trainables.loop import run_with_store

    run_with_store(loop_config, CheckpointStore(loop_config["checkpoint_root"]), tune.report)


def _fail_hook(runtime: dict, trial_name: str) -> dict | None:
    """Test hook (env MIRACL_FAIL_ONCE='TRIAL:EPOCH:RANK[:hold]'): that worker exits (or, with
    ':hold', waits until its node is killed) once at that epoch; see `miracl_grid.trainables.loop._maybe_fail`."""
    spec = runtime.get("fail_once")
    if not spec:
        return None
    name, epoch, rank, *action = spec.split(":")
    if name != trial_name:
        return None
    return {"epoch": int(epoch), "rank": int(rank), "action": action[0] if action else "exit",
            "marker": f"{runtime['experiment_dir']}/fail_once_{trial_name}.marker"}


def trial_dirname(trial) -> str:
    return trial.config["trial"]["id"]


def build_tuner(cells: Sequence[tuple[str, Trial]], *, experiment_dir: str, run_name: str,
                cohort_dir: str, resources: Resources, stop_requests: list,
                fail_once: str | None = None, node_local_cache: str | None = None):
    """A fresh `ray.tune.Tuner` over `cells` ((trial id, Trial) pairs: the cells this run
    trains), its Tune folder `<experiment_dir>/tune/<run_name>`. The experiment stops (running
    trials end at their last checkpoint) as soon as `stop_requests` is non-empty — the CLI
    appends the signal it received (Ctrl-C, SIGTERM)."""
    from ray import tune

    class StopOnRequest(tune.Stopper):
        def __init__(self, requests: list):
            self.requests = requests

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return bool(self.requests)

    runtime = {"experiment_dir": experiment_dir, "cohort_dir": cohort_dir,
               "workers_per_trial": resources.workers_per_trial,
               "cpus_per_worker": resources.cpus_per_worker,
               "gpus_per_worker": resources.gpus_per_worker,
               "max_failures": resources.max_failures, "fail_once": fail_once,
               "node_local_cache": node_local_cache}
    param_space = {
        "trial": tune.grid_search([{"id": identity, "name": t.name, "config": t.config}
                                   for identity, t in cells]),
        "runtime": runtime,
    }
    return tune.Tuner(
        _trainable(),
        param_space=param_space,
        # reuse_actors: a new trial actor imports torch and the loop again (~2-4 s on 2 cores, ~5 %
        # of a quick-preset trial); every trial re-seeds all RNGs per epoch and sets its own
        # threads and determinism (miracl_grid.trainables.loop.seed_everything), so reuse leaks nothing.
        tune_config=tune.TuneConfig(max_concurrent_trials=resources.max_concurrent, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname,
                                    trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(name=run_name, storage_path=SweepFolder(experiment_dir).child(TUNE_FOLDER),
                                  failure_config=tune.FailureConfig(max_failures=resources.max_failures),
                                  stop=StopOnRequest(stop_requests), progress_reporter=_reporter(), verbose=1),
    )


def _trainable():
    from ray import tune

    return tune.with_resources(run_trial, _driver_resources)


def _driver_resources(config: dict) -> dict:
    # A worker-group trial's driver only waits on the TorchTrainer, whose workers hold the
    # trial's CPUs/GPUs; Tune refuses an all-zero request, so it asks for one byte of memory.
    # An in-process trial (0 workers) trains in the driver and holds one worker's resources.
    runtime = config["runtime"]
    if runtime["workers_per_trial"] == 0:
        return {"cpu": runtime["cpus_per_worker"], "gpu": runtime["gpus_per_worker"]}
    return {"cpu": 0, "memory": 1}


def _reporter():
    from ray import tune

    return tune.CLIReporter(
        metric_columns={"epoch": "epoch", "test/mAP": "mAP", "test/F1": "F1",
                        "correction/accuracy_corrected": "corr.acc", "time/epoch_s": "s/epoch"},
        parameter_columns={"trial/name": "trial"}, max_report_frequency=30)
