"""Provenance of a sweep: code version, library versions, cohort identity (no Ray import)."""
from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

from miracl_grid.data.versions import library_versions

PACKAGE = "miracl-grid"
LIBRARIES = ("torch", "ray", "transformers", "scikit-learn", "numpy", "pandas", "pyarrow", "scipy")


def code_version(repository: Path | None = None) -> tuple[str, bool]:
    """(git commit or 'miracl-grid==<version>', dirty flag) of the code that runs the sweep.

    `MIRACL_CODE_VERSION` (e.g. set by `ray job submit` from the submitting checkout, whose
    synced copy on the cluster has no .git) takes precedence; a trailing '+dirty' sets the flag.
    """
    declared = os.environ.get("MIRACL_CODE_VERSION")
    if declared:
        return declared.removesuffix("+dirty"), declared.endswith("+dirty")
    repository = repository or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repository), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(repository), "status", "--porcelain",
                                 "--untracked-files=no"], check=True, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        return commit, bool(status)
    except (OSError, subprocess.SubprocessError):
        try:
            return f"{PACKAGE}=={metadata.version(PACKAGE)}", False
        except metadata.PackageNotFoundError:
            return "unknown", True


def data_source(manifest: dict) -> str:
    """What the cohort is, for report captions: 'synthetic cohort (400 patients, 690 stays)' or
    'mimic3-benchmarks-phenotyping extract (33798 patients, 41904 stays)'."""
    source = manifest.get("source", {})
    size = f"{manifest.get('num_patients', '?')} patients, {manifest.get('num_stays', '?')} stays"
    if "synthetic" in source:
        return f"synthetic cohort ({size})"
    return f"{source.get('format', 'unknown format')} extract ({size})"


def sweep_provenance(manifest: dict, text_key: str | None = None, preset: str = "") -> dict[str, object]:
    """The `provenance/*` columns shared by every row of a sweep's results."""
    commit, dirty = code_version()
    text = manifest.get("text", {})
    key = text_key or text.get("default_key")
    encoder = text.get("features", {}).get(key, {})
    return {
        "provenance/code_version": commit,
        "provenance/code_dirty": dirty,
        "provenance/cohort_hash": manifest.get("cohort_hash", ""),
        "provenance/text_encoder": encoder.get("encoder", ""),
        "provenance/text_encoder_revision": str(encoder.get("revision", "")),
        "provenance/text_feature_key": key or "",
        "provenance/versions": json.dumps(library_versions(LIBRARIES), sort_keys=True),
        "provenance/data_source": data_source(manifest),
        "provenance/preset": preset,
    }
