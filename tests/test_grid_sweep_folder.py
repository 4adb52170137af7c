"""grid/run.py over its sweep folder, without Ray: which cells a command runs, what it keeps,
and the faults that must end in a clean `error:` line.

`_fake_training` stands in for `miracl_grid.grid.run._run_trials` (the Ray part): it records the cells it
was handed and publishes their checkpoints as a finished trial would, so the selection and
bookkeeping around it run for real. The real thing is in tests/test_ray_e2e.py (slow).
"""
from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pandas as pd
import pytest

from miracl_grid.grid.folder import SweepFolder
from tests.sweep_folder import publish_epochs

TINY = dict(epochs=2, warmup_epochs=1, hidden_size=32, fusion_layers=1, num_experts=4, top_k_experts=2)


def _arguments(cohort, storage, *extra):
    settings = [item for key, value in TINY.items() for item in ("--set", f"{key}={value}")]
    return ["--sweep", "lambda_cons", "--data", str(cohort), "--preset", "quick", "--noise", "symmetric:0.2,0.2",
            "--arms", "miracl", "--set", "lambda_cons=0,0.1", *settings, "--storage", str(storage), "--no-report", *extra]


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    class Runs(list):
        max_failures = None

    runs = Runs()

    def train(args, folder, to_run, cohort_dir, stop_requests):
        runs.append(sorted(identity for identity, _ in to_run))
        runs.max_failures = args.max_failures
        for identity, trial in to_run:
            publish_epochs(folder, identity, range(1, int(trial.config["epochs"]) + 1), tmp_path / f"run{len(runs)}")
        return {}

    monkeypatch.setattr("miracl_grid.grid.run._run_trials", train)
    return runs


def _snapshot(folder: Path, identities) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for identity in identities
            for path in sorted((folder / "trials" / identity).rglob("*")) if path.is_file()}


def test_a_widened_or_changed_command_runs_only_its_new_cells(tiny_cohort, tmp_path, fake_training):
    from miracl_grid.grid.run import main

    sweep = tmp_path / "lambda_cons"
    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30")) == 0
    first = fake_training[-1]
    assert len(first) == 2 and all("_s30-" in identity for identity in first)
    before = _snapshot(sweep, first)

    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30,40")) == 0        # one more seed
    assert len(fake_training[-1]) == 2 and all("_s40-" in identity for identity in fake_training[-1])
    assert _snapshot(sweep, first) == before                                        # kept untouched

    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30,40", "--resume")) == 0
    assert len(fake_training) == 2                                                 # nothing left to run

    # a changed value of finished cells: new cells beside them, never an overwrite
    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30", "--set", "learning_rate=0.002",
                           "--resume", "--max-failures", "0")) == 0
    changed = fake_training[-1]
    assert fake_training.max_failures == 0                                          # the new command's setting
    assert len(changed) == 2 and not set(changed) & set(first)
    assert _snapshot(sweep, first) == before
    frame = pd.read_parquet(sweep / "results.parquet")
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert frame["trial_id"].nunique() == len(trials) == 6                         # the union
    assert sorted(frame.groupby("trial_id")["epoch"].apply(list).tolist()) == [[1, 2]] * 6
    assert sorted(trials["config/learning_rate"].tolist()) == [0.001] * 4 + [0.002] * 2


def test_resume_without_a_sweep_is_a_clean_error(tmp_path, capsys):
    from miracl_grid.grid.run import main

    assert main(["--sweep", "lambda_cons", "--storage", str(tmp_path), "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --resume: no sweep to resume in") and str(tmp_path / "lambda_cons") in error
    assert not (tmp_path / "lambda_cons").exists()


def test_a_second_writer_is_refused(tiny_cohort, tmp_path, capsys, fake_training):
    from miracl_grid.grid.run import main

    sweep = tmp_path / "lambda_cons"
    sweep.mkdir()
    (sweep / "sweep.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30")) == 2
    assert f"is in use by another run (pid {os.getppid()}" in capsys.readouterr().err
    assert fake_training == [] and not (sweep / "trials").exists()


def test_another_cohort_into_the_same_folder_is_refused(tiny_cohort, tmp_path, capsys, fake_training):
    from miracl_grid.grid.run import main

    SweepFolder(str(tmp_path / "lambda_cons")).claim(sweep="lambda_cons", cohort_hash="another")
    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30")) == 2
    assert "holds cohort_hash 'another'" in capsys.readouterr().err and fake_training == []


def test_a_full_disk_says_so_and_keeps_the_earlier_results(tiny_cohort, tmp_path, capsys, fake_training,
                                                            monkeypatch):
    from miracl_grid.grid.run import main

    sweep = tmp_path / "lambda_cons"
    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30")) == 0
    before = (sweep / "results.parquet").read_bytes()

    def full(filesystem, path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr("miracl_grid.grid.results.write_atomically", full)
    capsys.readouterr()
    assert main(_arguments(tiny_cohort, tmp_path, "--seeds", "30,40")) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: storage full:") and "--resume" in error and "Traceback" not in error
    assert (sweep / "results.parquet").read_bytes() == before
    assert not (sweep / "sweep.lock").exists()
