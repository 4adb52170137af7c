"""End-to-end runs on one shared local Ray session: grid, DDP equivalence, failures, resume.

All `slow` (a Ray Train worker group costs ~10 s to start here); the `ci` ones run in CI.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
TINY = dict(epochs=2, warmup_epochs=1, batch_size=32, hidden_size=32, fusion_layers=1, num_experts=4,
            top_k_experts=2, max_note_tokens=32, max_series_bins=24, cosine_t_max=2)

pytestmark = pytest.mark.slow


def _fit(cohort, storage, name, workers, trial=None, fail_once=None):
    from miracl_grid.trainables.config import TrialConfig
    from miracl_grid.trainables.train import build_trainer

    config = TrialConfig.from_dict({**TINY, "rho_pos": 0.4, "rho_neg": 0.4, "dropout": 0.0,
                                    "noisy_gating": False, **(trial or {})})
    loop_config = {"trial": config.to_flat_dict(), "cohort_dir": str(cohort), "threads": 1,
                   "fail_once": fail_once, "checkpoint_root": str(storage / name / "checkpoints")}
    build_trainer(loop_config, workers=workers, storage_path=str(storage), name=name, max_failures=1).fit()
    return _final_metrics(storage, name)


def _final_metrics(storage, name) -> dict:
    """The trial's last-epoch metrics, from its newest checkpoint's history (Ray Train V2's
    Result.metrics only carries metrics reported with a Ray Train checkpoint; ours are our own)."""
    from miracl_grid.trainables.checkpoints import CheckpointStore

    return CheckpointStore(str(storage / name / "checkpoints")).history()[-1]


def _state(storage, name, epoch):
    from miracl_grid.trainables.checkpoints import CheckpointStore
    from miracl_grid.trainables.loop import load_training_state

    store = CheckpointStore(str(storage / name / "checkpoints"))
    checkpoint = next(c for c in store.checkpoints() if c.epoch == epoch)
    return load_training_state(store.download(checkpoint, storage / f"{name}_epoch{epoch}"))


@pytest.mark.ci
def test_two_worker_ddp_matches_one_worker(ray_session, tiny_cohort, tmp_path):
    single = _fit(tiny_cohort, tmp_path, "one", workers=1)
    double = _fit(tiny_cohort, tmp_path, "two", workers=2)
    # corrected labels after the first correction epoch (end of warm-up epoch 1)
    corrected_single = _state(tmp_path, "one", 1).method["corrected"]
    corrected_double = _state(tmp_path, "two", 1).method["corrected"]
    assert corrected_single is not None
    hard_single, hard_double = corrected_single > 0.5, corrected_double > 0.5
    # DDP sums gradients in another order, so only float-level drift may remain. Z̃ is built
    # from within-instance *ranks*, so drift re-orders near-tied probabilities and can move a
    # pair across a GMM mean: measured 0.7 % of soft labels moved by > 0.01, hard labels < 0.1 %.
    hard_differing = (hard_single != hard_double).float().mean().item()
    soft_differing = ((corrected_single - corrected_double).abs() > 1e-2).float().mean().item()
    assert hard_differing <= 1e-3, hard_differing
    assert soft_differing <= 2e-2, soft_differing
    assert abs(single["test/mAP"] - double["test/mAP"]) < 5e-3


@pytest.mark.ci
def test_worker_killed_mid_trial_restarts_from_checkpoint(ray_session, tiny_cohort, tmp_path):
    trial = {"epochs": 3}
    reference = _fit(tiny_cohort, tmp_path, "reference", workers=2, trial=trial)
    marker = tmp_path / "killed.marker"
    killed = _fit(tiny_cohort, tmp_path, "killed", workers=2, trial=trial,
                  fail_once={"epoch": 3, "rank": 1, "marker": str(marker)})
    assert marker.exists(), "the failure hook did not fire"
    for key in ("test/mAP", "test/F1", "test/F1_class", "correction/accuracy_corrected"):
        assert killed[key] == reference[key], key


def _grid_arguments(cohort, storage, *extra, epochs=TINY["epochs"]):
    settings = [item for key, value in {**TINY, "epochs": epochs}.items() for item in ("--set", f"{key}={value}")]
    return ["--sweep", "lambda_cons", "--data", str(cohort), "--preset", "quick", "--seeds", "30",
            "--noise", "symmetric:0.2,0.2", "--arms", "miracl", "--set", "lambda_cons=0,0.1", *settings,
            "--storage", str(storage), *extra]


@pytest.mark.ci
def test_grid_two_trials_with_two_ddp_workers(ray_session, tiny_cohort, tmp_path, capsys):
    from miracl_grid.grid.run import main

    assert main(_grid_arguments(tiny_cohort, tmp_path, "--workers-per-trial", "2")) == 0
    experiment = tmp_path / "lambda_cons"
    printed = capsys.readouterr().out      # the paths the README promises, each printed
    for line in (f"experiment: {experiment}", f"results: {experiment / 'results.parquet'}",
                 f"report: {experiment / 'report.md'}", f"figures: {experiment / 'figures'}"):
        assert line in printed, (line, printed[-2000:])
    frame = pd.read_parquet(experiment / "results.parquet")
    assert len(frame) == 2 * TINY["epochs"]
    assert sorted(frame["config/lambda_cons"].unique()) == [0.0, 0.1]
    assert set(frame["status"]) == {"TERMINATED"}
    assert frame.groupby("trial_id")["epoch"].apply(sorted).tolist() == [[1, 2], [1, 2]]
    assert frame["is_last_epoch"].sum() == 2
    # realised noise within a binomial bound of the nominal 20 % (many pairs per trial)
    assert frame["noise/realised_rho_pos"].between(0.1, 0.3).all()
    assert frame["noise/realised_rho_neg"].between(0.15, 0.25).all()
    for column in ("provenance/code_version", "provenance/cohort_hash", "provenance/text_encoder",
                   "provenance/config_hash"):
        assert frame[column].astype(str).str.len().gt(0).all(), column
    assert frame.groupby("trial_id")["provenance/config_hash"].nunique().eq(1).all()
    assert frame["provenance/config_hash"].nunique() == 2     # one config field differs -> hash differs
    assert (experiment / "report.md").is_file()


def _epochs_done(trial_dir: Path) -> int:
    return max((int(path.parent.name.split("_")[1]) for path in trial_dir.glob("checkpoints/epoch_*/COMPLETE")),
               default=0)


def _snapshot(trial_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(trial_dir)): path.read_bytes() for path in sorted(trial_dir.rglob("*"))
            if path.is_file()}


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted((experiment / "trials").glob("*"))


@pytest.mark.ci
def test_driver_killed_mid_sweep_resumes_without_rerunning(ray_session, tiny_cohort, tmp_path):
    """The driver dies (SIGKILL) with one trial finished and one part-way; `--resume` continues
    the unfinished one from the newest checkpoint on storage (whatever Tune had saved) and
    leaves the finished one untouched. bench/soak_resume.py repeats this at random kill points."""
    from miracl_grid.grid.run import main

    epochs = 30   # tiny epochs take ~0.3 s: a long trial leaves a window to interrupt in
    arguments = _grid_arguments(tiny_cohort, tmp_path, "--max-concurrent", "1", "--no-report", epochs=epochs)
    experiment = tmp_path / "lambda_cons"
    environment = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONPATH": str(REPOSITORY)}
    driver = subprocess.Popen([sys.executable, str(REPOSITORY / "grid" / "run.py"), *arguments,
                               "--address", ray_session.get_runtime_context().gcs_address],
                              env=environment, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1500     # an upper bound only: a loaded machine is slow, not wrong
    try:
        # wait until one trial has finished and the other is part-way through
        while time.time() < deadline:
            done = sorted(_epochs_done(t) for t in _trial_dirs(experiment))
            if len(done) == 2 and done[1] == epochs and 1 <= done[0] <= 10:
                break
            assert driver.poll() is None, "driver exited before it could be interrupted"
            time.sleep(0.2)
        else:
            pytest.fail("the sweep did not reach the interruption point in time")
        time.sleep(1.5)  # Tune persists its experiment state (TUNE_GLOBAL_CHECKPOINT_S=1) and prunes go on
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    trials = _trial_dirs(experiment)
    assert min(_epochs_done(t) for t in trials) < epochs, "interrupted too late: both trials finished"
    finished = max(trials, key=_epochs_done)
    before = _snapshot(finished)

    assert main(arguments + ["--resume"]) == 0
    assert _snapshot(finished) == before, "the finished trial was rerun"
    runs = sorted((experiment / "tune").glob("run-*"))
    assert len(runs) == 2 and not (runs[-1] / finished.name).exists()   # the resuming run never scheduled it
    frame = pd.read_parquet(experiment / "results.parquet")
    assert frame.groupby("trial_id")["epoch"].apply(list).tolist() == [list(range(1, epochs + 1))] * 2
    assert set(frame["status"]) == {"TERMINATED"}


def _driver(ray_session, arguments):
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.Popen([sys.executable, str(REPOSITORY / "grid" / "run.py"), *arguments,
                             "--address", ray_session.get_runtime_context().gcs_address],
                            env=environment, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("stop_signal,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stop_cleanly_with_results_and_report(ray_session, tiny_cohort, tmp_path,
                                                                stop_signal, exit_code):
    from miracl_grid.grid.run import main

    epochs = 30
    arguments = _grid_arguments(tiny_cohort, tmp_path, "--max-concurrent", "1", epochs=epochs)
    experiment = tmp_path / "lambda_cons"
    driver = _driver(ray_session, arguments)
    deadline = time.time() + 1500     # an upper bound only: a loaded machine is slow, not wrong
    try:
        while time.time() < deadline:
            done = sorted(_epochs_done(t) for t in _trial_dirs(experiment))
            if len(done) == 2 and done[1] == epochs and done[0] >= 1:
                break
            assert driver.poll() is None, "driver exited before it could be interrupted"
            time.sleep(0.2)
        else:
            pytest.fail("the sweep did not reach the interruption point in time")
        driver.send_signal(stop_signal)
        _, error = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == exit_code, error[-3000:]
    assert "Traceback" not in error and "--resume" in error
    trials = pd.read_parquet(experiment / "trials.parquet")
    assert sorted(trials["status"]) == ["INCOMPLETE", "TERMINATED"]
    frame = pd.read_parquet(experiment / "results.parquet")
    assert frame.loc[frame["status"] == "TERMINATED", "epoch"].tolist() == list(range(1, epochs + 1))
    report = (experiment / "report.md").read_text()
    assert "1 expected cell(s) have no finished trial" in report
    assert not (experiment / "sweep.lock").exists()

    assert main(arguments + ["--resume"]) == 0
    frame = pd.read_parquet(experiment / "results.parquet")
    assert frame.groupby("trial_id")["epoch"].apply(list).tolist() == [list(range(1, epochs + 1))] * 2
    assert "All expected cells have a finished trial" in (experiment / "report.md").read_text()


def test_widened_sweep_runs_only_the_new_cells(ray_session, tiny_cohort, tmp_path):
    from miracl_grid.grid.run import main

    experiment = tmp_path / "lambda_cons"
    assert main(_grid_arguments(tiny_cohort, tmp_path)) == 0
    first = _trial_dirs(experiment)
    before = {t.name: _snapshot(t) for t in first}
    widened = _grid_arguments(tiny_cohort, tmp_path)
    widened[widened.index("--seeds") + 1] = "30,40"
    assert main(widened) == 0
    runs = sorted((experiment / "tune").glob("run-*"))
    scheduled = sorted(path.name for path in runs[-1].iterdir() if path.is_dir())
    assert len(scheduled) == 2 and all("_s40-" in name for name in scheduled)
    assert {t.name: _snapshot(t) for t in first} == before
    frame = pd.read_parquet(experiment / "results.parquet")
    assert frame["trial_id"].nunique() == 4 and len(frame) == 4 * TINY["epochs"]
    report = (experiment / "report.md").read_text()
    assert "All expected cells have a finished trial" in report and "4 in trials.parquet" in report


@pytest.mark.ci
def test_every_method_runs_through_the_ddp_grid(ray_session, tiny_cohort, tmp_path):
    """The `main` sweep's ten methods/backbones, two epochs each, each a 2-worker DDP trial."""
    from miracl_grid.grid.run import main
    from miracl_grid.grid.sweeps import COMPARISON_ARMS

    settings = [item for key, value in {**TINY, "warmup_epochs": 1}.items()
                for item in ("--set", f"{key}={value}")]
    arguments = ["--sweep", "main", "--data", str(tiny_cohort), "--preset", "quick", "--seeds", "30",
                 "--noise", "symmetric:0.4,0.4", *settings, "--workers-per-trial", "2",
                 "--storage", str(tmp_path), "--no-report"]
    assert main(arguments) == 0
    frame = pd.read_parquet(tmp_path / "main" / "results.parquet")
    last = frame[frame["is_last_epoch"]]
    assert len(last) == len(COMPARISON_ARMS) == 10
    assert set(last["config/variant"]) == {arm.label for arm in COMPARISON_ARMS}
    assert last["test/mAP"].between(0, 1).all() and np.isfinite(last["train/loss"]).all()
    assert last.loc[last["config/method"] == "miracl", "correction/active"].all()
    assert not last.loc[last["config/method"] != "miracl", "correction/active"].any()
