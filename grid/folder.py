"""The sweep folder `<storage>/<name>`: trials keyed by config hash, one writer at a time (no Ray).

Layout (a local path or any pyarrow URI; README "Failures and resuming")::

    <name>/
      sweep.json            the sweep's name and cohort hash (one sweep on one cohort per folder)
      sweep.lock            pid, host and start time of the run writing here
      trials/<trial_id>/    trial_id = <readable trial name>-<config hash>
          trial.json        name, sweep, flat TrialConfig, config hash, provenance (written once)
          checkpoints/      the trial's `miracl_grid.trainables.checkpoints.CheckpointStore`
          failed.json       why the trial's last run failed after its retries (removed on rerun)
          artifacts/        selection artifacts (local storage)
      tune/<run>/           Ray Tune's own folder of each run (logs, error.txt); never read back
      train_runs/<trial_id> Ray Train's run folder of a worker-group trial (logs); never read back
      results.parquet       one row per trial × epoch, trials.parquet one row per expected trial

Trial identity is the config hash: a run registers every cell of its expansion (its
`trial.json`), runs only cells without a finished checkpoint, and leaves every other trial
untouched — so a widened grid runs only its new cells, and a changed value (another
`learning_rate`) is another hash, hence a new trial beside the old one, never an overwrite.
The expected cells of the folder are its `trial.json` files, not the rows that happen to exist.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs

from miracl_grid.trainables.checkpoints import CheckpointStore, filesystem_path
from miracl_grid.trainables.config import ConfigError, TrialConfig

SWEEP_FILE = "sweep.json"
LOCK_FILE = "sweep.lock"
TRIALS_FOLDER = "trials"
TRIAL_FILE = "trial.json"
FAILED_FILE = "failed.json"
CHECKPOINTS_FOLDER = "checkpoints"
ARTIFACTS_FOLDER = "artifacts"
TUNE_FOLDER = "tune"
TRAIN_RUNS_FOLDER = "train_runs"


class FolderError(ConfigError):
    """A sweep folder that this run may not write to or cannot read; the message says why."""


def trial_id(name: str, config_hash: str) -> str:
    """'miracl_sym20-20_lam0.1_s30' + hash -> 'miracl_sym20-20_lam0.1_s30-3f2a9c01d4e5'."""
    return f"{name}-{config_hash}"


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


class SweepFolder:
    """One sweep folder (module docstring); `uri` is a local path or a pyarrow URI."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        self.filesystem, self.path = filesystem_path(self.uri)

    # -- paths ---------------------------------------------------------------------------
    def child(self, *parts: str) -> str:
        """URI (or local path) of a file or folder inside the sweep folder."""
        return "/".join([self.uri, *parts])

    def trial_dir(self, identity: str) -> str:
        return self.child(TRIALS_FOLDER, identity)

    def checkpoint_store(self, identity: str) -> CheckpointStore:
        return CheckpointStore(self.child(TRIALS_FOLDER, identity, CHECKPOINTS_FOLDER))

    def local_dir(self) -> Path | None:
        return Path(self.path) if _is_local(self.uri) else None

    # -- small files ---------------------------------------------------------------------
    def _file(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def exists(self, *parts: str) -> bool:
        return self.filesystem.get_file_info(self._file(*parts)).type != pyarrow.fs.FileType.NotFound

    def read_json(self, *parts: str) -> Any:
        path = self._file(*parts)
        with self.filesystem.open_input_stream(path) as stream:
            text = stream.read().decode()
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise FolderError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None

    def write_json(self, value: Any, *parts: str) -> None:
        """Write atomically (temporary file, then rename) so a reader never sees half a file."""
        write_atomically(self.filesystem, self._file(*parts), json.dumps(value, indent=1, sort_keys=True).encode())

    def delete(self, *parts: str) -> None:
        if self.exists(*parts):
            self.filesystem.delete_file(self._file(*parts))

    # -- the sweep and its trials ----------------------------------------------------------
    def holds_sweep(self) -> bool:
        return self.exists(SWEEP_FILE)

    def claim(self, *, sweep: str, cohort_hash: str) -> None:
        """Record (or check) which sweep on which cohort this folder holds."""
        record = {"sweep": sweep, "cohort_hash": cohort_hash}
        if not self.holds_sweep():
            self.filesystem.create_dir(self.path, recursive=True)
            self.write_json(record, SWEEP_FILE)
            return
        found = self.read_json(SWEEP_FILE)
        for key, value in record.items():
            if found.get(key) != value:
                raise FolderError(f"{self.uri} holds {key} {found.get(key)!r}, this run has {value!r}; "
                                  "pass another --name (or --storage) for a separate sweep folder")

    def register(self, name: str, sweep: str, config: dict, provenance: dict) -> str:
        """Write `trial.json` of a cell unless it exists (then check it is the same config);
        returns the trial id."""
        digest = TrialConfig.from_dict(config).content_hash()
        identity = trial_id(name, digest)
        record = {"name": name, "sweep": sweep, "config": config, "config_hash": digest,
                  "provenance": provenance}
        if self.exists(TRIALS_FOLDER, identity, TRIAL_FILE):
            found = self.read_json(TRIALS_FOLDER, identity, TRIAL_FILE)
            if TrialConfig.from_dict(found["config"]).content_hash() != digest:
                raise FolderError(f"{self.trial_dir(identity)}/{TRIAL_FILE}: holds another config than its "
                                  f"hash {digest} (edited by hand?); move that trial folder away")
            return identity
        self.filesystem.create_dir(self._file(TRIALS_FOLDER, identity), recursive=True)
        self.write_json(record, TRIALS_FOLDER, identity, TRIAL_FILE)
        return identity

    def trial_records(self) -> list[dict]:
        """Every registered trial's `trial.json` plus its ``id``, sorted by id."""
        root = self._file(TRIALS_FOLDER)
        if self.filesystem.get_file_info(root).type != pyarrow.fs.FileType.Directory:
            return []
        records = []
        for entry in self.filesystem.get_file_info(pyarrow.fs.FileSelector(root)):
            if entry.type != pyarrow.fs.FileType.Directory:
                continue
            if not self.exists(TRIALS_FOLDER, entry.base_name, TRIAL_FILE):
                raise FolderError(f"{entry.path}: trial folder without {TRIAL_FILE} (its cell is unknown); "
                                  "restore the file or move the folder away")
            record = self.read_json(TRIALS_FOLDER, entry.base_name, TRIAL_FILE)
            for key in ("name", "sweep", "config", "config_hash"):
                if key not in record:
                    raise FolderError(f"{entry.path}/{TRIAL_FILE}: field '{key}' missing")
            record["id"] = entry.base_name
            records.append(record)
        return sorted(records, key=lambda record: record["id"])

    def failure(self, identity: str) -> str | None:
        """The recorded failure message of a trial's last run, None when it did not fail."""
        if not self.exists(TRIALS_FOLDER, identity, FAILED_FILE):
            return None
        return str(self.read_json(TRIALS_FOLDER, identity, FAILED_FILE).get("error", "failed"))

    def record_failure(self, identity: str, message: str | None) -> None:
        if message is None:
            self.delete(TRIALS_FOLDER, identity, FAILED_FILE)
        else:
            self.write_json({"error": message}, TRIALS_FOLDER, identity, FAILED_FILE)

    # -- one writer at a time ---------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `sweep.lock` (pid, host, time) while this run writes; refuse a live one.

        A lock left by a process that no longer runs on this host is stale and taken over. A
        lock from another host cannot be checked: the error says which host and pid hold it,
        and to delete the file once that run is known to be gone. On object stores (s3://)
        the lock is written but cannot be created atomically (best effort).
        """
        self.filesystem.create_dir(self.path, recursive=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        path = self._file(LOCK_FILE)
        for _ in range(2):
            try:
                _create_exclusive(self.filesystem, path, json.dumps(mine).encode())
                break
            except FileExistsError:
                holder = self._lock_holder()
                if holder is not None and _alive_here(holder):
                    raise FolderError(
                        f"{self.uri} is in use by another run (pid {holder.get('pid')} on host "
                        f"{holder.get('host')}, {LOCK_FILE}); wait for it, or delete {path} if that "
                        "run is gone") from None
                self.filesystem.delete_file(path)         # stale: its process is gone
        else:
            raise FolderError(f"{path}: could not take the lock (another run took it meanwhile)")
        try:
            yield
        finally:
            if (self._lock_holder() or {}).get("pid") == mine["pid"]:
                self.filesystem.delete_file(path)

    def _lock_holder(self) -> dict | None:
        try:
            with self.filesystem.open_input_stream(self._file(LOCK_FILE)) as stream:
                return json.loads(stream.read().decode())
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None


def _alive_here(holder: dict) -> bool:
    """True unless the holder ran on this host and its pid is gone (another host: assume alive)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _create_exclusive(filesystem: pyarrow.fs.FileSystem, path: str, payload: bytes) -> None:
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        return
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        raise FileExistsError(path)
    with filesystem.open_output_stream(path) as stream:
        stream.write(payload)


def write_atomically(filesystem: pyarrow.fs.FileSystem, path: str, payload: bytes) -> None:
    """Write `payload` to a temporary sibling, then rename it over `path`: a reader sees the old
    file or the new one, and a full disk leaves the old one intact (the temporary is removed)."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with filesystem.open_output_stream(temporary) as stream:
            stream.write(payload)
        filesystem.move(temporary, path)
    except BaseException:
        try:
            filesystem.delete_file(temporary)
        except (OSError, FileNotFoundError):
            pass
        raise
