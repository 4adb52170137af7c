"""`./run`: what its set-up installs, from where, and that a second run installs nothing.

The virtual environment is a stand-in (MIRACL_VENV) whose `bin/python` only records how it is
called, so these tests install nothing and take well under a second each.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$*" = "-c import torch" ]; then exit "${FAKE_TORCH_MISSING:-0}"; fi
case "$*" in *--dry-run*) echo "${FAKE_REPORT:-}";; esac
exit 0
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _executable(venv / "bin" / "python", FAKE_PYTHON)
    tools = tmp_path / "tools"          # nvidia-smi goes here for the GPU case
    tools.mkdir()
    log = tmp_path / "calls.log"

    def run(*arguments: str, gpu: bool = False, **environment: str) -> list[str]:
        if gpu:
            _executable(tools / "nvidia-smi", "#!/bin/sh\nexit 0\n")
        env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path), "MIRACL_VENV": str(venv),
               "FAKE_LOG": str(log), **environment}
        result = subprocess.run([str(REPOSITORY / "run"), *arguments], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    return run


def _torch_installs(calls: list[str]) -> list[str]:
    return [call for call in calls if "install" in call and "torch==" in call and "--dry-run" not in call]


def test_setup_installs_the_project_once_and_a_second_run_installs_nothing(fake):
    first = fake("setup")
    assert any(call.endswith("-m pip install --quiet -e .[dev]") for call in first), first
    assert not _torch_installs(first)               # torch already importable: left alone
    assert fake("setup") == []                        # stamp matches: no pip call at all


def test_without_a_gpu_torch_comes_from_the_cpu_index(fake):
    calls = fake("setup", FAKE_TORCH_MISSING="1")
    assert [call.endswith(CPU_INDEX) for call in _torch_installs(calls)] == [True], calls


def test_an_index_that_already_serves_the_cpu_build_is_used_as_it_is(fake):
    calls = fake("setup", FAKE_TORCH_MISSING="1", FAKE_REPORT='{"version": "2.13.0+cpu"}')
    assert [call.endswith("torch==2.13.0") for call in _torch_installs(calls)] == [True], calls


def test_with_a_gpu_torch_is_the_default_build(fake):
    calls = fake("setup", gpu=True, FAKE_TORCH_MISSING="1")
    assert [call.endswith("torch==2.13.0") for call in _torch_installs(calls)] == [True], calls


def test_demo_and_test_run_the_readme_commands_after_the_setup(fake):
    assert fake("demo", "--dry-run")[-1] == "grid/run.py --sweep lambda_cons --dry-run"
    assert fake("test", "-m", "slow and ci")[-1] == "-m pytest -m slow and ci"


def test_ci_runs_the_readme_test_command_and_the_ci_subset():
    lines = [line.strip() for line in (REPOSITORY / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "./run test" in lines and './run test -m "slow and ci"' in lines
    assert os.access(REPOSITORY / "run", os.X_OK) and os.access(REPOSITORY / ".ci" / "run", os.X_OK)
