"""`python grid/run.py --list / --dry-run`: counts that match a run, no cohort built to look.

All in-process calls of `miracl_grid.grid.run.main`: neither --list nor --dry-run starts Ray.
"""
from __future__ import annotations

import re

import pytest

from miracl_grid.grid.run import main
from miracl_grid.grid.sweeps import SWEEPS


def _listed_counts(capsys, *flags: str) -> dict[str, int]:
    assert main(["--list", *flags]) == 0
    rows = (re.match(r"(\S+)\s+(\d+)\s", line) for line in capsys.readouterr().out.splitlines())
    return {row[1]: int(row[2]) for row in rows if row and row[1] in SWEEPS}


def _dry_run_count(capsys, tmp_path, sweep: str, *flags: str) -> int:
    assert main(["--sweep", sweep, "--dry-run", "--storage", str(tmp_path / "runs"), *flags]) == 0
    out = capsys.readouterr().out
    announced = int(re.search(rf"sweep {sweep}: (\d+) trials", out)[1])
    listed = int(re.search(r"^(\d+) trials$", out, re.MULTILINE)[1])
    assert announced == listed
    return listed


@pytest.mark.parametrize("preset_flags", [(), ("--preset", "paper")], ids=["quick", "paper"])
def test_list_counts_what_a_dry_run_of_the_same_preset_expands(capsys, tmp_path, preset_flags):
    listed = _listed_counts(capsys, *preset_flags)
    assert set(listed) == set(SWEEPS)
    for sweep, count in listed.items():
        assert _dry_run_count(capsys, tmp_path, sweep, *preset_flags) == count, sweep


def test_list_counts_follow_the_preset_seeds(capsys):
    quick, paper = _listed_counts(capsys), _listed_counts(capsys, "--preset", "paper")
    # Fig. 3 grid: MIRACL at 2 noise settings × 6 λ_cons values × seeds, plus the FlexCare
    # baseline at 2 noise settings × seeds (quick and paper: seeds 30/40/100)
    assert (quick["lambda_cons"], paper["lambda_cons"]) == (2 * 6 * 3 + 2 * 3, 2 * 6 * 3 + 2 * 3)
    assert quick["stability"] == paper["stability"] == 5          # Table 9 pins its own seed


def test_dry_run_builds_no_cohort(capsys, tmp_path):
    assert _dry_run_count(capsys, tmp_path, "lambda_cons") == 2 * 6 * 3 + 2 * 3
    assert not (tmp_path / "runs").exists(), "a dry run wrote under --storage"


def test_unknown_sweep_fails_before_any_cohort_is_built(capsys, tmp_path):
    code = main(["--sweep", "nosuch", "--dry-run", "--storage", str(tmp_path / "runs"),
                 "--cohort-cache", str(tmp_path / "cohorts")])
    assert code == 2
    assert "unknown sweep 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cohorts").exists()


def test_bad_trial_value_fails_before_the_cohort_of_a_real_run(capsys, tmp_path):
    """Not a dry run: a bad --set value must stop the run before the (minutes-long) cohort build."""
    code = main(["--sweep", "lambda_cons", "--set", "alpha=-1", "--storage", str(tmp_path / "runs")])
    assert code == 2
    assert "alpha" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_method_fails_before_anything_starts(capsys, tmp_path, monkeypatch):
    """Not a dry run: `--set method=nosuch` is checked against the method registry when the sweep
    expands — exit 2 naming the value and the registered methods, no cohort built, no Ray started."""
    import ray

    from miracl_grid.trainables.registry import METHODS

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(ray, "init", no_ray)
    code = main(["--sweep", "lambda_cons", "--set", "method=nosuch", "--storage", str(tmp_path / "runs"),
                 "--cohort-cache", str(tmp_path / "cohorts")])
    err = capsys.readouterr().err
    assert code == 2
    assert "config field 'method' = 'nosuch'" in err and str(list(METHODS)) in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cohorts").exists()


def test_the_old_methods_flag_names_its_new_spelling(capsys, tmp_path):
    code = main(["--sweep", "main", "--methods", "flexcare,miracl", "--dry-run", "--storage", str(tmp_path / "runs")])
    assert code == 2
    assert "use --arms flexcare,miracl" in capsys.readouterr().err
