"""A trial's own checkpoint folder: publish, retain, find the latest (no Ray, no torch).

Why the trial owns its checkpoints instead of handing them to Ray Tune / Ray Train: Tune
snapshots its experiment state (which checkpoint each trial resumes from) every few seconds,
while checkpoints are written and pruned every epoch. A driver that dies between a prune and
the next snapshot leaves a saved state pointing at a checkpoint that no longer exists, and
that trial can never resume ("Could not recover from checkpoint as it does not exist on
storage anymore"). Here nothing records *which* checkpoint is latest: it is found on storage,
so retention and restore cannot disagree.

Layout under ``root`` (a local path or a pyarrow URI such as ``s3://bucket/...``)::

    epoch_000004/  state.pt  history.json  COMPLETE
    epoch_000005/  state.pt  history.json  COMPLETE

A checkpoint counts only once its ``COMPLETE`` marker exists (written after every other file),
so a writer killed half-way leaves an ignored folder, never a torn checkpoint. After each
publish the store keeps the `keep` newest complete checkpoints and removes older ones (and
incomplete leftovers older than the newest complete one): what restore picks — the newest
complete checkpoint — is never what retention deletes.
"""
from __future__ import annotations

import errno
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs

COMPLETE_MARKER = "COMPLETE"
HISTORY_FILE = "history.json"      # miracl_grid.trainables.loop writes it into every checkpoint
DEFAULT_KEEP = 2
_FOLDER = re.compile(r"^epoch_(\d{6})$")


class StorageFullError(OSError):
    """The storage ran out of space while writing; earlier checkpoints/results are intact."""


def storage_full(error: BaseException) -> bool:
    """True for an ENOSPC/EDQUOT error (local disks; pyarrow raises OSError with the errno text)."""
    if isinstance(error, StorageFullError):
        return True
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, OSError) and "No space left on device" in str(error)


def filesystem_path(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())


@dataclass(frozen=True)
class StoredCheckpoint:
    epoch: int
    path: str          # inside the store's filesystem


class CheckpointStore:
    """Checkpoints of one trial under `root` (module docstring)."""

    def __init__(self, root: str, *, keep: int = DEFAULT_KEEP):
        if keep < 1:
            raise ValueError(f"CheckpointStore keep = {keep}: expected >= 1")
        self.root_uri = str(root)
        self.filesystem, self.root = filesystem_path(self.root_uri)
        self.keep = keep

    # -- reading ------------------------------------------------------------------------
    def _folders(self) -> list[tuple[int, str, bool]]:
        """(epoch, path, complete) of every epoch folder, oldest first."""
        info = self.filesystem.get_file_info(self.root)
        if info.type != pyarrow.fs.FileType.Directory:
            return []
        entries = self.filesystem.get_file_info(pyarrow.fs.FileSelector(self.root, recursive=False))
        folders = []
        for entry in entries:
            match = _FOLDER.match(entry.base_name)
            if entry.type != pyarrow.fs.FileType.Directory or not match:
                continue
            marker = self.filesystem.get_file_info(f"{entry.path}/{COMPLETE_MARKER}")
            folders.append((int(match.group(1)), entry.path, marker.type == pyarrow.fs.FileType.File))
        return sorted(folders)

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Complete checkpoints, oldest first."""
        return [StoredCheckpoint(epoch, path) for epoch, path, complete in self._folders() if complete]

    def latest(self) -> StoredCheckpoint | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def read_text(self, checkpoint: StoredCheckpoint, name: str) -> str:
        with self.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as stream:
            return stream.read().decode()

    def history(self) -> list[dict]:
        """Per-epoch metrics of the newest complete checkpoint (every epoch so far); [] if none."""
        latest = self.latest()
        if latest is None:
            return []
        text = self.read_text(latest, HISTORY_FILE)
        try:
            history = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{latest.path}/{HISTORY_FILE}: not JSON ({error.msg})") from None
        if not isinstance(history, list) or not all(isinstance(row, dict) and "epoch" in row for row in history):
            raise ValueError(f"{latest.path}/{HISTORY_FILE}: expected a list of per-epoch objects with 'epoch'")
        return history

    def download(self, checkpoint: StoredCheckpoint, local_dir: str | Path) -> Path:
        """Copy one checkpoint's files into `local_dir` (created); returns it."""
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(checkpoint.path, str(local_dir.resolve()), source_filesystem=self.filesystem,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return local_dir

    # -- writing ------------------------------------------------------------------------
    def publish(self, local_folder: str | Path, epoch: int) -> StoredCheckpoint:
        """Copy `local_folder` in as epoch `epoch`'s checkpoint, mark it complete, apply retention.

        An epoch that is already complete is kept as it is (a resumed trial recomputing an epoch
        produces the same state). Raises `StorageFullError` when the storage is full; the partial
        folder is removed and earlier checkpoints stay intact.
        """
        target = f"{self.root}/epoch_{int(epoch):06d}"
        if self.filesystem.get_file_info(f"{target}/{COMPLETE_MARKER}").type == pyarrow.fs.FileType.File:
            return StoredCheckpoint(int(epoch), target)
        try:
            self.filesystem.create_dir(target, recursive=True)
            pyarrow.fs.copy_files(str(Path(local_folder).resolve()), target,
                                  source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=self.filesystem)
            with self.filesystem.open_output_stream(f"{target}/{COMPLETE_MARKER}") as stream:
                stream.write(b"ok\n")
        except OSError as error:
            self._remove(target)
            if storage_full(error):
                raise StorageFullError(errno.ENOSPC, f"storage full while writing checkpoint {target} "
                                       f"(earlier checkpoints kept): {error}") from error
            raise
        self._prune()
        return StoredCheckpoint(int(epoch), target)

    def _prune(self) -> None:
        folders = self._folders()
        complete = [path for _, path, done in folders if done]
        if not complete:
            return
        newest_epoch = max(epoch for epoch, _, done in folders if done)
        kept = set(complete[-self.keep:])
        for epoch, path, done in folders:
            if path in kept or (not done and epoch > newest_epoch):
                continue             # an incomplete newer folder may be a writer still at work
            self._remove(path)

    def _remove(self, path: str) -> None:
        try:
            self.filesystem.delete_dir(path)
        except (OSError, FileNotFoundError):
            pass

