"""Node-local copies of a materialised cohort, so that trials read local disk, not shared storage.

At MIMIC-IV scale the token features of one text key do not fit a node's page cache (~22 GiB
MiniLM / ~44 GiB BioBERT at 512 tokens), so reading them from NFS/EFS means every epoch of every
trial re-reads them over the network. `stage_cohort` copies the files a trial reads — the base
arrays and the trial's text key — once per node into ``ROOT/<cohort_hash>/`` and returns that
folder; every later trial on the node reuses it. The copy is byte-for-byte, so training on it
is the same computation as on the shared folder.

Concurrency and crashes: one `fcntl.flock` per cohort and node serialises the workers that
start together (the first copies, the rest wait and reuse); each part is copied into a
temporary folder and renamed into place with a ``.staged.json`` listing the copied files and
sizes, written last, so an interrupted copy is never mistaken for a complete one.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

from miracl_grid.data.errors import CohortError
from miracl_grid.data.materialise import LABELS, MANIFEST, SERIES_OFFSETS, SERIES_VALUES, STAYS, load_manifest
from miracl_grid.data.text_features import TEXT_FOLDER

BASE_ARRAYS = (STAYS, LABELS, SERIES_VALUES, SERIES_OFFSETS)
STAGED = ".staged.json"


def stage_cohort(cohort_dir: str | os.PathLike, root: str | os.PathLike, *, text_keys: Sequence[str]) -> Path:
    """Node-local copy of `cohort_dir`'s base files and `text_keys` under `root`; returns its folder."""
    source = Path(cohort_dir)
    manifest = load_manifest(source)
    known = manifest.get("text", {}).get("features", {})
    unknown = [key for key in text_keys if key not in known]
    if unknown:
        raise CohortError(f"{source / MANIFEST}: text feature key(s) {unknown} not found; available: {list(known)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / manifest["cohort_hash"]
    with open(root / f".{manifest['cohort_hash']}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _stage_part(source, target, BASE_ARRAYS)
        # the manifest last: a later `prepare` may have added text keys to it (same arrays)
        if not (target / MANIFEST).is_file() or json.loads((target / MANIFEST).read_text()) != manifest:
            _copy_atomically(source / MANIFEST, target / MANIFEST)
        for key in text_keys:
            folder = Path(TEXT_FOLDER) / key
            names = sorted(item.name for item in (source / folder).iterdir() if item.is_file())
            _stage_part(source / folder, target / folder, names)
    return target


def _stage_part(source: Path, target: Path, names: Sequence[str]) -> None:
    """Copy `names` from `source` into `target` unless a complete copy of exactly them is there
    (an incomplete `target` — an interrupted copy, other sizes — is replaced as a whole)."""
    sizes = {}
    for name in names:
        if not (source / name).is_file():
            raise CohortError(f"{source / name}: not found; the cohort directory is incomplete")
        sizes[name] = (source / name).stat().st_size
    if _is_complete(target, sizes):
        return
    temporary = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
    temporary.mkdir(parents=True)
    try:
        if target.is_dir():
            shutil.rmtree(target)
        for name in names:
            shutil.copyfile(source / name, temporary / name)
        (temporary / STAGED).write_text(json.dumps(sizes, sort_keys=True))     # written last
        temporary.rename(target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _is_complete(target: Path, sizes: dict[str, int]) -> bool:
    try:
        staged = json.loads((target / STAGED).read_text())
    except (OSError, ValueError):
        return False
    return staged == sizes and all((target / name).is_file() and (target / name).stat().st_size == size
                                   for name, size in sizes.items())


def _copy_atomically(source: Path, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    shutil.copyfile(source, temporary)
    temporary.rename(target)
