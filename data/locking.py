"""One writer per directory: `exclusive_writer(directory)` refuses a second writer instead of interleaving.

The lock is the file ``directory/.writer.lock``, created with ``O_CREAT | O_EXCL`` (atomic, also on
NFS v3+) and holding ``{"pid", "host", "process_start", "since"}`` of its owner. Another writer that
finds it gets a `CohortError` naming the lock file, the owner's pid and host, and since when.

Stale locks: a lock of THIS host whose pid no longer runs (or runs a different process: the
``process_start`` tick of ``/proc/PID/stat`` differs, i.e. the pid was reused) is removed with a
warning and taken over. The take-over runs under an ``flock`` on ``.writer.lock.guard`` so two
processes that find the same stale lock cannot both take it. A lock of ANOTHER host cannot be
checked from here: the error says to remove the file by hand when that process is gone.

Re-entrant within one process (prepare -> materialise take the same lock): nested use only
counts, the outermost exit removes the file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from miracl_grid.data.errors import CohortError

logger = logging.getLogger(__name__)

LOCK_FILE = ".writer.lock"
_held: dict[Path, int] = {}


def _process_start(pid: int) -> int | None:
    """Start time (clock ticks since boot, field 22 of /proc/PID/stat) or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner_alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # exists, owned by another user
        return True
    started = owner.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def _read_owner(path: Path) -> dict | None:
    """The lock's JSON, {} when unreadable (being written, damaged), None when gone."""
    try:
        return json.loads(path.read_text()) or {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _try_create(path: Path) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with os.fdopen(descriptor, "w") as handle:
        json.dump(owner, handle)
    return True


def _remove_if_stale(path: Path, owner: dict) -> bool:
    """Under the guard flock: remove ``path`` if it still holds the same dead owner. True if removed."""
    with open(path.with_name(LOCK_FILE + ".guard"), "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _read_owner(path) != owner:
            return False
        logger.warning("%s: removing the stale lock of pid %s (no longer running)", path, owner.get("pid"))
        path.unlink(missing_ok=True)
        return True


def _refusal(path: Path, owner: dict) -> CohortError:
    if not owner:
        return CohortError(f"{path}: unreadable writer lock (its writer died while creating it?); expected "
                           f"a single writer: if no process is writing {path.parent}, remove {path} by hand")
    remedy = "wait for it to finish"
    if owner.get("host") != socket.gethostname():
        remedy += f"; if that process is gone, remove {path} by hand (its host cannot be checked from here)"
    return CohortError(f"{path}: {path.parent} is being written by pid {owner.get('pid')} on host "
                       f"{owner.get('host')!r} since {owner.get('since')}; expected a single writer: {remedy}")


@contextlib.contextmanager
def exclusive_writer(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold ``directory``'s writer lock for the ``with`` block (directory created if absent)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    if directory in _held:
        _held[directory] += 1
    else:
        for _ in range(3):   # create; or remove a stale lock and create again
            if _try_create(path):
                break
            owner = _read_owner(path)
            if owner == {}:  # being written this instant, or damaged
                time.sleep(0.2)
                owner = _read_owner(path)
            if owner is None:
                continue
            if owner and owner.get("host") == socket.gethostname() and not _owner_alive(owner):
                _remove_if_stale(path, owner)
                continue
            raise _refusal(path, owner)
        else:
            raise _refusal(path, _read_owner(path) or {})
        _held[directory] = 1
    try:
        yield path
    finally:
        _held[directory] -= 1
        if not _held[directory]:
            del _held[directory]
            path.unlink(missing_ok=True)
