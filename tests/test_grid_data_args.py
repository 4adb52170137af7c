"""grid/run.py passes the data arguments through to miracl_grid.data.prepare (the cohort is materialised once)."""
from __future__ import annotations

from pathlib import Path

import miracl_grid.data.prepare as prepare_module
from miracl_grid.grid.run import build_parser, prepare_data


def captured_prepare(monkeypatch) -> list[tuple[str, Path, dict]]:
    calls: list[tuple[str, Path, dict]] = []

    def fake_prepare(source, out, **options):
        calls.append((source, Path(out), options))
        return out
    monkeypatch.setattr(prepare_module, "prepare_cohort", fake_prepare)
    return calls


def test_noteevents_and_icustays_reach_prepare_and_the_cache_key(tmp_path, monkeypatch):
    calls = captured_prepare(monkeypatch)
    base = ["--sweep", "main", "--data", "mimic3:/data/phenotyping", "--cohort-cache", str(tmp_path)]
    prepare_data(build_parser().parse_args(base), {})
    prepare_data(build_parser().parse_args(base + ["--noteevents", "/m/NOTEEVENTS.csv.gz",
                                                   "--icustays", "/m/ICUSTAYS.csv.gz"]), {})
    (source, plain_dir, plain), (_, notes_dir, with_notes) = calls
    assert source == "mimic3:/data/phenotyping"
    assert "noteevents" not in plain and "icustays" not in plain
    assert with_notes["noteevents"] == "/m/NOTEEVENTS.csv.gz" and with_notes["icustays"] == "/m/ICUSTAYS.csv.gz"
    assert plain_dir != notes_dir  # another notes source is another cohort
