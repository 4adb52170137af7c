"""miracl_grid.grid.folder + miracl_grid.grid.results: rows from checkpoint histories, expected trials, identity by config
hash, one writer, atomic writes (no Ray, no training: folders built through miracl_grid.grid.folder)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from miracl_grid.grid.folder import FolderError, SweepFolder
from miracl_grid.grid.results import RESULTS_FILE, collect_sweep, write_frame
from tests.sweep_folder import publish_epochs, register_trial
from miracl_grid.trainables.checkpoints import storage_full


def test_rows_are_each_epoch_once_from_the_newest_checkpoint(tmp_path):
    folder = SweepFolder(str(tmp_path / "sweep"))
    a = register_trial(folder, "a", epochs=4, lambda_cons=0.05)
    b = register_trial(folder, "b", epochs=4, lambda_cons=0.1)
    publish_epochs(folder, a, [1, 2, 3, 4], tmp_path)
    publish_epochs(folder, b, [1], tmp_path)
    frame, trials = collect_sweep(folder)
    rows = frame[frame.trial_id == a]
    assert rows["epoch"].tolist() == [1, 2, 3, 4]
    assert rows["test/mAP"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert rows["is_last_epoch"].tolist() == [False, False, False, True]
    assert set(rows["status"]) == {"TERMINATED"}
    assert frame.loc[frame.trial_id == b, "status"].tolist() == ["INCOMPLETE"]
    assert (rows["config/lambda_cons"] == 0.05).all() and (frame["provenance/cohort_hash"] == "c0").all()
    assert dict(zip(trials["trial_id"], trials["epochs_done"])) == {a: 4, b: 1}


def test_a_trial_without_checkpoints_stays_expected(tmp_path):
    """A registered trial whose checkpoints are gone has no rows but is still in trials.parquet
    (the report then lists it missing instead of calling the sweep complete)."""
    folder = SweepFolder(str(tmp_path / "sweep"))
    a = register_trial(folder, "a", epochs=2)
    b = register_trial(folder, "b", epochs=2, seed=40)
    publish_epochs(folder, a, [1, 2], tmp_path)
    publish_epochs(folder, b, [1, 2], tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "sweep" / "trials" / b / "checkpoints")
    frame, trials = collect_sweep(folder)
    assert set(frame["trial_id"]) == {a}
    assert dict(zip(trials["trial_id"], trials["status"])) == {a: "TERMINATED", b: "INCOMPLETE"}


def test_a_changed_value_is_a_new_trial_beside_the_old_one(tmp_path):
    folder = SweepFolder(str(tmp_path / "sweep"))
    old = register_trial(folder, "miracl_s30", epochs=2, learning_rate=1e-3)
    publish_epochs(folder, old, [1, 2], tmp_path)
    before = (tmp_path / "sweep" / "trials" / old / "checkpoints" / "epoch_000002" / "history.json").read_bytes()
    new = register_trial(folder, "miracl_s30", epochs=2, learning_rate=2e-3)
    assert new != old and register_trial(folder, "miracl_s30", epochs=2, learning_rate=1e-3) == old
    frame, trials = collect_sweep(folder)
    assert set(trials["trial_id"]) == {old, new}
    assert dict(zip(trials["trial_id"], trials["config/learning_rate"])) == {old: 1e-3, new: 2e-3}
    assert (tmp_path / "sweep" / "trials" / old / "checkpoints" / "epoch_000002" / "history.json").read_bytes() == before


def test_a_folder_holds_one_sweep_on_one_cohort(tmp_path):
    folder = SweepFolder(str(tmp_path / "sweep"))
    folder.claim(sweep="lambda_cons", cohort_hash="c0")
    folder.claim(sweep="lambda_cons", cohort_hash="c0")
    with pytest.raises(FolderError, match="cohort_hash 'c0', this run has 'c1'"):
        folder.claim(sweep="lambda_cons", cohort_hash="c1")
    with pytest.raises(FolderError, match="sweep 'lambda_cons', this run has 'alpha'"):
        folder.claim(sweep="alpha", cohort_hash="c0")


def test_an_edited_trial_file_is_refused(tmp_path):
    folder = SweepFolder(str(tmp_path / "sweep"))
    a = register_trial(folder, "a", epochs=2)
    path = tmp_path / "sweep" / "trials" / a / "trial.json"
    record = json.loads(path.read_text())
    record["config"]["epochs"] = 3
    path.write_text(json.dumps(record))
    with pytest.raises(FolderError, match="another config than its hash"):
        register_trial(folder, "a", epochs=2)


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    folder = SweepFolder(str(tmp_path / "sweep"))
    with folder.lock():
        with pytest.raises(FolderError, match=f"in use by another run \\(pid {os.getpid()}"):
            with folder.lock():
                pass
    assert not (tmp_path / "sweep" / "sweep.lock").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (tmp_path / "sweep" / "sweep.lock").write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with folder.lock():                      # its process has exited: stale, taken over
        assert json.loads((tmp_path / "sweep" / "sweep.lock").read_text())["pid"] == os.getpid()
    (tmp_path / "sweep" / "sweep.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(FolderError, match="pid 1 on host elsewhere"):
        with folder.lock():
            pass


class _FullDisk:
    """Wraps a pyarrow filesystem; writes raise ENOSPC after `room` bytes (a disk filling up)."""

    def __init__(self, filesystem, room: int):
        self.filesystem, self.room = filesystem, room

    def open_output_stream(self, path):
        stream = self.filesystem.open_output_stream(path)
        wrapper = self

        class Stream:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def write(self, data):
                stream.write(data[:wrapper.room])
                raise OSError(errno.ENOSPC, "No space left on device")
        return Stream()

    def __getattr__(self, name):
        return getattr(self.filesystem, name)


def test_results_are_written_atomically_and_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    folder = SweepFolder(str(tmp_path / "sweep"))
    a = register_trial(folder, "a", epochs=2)
    publish_epochs(folder, a, [1, 2], tmp_path)
    frame, _ = collect_sweep(folder)
    write_frame(frame, folder, RESULTS_FILE)
    before = (tmp_path / "sweep" / RESULTS_FILE).read_bytes()
    from miracl_grid.grid.folder import write_atomically as real
    monkeypatch.setattr("miracl_grid.grid.results.write_atomically",
                        lambda filesystem, path, payload: real(_FullDisk(filesystem, 100), path, payload))
    with pytest.raises(OSError) as raised:
        write_frame(pd.concat([frame, frame]), folder, RESULTS_FILE)
    assert storage_full(raised.value)
    assert (tmp_path / "sweep" / RESULTS_FILE).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [RESULTS_FILE, "trials"]   # no temporary left


def test_the_report_lists_a_finished_trial_whose_rows_were_lost(tmp_path):
    """Expected cells come from the registered trials, not from the rows that exist."""
    import shutil

    from miracl_grid.analysis.collect import IncompleteSweepError
    from miracl_grid.analysis.report import write_report
    from miracl_grid.grid.results import TRIALS_FILE

    folder = SweepFolder(str(tmp_path / "sweep"))
    kept = register_trial(folder, "miracl_s30", epochs=2, seed=30)
    lost = register_trial(folder, "miracl_s40", epochs=2, seed=40)
    for identity in (kept, lost):
        publish_epochs(folder, identity, [1, 2], tmp_path)
    shutil.rmtree(tmp_path / "sweep" / "trials" / lost / "checkpoints")
    frame, trials = collect_sweep(folder)
    write_frame(frame, folder, RESULTS_FILE)
    write_frame(trials, folder, TRIALS_FILE)
    with pytest.raises(IncompleteSweepError, match="config/seed=40"):
        write_report(tmp_path / "sweep")
    report = write_report(tmp_path / "sweep", allow_partial=True).read_text()
    assert "1 expected cell(s) have no finished trial" in report and "config/seed=40" in report
    assert "All expected cells" not in report


def test_data_source_names_the_synthetic_size_or_the_extract():
    from miracl_grid.grid.provenance import data_source, sweep_provenance

    synthetic = {"num_patients": 350, "num_stays": 606,
                 "source": {"format": "mimic3-benchmarks-phenotyping", "synthetic": {"num_patients": 350}}}
    assert data_source(synthetic) == "synthetic cohort (350 patients, 606 stays)"
    extract = {"num_patients": 33798, "num_stays": 41904, "source": {"format": "mimic3-benchmarks-phenotyping"}}
    assert data_source(extract) == "mimic3-benchmarks-phenotyping extract (33798 patients, 41904 stays)"
    columns = sweep_provenance(synthetic, preset="quick")
    assert columns["provenance/data_source"] == "synthetic cohort (350 patients, 606 stays)"
    assert columns["provenance/preset"] == "quick"
