"""One import name: the four top-level folders install as `miracl_grid.*`, nothing else."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("data", "trainables", "grid", "analysis")


def test_every_subpackage_is_installed_under_the_one_import_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"miracl_grid"} | {
        "miracl_grid." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk
    assert setuptools["package-dir"] == {"miracl_grid": "miracl_grid",
                                         **{f"miracl_grid.{f}": f for f in FOLDERS}}


def test_no_module_imports_a_bare_top_level_folder():
    bare = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})(\.|\s)", re.M)
    offenders = [str(path.relative_to(ROOT)) for folder in (*FOLDERS, "tests", "bench")
                 for path in (ROOT / folder).rglob("*.py") if bare.search(path.read_text())]
    assert offenders == []


def test_grid_script_runs_from_any_working_directory(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "grid" / "run.py"), "--list"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "lambda_cons" in done.stdout
