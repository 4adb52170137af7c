"""grid.results: tidy rows from a Tune experiment folder, resumed trials, remote storage copy."""
import json

import pandas as pd

from grid.results import collect_experiment, fetch_result_files
from trainables.config import TrialConfig


def _write_trial(root, name, epochs, lines, history=None):
    config = TrialConfig(epochs=epochs, lambda_cons=0.05).to_flat_dict()
    folder = root / name
    folder.mkdir(parents=True)
    rows = [{"epoch": e, "test/mAP": value, "config": {"trial": {"name": name, "config": config}}}
            for e, value in lines]
    (folder / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if history is not None:
        checkpoint = root / "train_runs" / name / "checkpoint_000"
        checkpoint.mkdir(parents=True)
        (checkpoint / "history.json").write_text(json.dumps(history))


def test_rows_dedupe_resumed_epochs_and_fill_lost_ones_from_history(tmp_path):
    # epoch 2 reported twice (later wins); epoch 3 checkpointed but its report was lost
    _write_trial(tmp_path, "a", 4, [(1, 0.1), (2, 0.2), (2, 0.25), (4, 0.4)],
                 history=[{"epoch": 1, "test/mAP": 0.1}, {"epoch": 2, "test/mAP": 0.25},
                          {"epoch": 3, "test/mAP": 0.3}])
    _write_trial(tmp_path, "b", 4, [(1, 0.5)])
    frame = collect_experiment(tmp_path, sweep="lambda_cons", provenance={"provenance/cohort_hash": "h"})
    a = frame[frame.trial_id == "a"]
    assert a["epoch"].tolist() == [1, 2, 3, 4]
    assert a["test/mAP"].tolist() == [0.1, 0.25, 0.3, 0.4]
    assert a["is_last_epoch"].tolist() == [False, False, False, True]
    assert set(a["status"]) == {"TERMINATED"}
    b = frame[frame.trial_id == "b"]
    assert b["status"].tolist() == ["INCOMPLETE"]            # 1 of 4 epochs
    assert (frame["config/lambda_cons"] == 0.05).all() and (frame["provenance/cohort_hash"] == "h").all()


def test_fetch_copies_only_result_and_history_files(tmp_path):
    remote = tmp_path / "remote"
    _write_trial(remote, "a", 2, [(1, 0.1), (2, 0.2)], history=[{"epoch": 1, "test/mAP": 0.1}])
    (remote / "a" / "checkpoint_000").mkdir()
    (remote / "a" / "checkpoint_000" / "state.pt").write_bytes(b"x" * 100)
    local = fetch_result_files(f"file://{remote}", tmp_path / "local")
    copied = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert copied == ["a/result.json", "train_runs/a/checkpoint_000/history.json"]
    frame = collect_experiment(local, sweep="s")
    assert frame["epoch"].tolist() == [1, 2]


def test_code_version_prefers_the_declared_version(monkeypatch):
    from grid.provenance import code_version

    monkeypatch.setenv("MIRACL_CODE_VERSION", "abc123+dirty")
    assert code_version() == ("abc123", True)
    monkeypatch.setenv("MIRACL_CODE_VERSION", "abc123")
    assert code_version() == ("abc123", False)
    monkeypatch.delenv("MIRACL_CODE_VERSION")
    commit, _ = code_version()
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)   # this checkout's git HEAD


def test_data_source_names_the_synthetic_size_or_the_extract():
    from grid.provenance import data_source, sweep_provenance

    synthetic = {"num_patients": 350, "num_stays": 606,
                 "source": {"format": "mimic3-benchmarks-phenotyping", "synthetic": {"num_patients": 350}}}
    assert data_source(synthetic) == "synthetic cohort (350 patients, 606 stays)"
    extract = {"num_patients": 33798, "num_stays": 41904, "source": {"format": "mimic3-benchmarks-phenotyping"}}
    assert data_source(extract) == "mimic3-benchmarks-phenotyping extract (33798 patients, 41904 stays)"
    columns = sweep_provenance(synthetic, preset="quick")
    assert columns["provenance/data_source"] == "synthetic cohort (350 patients, 606 stays)"
    assert columns["provenance/preset"] == "quick"
