"""Per-file content records of a materialised cohort directory: written by `miracl_grid.data.materialise`, checked
by `miracl_grid.data.dataset.CohortData` at every trial start and by ``python -m miracl_grid.data.prepare --verify DIR``.

A record of one file (JSON-safe, stored in ``manifest.json`` under ``files``, keyed by the path
relative to the cohort directory)::

    {"size": bytes, "sha256": hex of the whole file,
     "sample_sha256": hex of SAMPLE_BLOCKS evenly spaced SAMPLE_BLOCK_BYTES blocks}  # large files only

Two depths of checking:

- ``quick`` (every trial start): every file's size; the whole sha256 of files up to
  ``SMALL_FILE_BYTES`` (manifest-sized tables, labels, offsets, label embeddings, meta.json); the
  sampled sha256 of larger files (series values, token features: first, last and evenly spaced
  blocks, SAMPLE_BLOCKS × SAMPLE_BLOCK_BYTES read);
- ``full`` (on reuse by `miracl_grid.data.materialise` and with ``--verify``): the whole sha256 of every file.

A mismatch is a `CohortError` naming the file, what differs and how to repair it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from miracl_grid.data.errors import CohortError

SMALL_FILE_BYTES = 8 * 2**20
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_BYTES = 64 * 2**10
VERIFY_DEPTHS = ("quick", "full")
_READ_BYTES = 4 * 2**20
REPAIR_HINT = "re-run `python -m miracl_grid.data.prepare` with the same options to rewrite the cohort"


def _sha256_whole(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _sample_offsets(size: int) -> np.ndarray:
    """Start bytes of the sampled blocks of a file of ``size`` bytes (first and last block included)."""
    last = max(0, size - SAMPLE_BLOCK_BYTES)
    return np.unique(np.linspace(0, last, SAMPLE_BLOCKS).astype(np.int64))


def _sha256_sampled(path: Path, size: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for start in _sample_offsets(size):
            handle.seek(int(start))
            digest.update(handle.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """The record (module docstring) of one file as it is now."""
    path = Path(path)
    size = path.stat().st_size
    record = {"size": int(size), "sha256": _sha256_whole(path)}
    if size > SMALL_FILE_BYTES:
        record["sample_sha256"] = _sha256_sampled(path, size)
    return record


def file_problem(path: Path, record: dict, *, depth: str) -> str | None:
    """What differs between ``path`` and its ``record`` at ``depth`` ("quick" | "full"); None if nothing."""
    if not isinstance(record, dict) or not isinstance(record.get("size"), int) or "sha256" not in record:
        return f"malformed record {record!r} in the manifest; expected {{'size': bytes, 'sha256': hex}}"
    if not path.is_file():
        return "not found"
    size = path.stat().st_size
    if size != record["size"]:
        cut = " (truncated?)" if size < record["size"] else ""
        return f"{size} bytes, the manifest records {record['size']}{cut}"
    if depth == "quick" and "sample_sha256" in record:
        found, expected, what = _sha256_sampled(path, size), record["sample_sha256"], "sampled sha256"
    else:
        found, expected, what = _sha256_whole(path), record["sha256"], "sha256"
    if found != expected:
        return f"content changed since it was written ({what} {found[:12]}…, the manifest records {expected[:12]}…)"
    return None


def verify_files(directory: str | os.PathLike, records: dict[str, dict], *, depth: str) -> None:
    """Check every recorded file under ``directory``; CohortError naming the first bad file (and a count)."""
    if depth not in VERIFY_DEPTHS:
        raise ValueError(f"depth must be one of {VERIFY_DEPTHS}, got {depth!r}")
    directory = Path(directory)
    outside = [name for name in records if Path(name).is_absolute() or ".." in Path(name).parts]
    if outside:
        raise CohortError(f"{directory / 'manifest.json'}: field 'files' names {outside[0]!r}, outside the "
                          f"cohort directory; expected paths relative to it; {REPAIR_HINT}")
    problems = [(name, problem) for name in sorted(records)
                if (problem := file_problem(directory / name, records[name], depth=depth)) is not None]
    if problems:
        name, problem = problems[0]
        others = f"; {len(problems) - 1} more damaged: {', '.join(n for n, _ in problems[1:])}" \
            if len(problems) > 1 else ""
        raise CohortError(f"{directory / name}: {problem}{others}; {REPAIR_HINT}")
