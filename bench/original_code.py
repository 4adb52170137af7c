"""The training code as of commit d2eee07 (before the speed work), importable beside today's.

Bench scripts only. `import_original(folder)` extracts ``trainables/`` and ``data/`` of
`ORIGINAL_COMMIT` with ``git archive`` into ``folder`` as the packages ``trainables_original``
and ``data_original`` (their own imports rewritten to those names), puts ``folder`` on
``sys.path`` and returns the original ``trainables.loop`` module. Needs a git checkout.
`original_cohort_view(cohort, folder)` gives that code a cohort it can open.
"""
from __future__ import annotations

import importlib
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

ORIGINAL_COMMIT = "d2eee07"
REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGES = ("trainables", "data")
_IMPORT = re.compile(r"^(\s*)(from|import) (trainables|data)\b", re.MULTILINE)


def import_original(folder: Path) -> ModuleType:
    """-> the ``trainables.loop`` module of `ORIGINAL_COMMIT`, imported as ``trainables_original.loop``."""
    try:
        archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", ORIGINAL_COMMIT, *PACKAGES],
                                 check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(f"cannot read commit {ORIGINAL_COMMIT} from the git history of {REPOSITORY}: {error}")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            package, _, rest = member.name.partition("/")
            target = folder / f"{package}_original" / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            text = tar.extractfile(member).read()
            if member.name.endswith(".py"):
                text = _IMPORT.sub(r"\1\2 \3_original", text.decode()).encode()
            target.write_bytes(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("trainables_original.loop")


ORIGINAL_FORMAT_VERSION = 1


def original_cohort_view(cohort: Path, folder: Path) -> Path:
    """A view of today's materialised `cohort` that `ORIGINAL_COMMIT`'s reader opens: every file and
    folder linked, and manifest.json with the format version that code expects. The arrays are
    the same files; today's format adds manifest fields (file checksums) the old reader ignores."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in Path(cohort).iterdir():
        if entry.name != "manifest.json":
            (folder / entry.name).symlink_to(entry.resolve())
    manifest = json.loads((Path(cohort) / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": ORIGINAL_FORMAT_VERSION}))
    return folder
