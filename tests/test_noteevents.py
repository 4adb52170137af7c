"""MIMIC-III notes per ICU stay from NOTEEVENTS-layout files (miracl_grid.data.noteevents) and the mimic3 reader's use of them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import miracl_grid.data.materialise as materialise_module
from miracl_grid.data.errors import CohortError
from miracl_grid.data.noteevents import NoteRule
from miracl_grid.data.prepare import main
from miracl_grid.data.readers import read_mimic3_phenotyping
from miracl_grid.data.schema import PHENOTYPE_LABELS
from fake_text import make_fake_text_features
from test_readers import PERIOD, SERIES, write_mimic3

NOTE_HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY", "DESCRIPTION",
               "CGID", "ISERROR", "TEXT"]
ICU_HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "DBSOURCE", "FIRST_CAREUNIT", "LAST_CAREUNIT",
              "FIRST_WARDID", "LAST_WARDID", "INTIME", "OUTTIME", "LOS"]
LONG_STAY = "21_episode1_timeseries.csv"  # period_length set to 100 h: the 48 h window matters
PERIODS = {**PERIOD, LONG_STAY: 100.0}
START = pd.Timestamp("2150-03-01 08:00:00")
# stay -> (ICUSTAY_ID, HADM_ID, INTIME); episode 2 of subject 10 starts after episode 1
STAYS = {stay: (200 + i, 900 + i, START + pd.Timedelta(days=10 * i)) for i, stay in enumerate(SERIES)}


def at(stay: str, hours: float) -> str:
    return (STAYS[stay][2] + pd.Timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S")


def write_root(tmp_path: Path) -> Path:
    root = write_mimic3(tmp_path / "phenotyping", notes=None)
    listfile = root / "test" / "listfile.csv"
    table = pd.read_csv(listfile, dtype=str, keep_default_na=False)
    table.loc[table["stay"] == LONG_STAY, "period_length"] = "100.000000"
    table.to_csv(listfile, index=False)
    return root


def write_icustays(path: Path, *, extra: list[list] = ()) -> Path:
    rows = []
    for i, (stay, (icu, hadm, intime)) in enumerate(STAYS.items()):
        subject = int(stay.split("_")[0])
        los = PERIODS[stay] / 24.0
        outtime = intime + pd.Timedelta(hours=PERIODS[stay])
        rows.append([i, subject, hadm, icu, "carevue", "MICU", "MICU", 52, 52, intime.strftime("%Y-%m-%d %H:%M:%S"),
                     outtime.strftime("%Y-%m-%d %H:%M:%S"), f"{los:.6f}"])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(ICU_HEADER)
        writer.writerows(rows + list(extra))
    return path


A, B, C, D, E = list(SERIES)[:5]   # 10_ep1, 10_ep2, 11_ep1, 12_ep1 (3 h), 20_ep1
NOTES = [
    # (ROW_ID, stay, hours after INTIME or None, CATEGORY, ISERROR, TEXT)
    (5, A, 0.5, "Nursing", "", "first [**Known lastname 123**] note\n   of the stay"),
    (3, A, 0.5, "Physician ", "", "same time, lower ROW_ID: before"),
    (9, A, 0.25, "Radiology", "", "earliest note, listed later"),
    (6, A, 1.0, "Nursing", "1", "an error row"),
    (7, A, -0.02, "Nursing", "", "before INTIME"),
    (8, A, 2.0, "Nursing", "", "at OUTTIME: inside"),
    (10, A, 2.01, "Nursing", "", "after OUTTIME"),
    (11, A, None, "Discharge summary", "", "no CHARTTIME: not used"),
    (12, B, 0.5, "Nursing", "", "   "),                                    # empty text
    *[(20 + k, D, 0.4 * k, "Nursing", "", f"note {k}") for k in range(6)],  # 6 notes: max_notes 5 keeps 0-4
    (30, LONG_STAY, 47.5, "Nursing", "", "inside 48 h"),
    (31, LONG_STAY, 49.0, "Nursing", "", "after 48 h, inside the stay"),
    (32, LONG_STAY, 101.0, "Nursing", "", "after the stay"),
]


def write_noteevents(path: Path, notes=NOTES, *, other_admission: bool = True) -> Path:
    rows = []
    for row_id, stay, hours, category, error, text in notes:
        subject = int(stay.split("_")[0])
        chart = at(stay, hours) if hours is not None else ""
        date = at(stay, hours or 0)[:10]
        rows.append([row_id, subject, STAYS[stay][1], date, chart, chart, category, "Report", 17, error, text])
    if other_admission:  # subject 20 (stay E), another admission: never its note
        rows.append([40, 20, 12345, at(E, 1)[:10], at(E, 1), "", "Nursing", "Report", "", "", "other admission"])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(NOTE_HEADER)
        writer.writerows(rows)
    return path


def read(tmp_path: Path, rule: NoteRule | None = None, **kwargs):
    root = write_root(tmp_path)
    return read_mimic3_phenotyping(root, noteevents=write_noteevents(tmp_path / "NOTEEVENTS.csv"),
                                   icustays=write_icustays(tmp_path / "ICUSTAYS.csv"), note_rule=rule, **kwargs)


def note_of(cohort, stay: str) -> str:
    return cohort.notes[cohort.stays["stay"].tolist().index(stay)]


def test_default_rule_selects_orders_and_joins_each_stays_notes(tmp_path):
    cohort = read(tmp_path)
    assert note_of(cohort, A) == "\n\n".join(["earliest note, listed later", "same time, lower ROW_ID: before",
                                              "first note of the stay", "at OUTTIME: inside"])
    assert note_of(cohort, D) == "\n\n".join(f"note {k}" for k in range(5))
    assert note_of(cohort, LONG_STAY) == "inside 48 h"
    for stay in (B, C, E):  # empty text, no note at all, a note of another admission only
        assert note_of(cohort, stay) == ""
    stats = cohort.source["notes_from_noteevents"]
    assert stats["rows_read"] == len(NOTES) + 1
    assert stats["error_rows_excluded"] == 1 and stats["rows_without_charttime"] == 1
    assert stats["rows_without_text"] == 1
    assert stats["notes_beyond_max_notes"] == 1
    assert stats["stays_with_a_note"] == 3 and stats["stays_without_a_note"] == 3
    assert stats["rule"] == {"window_hours": 48.0, "max_notes": 5, "categories": None}
    assert cohort.has_note.tolist() == [s in (A, D, LONG_STAY) for s in cohort.stays["stay"]]


def test_rule_options_whole_stay_all_notes_and_categories(tmp_path):
    cohort = read(tmp_path, NoteRule(window_hours=None, max_notes=None, categories=("Nursing", "Radiology")))
    assert note_of(cohort, LONG_STAY) == "inside 48 h\n\nafter 48 h, inside the stay"
    assert note_of(cohort, D) == "\n\n".join(f"note {k}" for k in range(6))
    # 'Physician ' is another category: only Nursing and Radiology notes
    assert note_of(cohort, A) == "earliest note, listed later\n\nfirst note of the stay\n\nat OUTTIME: inside"
    assert cohort.source["notes_from_noteevents"]["rows_of_other_categories"] == 1


def test_stays_are_matched_by_icu_stay_id_in_miracls_listfile(tmp_path):
    """MIRACL's create_new_phenotyping listfile carries the ICUSTAY_ID (stay_id): joined on it, not on LOS."""
    root = write_root(tmp_path)
    for split in ("train", "test"):
        table = pd.read_csv(root / split / "listfile.csv", dtype=str, keep_default_na=False)
        table.insert(0, "stay_id", [str(STAYS[s][0]) for s in table["stay"]])
        table.insert(0, "patient_id", [s.split("_")[0] for s in table["stay"]])
        table.to_csv(root / f"{split}_listfile.csv", index=False)
        (root / split / "listfile.csv").unlink()
    icustays = write_icustays(tmp_path / "ICUSTAYS.csv")
    table = pd.read_csv(icustays)
    table["LOS"] = 99.0  # LOS no longer matters
    table.to_csv(icustays, index=False)
    cohort = read_mimic3_phenotyping(root, noteevents=write_noteevents(tmp_path / "NOTEEVENTS.csv"), icustays=icustays)
    assert cohort.source["layout"] == "{split}_listfile.csv"
    assert note_of(cohort, D) == "\n\n".join(f"note {k}" for k in range(5))


def test_benchmark_stay_matched_to_two_icu_stays_is_an_error(tmp_path):
    root = write_root(tmp_path)
    intime = START + pd.Timedelta(days=300)
    twin = [99, 11, 5555, 777, "carevue", "MICU", "MICU", 52, 52, intime.strftime("%Y-%m-%d %H:%M:%S"),
            (intime + pd.Timedelta(hours=4.5)).strftime("%Y-%m-%d %H:%M:%S"), 4.5 / 24]
    icustays = write_icustays(tmp_path / "ICUSTAYS.csv", extra=[twin])
    with pytest.raises(CohortError, match=r"stay '11_episode1_timeseries.csv' \(period_length 4.5 h\): 2 ICU stays "
                                          r"\[202, 777\] of subject 11"):
        read_mimic3_phenotyping(root, noteevents=write_noteevents(tmp_path / "N.csv"), icustays=icustays)


def test_benchmark_episodes_out_of_time_order_is_an_error(tmp_path):
    root = write_root(tmp_path)
    icustays = write_icustays(tmp_path / "ICUSTAYS.csv")
    table = pd.read_csv(icustays)
    table.loc[1, "INTIME"] = "2100-01-01 00:00:00"  # episode 2 of subject 10 before episode 1
    table.to_csv(icustays, index=False)
    with pytest.raises(CohortError, match="out of episode order"):
        read_mimic3_phenotyping(root, noteevents=write_noteevents(tmp_path / "N.csv"), icustays=icustays)


@pytest.mark.parametrize("column, value, expected", [
    ("ISERROR", "yes", "column 'ISERROR': expected an integer, found 'yes'"),
    ("CHARTTIME", "01/03/2150 08:30", "column 'CHARTTIME': expected a time 'YYYY-MM-DD HH:MM:SS'"),
    ("HADM_ID", "9_00", "column 'HADM_ID': expected an integer, found '9_00'"),
])
def test_malformed_noteevents_cell_names_row_and_column(tmp_path, column, value, expected):
    root = write_root(tmp_path)
    path = write_noteevents(tmp_path / "NOTEEVENTS.csv")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[2, column] = value
    table.to_csv(path, index=False)
    with pytest.raises(CohortError, match=rf"NOTEEVENTS.csv: data row 3 \(header excluded\), {expected}"):
        read_mimic3_phenotyping(root, noteevents=path, icustays=write_icustays(tmp_path / "ICUSTAYS.csv"))


def test_noteevents_needs_icustays_and_excludes_other_note_sources(tmp_path):
    root = write_root(tmp_path)
    notes = write_noteevents(tmp_path / "NOTEEVENTS.csv")
    with pytest.raises(CohortError, match="--noteevents needs the ICU stay times"):
        read_mimic3_phenotyping(root, noteevents=notes)
    pd.DataFrame({"stay": [A], "text": ["x"]}).to_csv(tmp_path / "notes.csv", index=False)
    with pytest.raises(CohortError, match="expected one notes source"):
        read_mimic3_phenotyping(root, tmp_path / "notes.csv", noteevents=notes, icustays=tmp_path / "I.csv")
    with pytest.raises(CohortError, match="NOTEEVENTS.csv: line 1 \\(header\\): missing column\\(s\\) \\['ISERROR'\\]"):
        pd.read_csv(notes).drop(columns=["ISERROR"]).to_csv(notes, index=False)
        read_mimic3_phenotyping(root, noteevents=notes, icustays=write_icustays(tmp_path / "ICUSTAYS.csv"))


def test_cli_noteevents_flags_reach_the_cohort(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(materialise_module, "_ensure_text_features",
                        make_fake_text_features(dim=2, values="ones", key_prefix="fake", revision="0"))
    root = write_root(tmp_path)
    arguments = ["--source", f"mimic3:{root}", "--out", str(tmp_path / "out"), "--quiet",
                 "--noteevents", str(write_noteevents(tmp_path / "NOTEEVENTS.csv")),
                 "--icustays", str(write_icustays(tmp_path / "ICUSTAYS.csv")), "--max-notes", "1",
                 "--note-window-hours", "stay"]
    assert main(arguments) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["notes_from_noteevents"]["rule"] == {"window_hours": None, "max_notes": 1,
                                                                   "categories": None}
    assert manifest["missingness"]["all"]["without_note"] == 3
    capsys.readouterr()
    for value in ("nan", "4_8", " 48"):  # the number grammar of miracl_grid.data.numbers
        assert main(arguments[:-2] + ["--note-window-hours", value]) == 2
        assert f"--note-window-hours {value!r}: expected hours > 0 or 'stay'" in capsys.readouterr().err
    assert main(arguments[:-2] + ["--note-window-hours", "-3"]) == 2
    assert "window_hours must be a finite number > 0 or None, got -3.0" in capsys.readouterr().err
    assert main(arguments[:-2] + ["--note-window-hours", "two days"]) == 2
    assert "--note-window-hours 'two days': expected hours > 0 or 'stay'" in capsys.readouterr().err


def test_labels_and_series_unchanged_by_the_notes_route(tmp_path):
    with_notes = read(tmp_path / "a")
    plain = read_mimic3_phenotyping(write_root(tmp_path / "b"))
    np.testing.assert_array_equal(with_notes.labels, plain.labels)
    pd.testing.assert_frame_equal(with_notes.events, plain.events)
    assert with_notes.label_names == PHENOTYPE_LABELS


# --------------------------------------------------------------------------- real MIMIC-III demo
def test_demo_benchmark_stays_match_one_icu_stay_each_and_get_their_notes(tmp_path):
    """The official benchmark output of the demo against the demo's own ICUSTAYS: every stay matches one ICU
    stay, and those stays obey the benchmark's own rules (no transfer, one ICU stay per admission, episode
    order). The demo ships NOTEEVENTS without rows, so notes are written in its layout at the real times."""
    from mimic3_demo import mimic3_demo
    from miracl_grid.data.noteevents import read_icustays, stay_times

    demo = mimic3_demo()
    root = demo / "mimic3-benchmarks-output" / "phenotyping"
    icustays = demo / "raw" / "ICUSTAYS.csv.gz"
    plain = read_mimic3_phenotyping(root, unknown_categories="missing")
    stays = plain.stays.assign(episode=plain.stays["stay"].str.extract(r"_episode(\d+)_")[0].astype(np.int64),
                               icustay_id=-1)
    times = stay_times(stays, icustays)
    assert len(times) == len(plain.stays) == 113 and times["ICUSTAY_ID"].is_unique
    raw = pd.read_csv(icustays)
    matched = raw.set_index("ICUSTAY_ID").loc[times["ICUSTAY_ID"]]
    assert (matched["FIRST_CAREUNIT"] == matched["LAST_CAREUNIT"]).all()
    assert (matched["FIRST_WARDID"] == matched["LAST_WARDID"]).all()
    # the benchmark drops stays with a transfer, then admissions with more than one remaining ICU stay
    no_transfer = raw[(raw["FIRST_CAREUNIT"] == raw["LAST_CAREUNIT"]) & (raw["FIRST_WARDID"] == raw["LAST_WARDID"])]
    stays_per_admission = no_transfer.groupby("HADM_ID")["ICUSTAY_ID"].count()
    assert (stays_per_admission.loc[matched["HADM_ID"]] == 1).all()
    np.testing.assert_allclose(24 * matched["LOS"].to_numpy(), plain.stays["period_length"].to_numpy(), atol=1e-4)
    assert len(read_icustays(icustays)) == len(raw)

    rows = []
    for index, (stay, subject, hadm, intime) in enumerate(
            times[["stay", "SUBJECT_ID", "HADM_ID", "INTIME"]].itertuples(index=False)):
        for k, hours in enumerate((1.0, -1.0)):  # one inside the window, one before INTIME
            chart = (intime + pd.Timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S")
            rows.append([2 * index + k, subject, hadm, chart[:10], chart, "", "Nursing", "Report", "", "",
                         f"note {k} of {stay}"])
    noteevents = tmp_path / "NOTEEVENTS.csv"
    pd.DataFrame(rows, columns=NOTE_HEADER).to_csv(noteevents, index=False)
    cohort = read_mimic3_phenotyping(root, noteevents=noteevents, icustays=icustays, unknown_categories="missing")
    assert cohort.notes.tolist() == [f"note 0 of {s}" for s in cohort.stays["stay"]]
    np.testing.assert_array_equal(cohort.labels, plain.labels)
    pd.testing.assert_frame_equal(cohort.events, plain.events)


@pytest.mark.parametrize("rule", [NoteRule(), NoteRule(window_hours=None, max_notes=None)], ids=["default", "all"])
def test_chunked_reading_selects_the_same_notes(tmp_path, rule):
    """Streaming NOTEEVENTS in chunks of 3 rows (first notes kept per chunk) = one chunk."""
    from miracl_grid.data.noteevents import stay_notes_from_noteevents, stay_times

    root = write_root(tmp_path)
    plain = read_mimic3_phenotyping(root)
    stays = plain.stays.assign(episode=plain.stays["stay"].str.extract(r"_episode(\d+)_")[0].astype(np.int64),
                               icustay_id=-1)
    times = stay_times(stays, write_icustays(tmp_path / "ICUSTAYS.csv"))
    notes = write_noteevents(tmp_path / "NOTEEVENTS.csv")
    one, one_counts = stay_notes_from_noteevents(notes, times, rule=rule, chunk_rows=10_000)
    small, small_counts = stay_notes_from_noteevents(notes, times, rule=rule, chunk_rows=3)
    pd.testing.assert_series_equal(one.sort_index(), small.sort_index())
    assert one_counts == small_counts
