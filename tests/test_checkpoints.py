"""miracl_grid.trainables.checkpoints: what restore picks is never what retention deleted; torn and crafted
checkpoints; a full disk mid-publish."""
from __future__ import annotations

import errno
import json
import os
import pickle

import pyarrow.fs
import pytest
import torch

from miracl_grid.trainables.checkpoints import CheckpointStore, StorageFullError


def _folder(tmp_path, epoch):
    local = tmp_path / f"local{epoch}"
    local.mkdir()
    (local / "state.pt").write_bytes(b"x" * 10)
    (local / "history.json").write_text(json.dumps([{"epoch": e} for e in range(1, epoch + 1)]))
    return local


def _on_disk(root):
    return sorted(path.name for path in root.iterdir())


def test_latest_is_found_on_storage_and_retention_keeps_it(tmp_path):
    root = tmp_path / "store"
    store = CheckpointStore(str(root), keep=2)
    assert store.latest() is None and store.history() == []
    for epoch in range(1, 6):
        store.publish(_folder(tmp_path, epoch), epoch)
        assert store.latest().epoch == epoch                 # restore's pick exists after every prune
        assert len(_on_disk(root)) == min(epoch, 2)
    assert _on_disk(root) == ["epoch_000004", "epoch_000005"]
    assert [row["epoch"] for row in store.history()] == [1, 2, 3, 4, 5]


def test_a_checkpoint_torn_by_a_kill_is_ignored_then_cleaned(tmp_path):
    root = tmp_path / "store"
    store = CheckpointStore(str(root), keep=2)
    for epoch in (1, 2):
        store.publish(_folder(tmp_path, epoch), epoch)
    torn = root / "epoch_000003"
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"half")                 # killed before its COMPLETE marker
    assert store.latest().epoch == 2
    store.publish(_folder(tmp_path, 3), 3)                   # the resumed trial writes epoch 3 again
    assert (root / "epoch_000003" / "COMPLETE").is_file()
    assert store.latest().epoch == 3 and _on_disk(root) == ["epoch_000002", "epoch_000003"]


def test_republishing_a_complete_epoch_keeps_the_first(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    store.publish(_folder(tmp_path, 1), 1)
    before = (tmp_path / "store" / "epoch_000001" / "state.pt").read_bytes()
    second = tmp_path / "second"
    second.mkdir()
    (second / "state.pt").write_bytes(b"other")
    store.publish(second, 1)
    assert (tmp_path / "store" / "epoch_000001" / "state.pt").read_bytes() == before


class _FillsUp(pyarrow.fs.FileSystemHandler):
    """A local filesystem whose writes fail with ENOSPC once `room` bytes were written."""

    def __init__(self, room):
        self.local, self.room = pyarrow.fs.LocalFileSystem(), room

    def get_type_name(self):
        return "fills-up"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        handler = self

        class Full:
            def __init__(self):
                self.handle = open(path, "wb")

            def write(self, data):
                if handler.room < len(data):
                    raise OSError(errno.ENOSPC, "No space left on device")
                handler.room -= len(data)
                return self.handle.write(data)

            def close(self):
                self.handle.close()

            @property
            def closed(self):
                return self.handle.closed

            def flush(self):
                self.handle.flush()

        return pyarrow.PythonFile(Full(), mode="w")

    def open_append_stream(self, path, metadata):
        raise NotImplementedError


def test_a_full_disk_mid_publish_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    root = tmp_path / "store"
    CheckpointStore(str(root)).publish(_folder(tmp_path, 1), 1)
    full = pyarrow.fs.PyFileSystem(_FillsUp(room=5))
    monkeypatch.setattr("miracl_grid.trainables.checkpoints.filesystem_path", lambda uri: (full, str(root.resolve())))
    store = CheckpointStore(str(root))
    with pytest.raises(StorageFullError, match="storage full while writing checkpoint .*epoch_000002"):
        store.publish(_folder(tmp_path, 2), 2)
    assert _on_disk(root) == ["epoch_000001"] and store.latest().epoch == 1


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_state_file_is_refused_without_running_it(tmp_path):
    from miracl_grid.trainables.loop import load_training_state

    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    with open(folder / "state.pt", "wb") as handle:
        pickle.dump({"epoch": 1, "model": payload}, handle, protocol=2)
    (folder / "history.json").write_text("[]")
    with pytest.raises(ValueError, match="state.pt: not a loadable training checkpoint"):
        load_training_state(folder)
    assert not marker.exists()


def test_a_genuine_state_round_trips_with_weights_only(tmp_path):
    from miracl_grid.trainables.loop import TrainingState, load_training_state, save_training_state

    state = TrainingState(epoch=2, model={"w": torch.ones(2)}, optimizer={"state": {}, "param_groups": [{"lr": 1e-3}]},
                          scheduler={"last_epoch": 2, "_last_lr": [1e-3]}, method={"corrected": None},
                          statistics={"history": torch.zeros(3, dtype=torch.int64), "epochs_recorded": 2},
                          history=[{"epoch": 1, "test/mAP": 0.25, "correction/active": False}])
    save_training_state(state, tmp_path)
    loaded = load_training_state(tmp_path)
    assert loaded.epoch == 2 and torch.equal(loaded.model["w"], torch.ones(2))
    assert loaded.history == state.history and loaded.method == {"corrected": None}
