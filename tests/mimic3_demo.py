"""Where the real MIMIC-III demo lies for integration tests, or a pytest skip saying why it is absent.

The demo (ODbL, PhysioNet) is never part of the repository: ``$MIMIC3_DEMO_DIR`` or a folder
``shared/data/mimic3-demo`` next to the checkout (or next to its parent, for worktrees).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def mimic3_demo() -> Path:
    """The demo folder (raw/ and mimic3-benchmarks-output/phenotyping/), or skip the test."""
    candidates = [Path(os.environ["MIMIC3_DEMO_DIR"])] if os.environ.get("MIMIC3_DEMO_DIR") else []
    candidates += [REPOSITORY.parent / "shared" / "data" / "mimic3-demo",
                   REPOSITORY.parent.parent / "shared" / "data" / "mimic3-demo"]
    for folder in candidates:
        if (folder / "raw").is_dir() and (folder / "mimic3-benchmarks-output" / "phenotyping").is_dir():
            return folder
    pytest.skip("the MIMIC-III demo is absent (set MIMIC3_DEMO_DIR, or place shared/data/mimic3-demo next to the "
                "checkout); it is never part of the repository")
