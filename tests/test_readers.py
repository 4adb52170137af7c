"""Readers of the MIMIC-III phenotyping extracts (miracl_grid.data.readers) and the FlexCare/MIRACL MIMIC-IV listfiles (miracl_grid.data.mimic4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from miracl_grid.data.errors import CohortError
from miracl_grid.data.mimic4 import read_mimic4_multimodal
from miracl_grid.data.readers import read_mimic3_phenotyping
from miracl_grid.data.schema import DIAGNOSIS_LABELS, PHENOTYPE_LABELS, TIMESERIES_HEADER
from miracl_grid.data.split import assign_split
from series_layout import series_line

HEADER = ",".join(TIMESERIES_HEADER)
EMPTY_17 = "," * 16  # 17 empty variable cells


SERIES = {
    # stay file name -> body lines
    "10_episode1_timeseries.csv": [series_line("0.0", Heart_Rate="80", Glascow_coma_scale_eye_opening="None"),
                                   series_line("1.5", Heart_Rate="85", pH="7.3")],
    "10_episode2_timeseries.csv": [series_line("0.5", Glucose="140")],
    "11_episode1_timeseries.csv": [series_line("0.25", Capillary_refill_rate="1.0"), series_line("0.25", Temperature="37.5"),
                                   series_line("3.0", Glascow_coma_scale_total="15")],
    "12_episode1_timeseries.csv": [],  # header only: a stay without series
    "20_episode1_timeseries.csv": [series_line("2.0", Weight="70.5")],
    "21_episode1_timeseries.csv": [series_line("1.0", Respiratory_rate="18"), series_line("4.0", Oxygen_saturation="97")],
}
SPLIT_OF = {"10_episode1_timeseries.csv": "train", "10_episode2_timeseries.csv": "train",
            "11_episode1_timeseries.csv": "train", "12_episode1_timeseries.csv": "train",
            "20_episode1_timeseries.csv": "test", "21_episode1_timeseries.csv": "test"}
PERIOD = {"10_episode1_timeseries.csv": 2.0, "10_episode2_timeseries.csv": 1.0, "11_episode1_timeseries.csv": 4.5,
          "12_episode1_timeseries.csv": 3.0, "20_episode1_timeseries.csv": 2.5, "21_episode1_timeseries.csv": 5.0}
NOTES = {"10_episode1_timeseries.csv": "chronic kidney disease, on dialysis",
         "11_episode1_timeseries.csv": "copd exacerbation",
         "20_episode1_timeseries.csv": "   ",  # whitespace only = no note
         "99_episode1_timeseries.csv": "a note of a stay not in any listfile"}


def label_matrix(count: int) -> np.ndarray:
    """Deterministic 0/1 labels, different per stay and label."""
    index = np.arange(count)[:, None] * 7 + np.arange(len(PHENOTYPE_LABELS))[None, :] * 3
    return (index % 5 == 0).astype(np.uint8)


def write_series(path: Path, lines: list[str]) -> None:
    path.write_text(HEADER + "\n" + "".join(line + "\n" for line in lines))


def write_mimic3(root: Path, *, notes: str | None = "csv") -> Path:
    """The small mimic3-benchmarks root of this module (6 stays, 5 patients, 2 splits)."""
    stays = list(SERIES)
    labels = label_matrix(len(stays))
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        chosen = [i for i, s in enumerate(stays) if SPLIT_OF[s] == split]
        table = pd.DataFrame(labels[chosen], columns=list(PHENOTYPE_LABELS))
        table.insert(0, "period_length", [PERIOD[stays[i]] for i in chosen])
        table.insert(0, "stay", [stays[i] for i in chosen])
        table.to_csv(root / split / "listfile.csv", index=False)
        for i in chosen:
            write_series(root / split / stays[i], SERIES[stays[i]])
    notes_table = pd.DataFrame({"stay": list(NOTES), "text": list(NOTES.values())})
    if notes == "csv":
        notes_table.to_csv(root / "notes.csv", index=False)
    elif notes == "parquet":
        notes_table.to_parquet(root / "notes.parquet", index=False)
    return root


MIMIC4_LABELS = DIAGNOSIS_LABELS  # the MIMIC-IV diagnosis task; the first 3 carry MIMIC4_VALUES
MIMIC4_VALUES = np.array([[1, -1, 0], [0, 0, 1], [-1, 1, 1], [0, -2, 0], [1, 1, -1], [0, 1, -2]])
MIMIC4_SERIES = {"100_episode1_timeseries.csv": [series_line("0.1", Heart_Rate="90"), series_line("1.2", Heart_Rate="95")],
                 "100_episode2_timeseries.csv": [series_line("0.0", Glascow_coma_scale_verbal_response="Oriented")],
                 "101_episode1_timeseries.csv": [series_line("5.0", Systolic_blood_pressure="120")],
                 "102_episode1_timeseries.csv": [series_line("0.5", Mean_blood_pressure="70")],
                 "103_episode1_timeseries.csv": [series_line("2.0", Height="180")]}


def mimic4_table() -> pd.DataFrame:
    """6 stays of 5 patients in FlexCare's diagnosis columns (study_id, period_len, dicom_id, note, 14 labels)."""
    table = pd.DataFrame({
        "subject_id": [100, 100, 101, 102, 103, 104],
        "study_id": [3000, 3001, 3002, 3003, 3004, 3005],
        "time_series": list(MIMIC4_SERIES) + [""],  # the last stay has no series file
        "period_len": [2.0, 1.0, 6.0, 1.5, 3.0, ""],
        "dicom_id": ["d1", "", "d3", "", "", "d6"],
        "past_medical_history": ["htn dm2", "", "copd", "cad sp cabg", "", "afib"],
    })
    for i, name in enumerate(DIAGNOSIS_LABELS):
        table[name] = MIMIC4_VALUES[:, i] if i < 3 else 0
    return table


def write_mimic4(folder: Path, table: pd.DataFrame | None = None) -> Path:
    """One multimodal listfile (no split) next to its series folder ehr/."""
    series_dir = folder / "ehr"
    series_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in MIMIC4_SERIES.items():
        write_series(series_dir / name, lines)
    listfile = folder / "multimodal_listfile.csv"
    (mimic4_table() if table is None else table).to_csv(listfile, index=False)
    return listfile


SPLIT_ROWS = {"train": [0, 1, 3], "val": [2], "test": [4, 5]}  # patients 100, 102 | 101 | 103, 104


def write_mimic4_task(data: Path, *, train_val: bool = False, table: pd.DataFrame | None = None) -> Path:
    """FlexCare's layout: data/diagnosis/{train,val,test}_multimodal_listfile.csv + data/ehr/ (MIRACL's
    loader: train_val_ + test_)."""
    write_mimic4(data)
    (data / "multimodal_listfile.csv").unlink()
    task = data / "diagnosis"
    task.mkdir()
    table = mimic4_table() if table is None else table
    files = {"train_val": SPLIT_ROWS["train"] + SPLIT_ROWS["val"], "test": SPLIT_ROWS["test"]} if train_val \
        else SPLIT_ROWS
    for split, rows in files.items():
        table.iloc[rows].to_csv(task / f"{split}_multimodal_listfile.csv", index=False)
    return task


# --------------------------------------------------------------------------- mimic3
@pytest.mark.parametrize("notes_format", ["csv", "parquet"])
def test_read_mimic3_labels_patients_split_notes(tmp_path, notes_format):
    root = write_mimic3(tmp_path, notes=notes_format)
    cohort = read_mimic3_phenotyping(root)
    stays = list(SERIES)
    # the reader keeps listfile order: train rows then test rows
    expected_order = [s for s in stays if SPLIT_OF[s] == "train"] + [s for s in stays if SPLIT_OF[s] == "test"]
    assert cohort.stays["stay"].tolist() == expected_order
    assert cohort.stays["patient_id"].tolist() == [10, 10, 11, 12, 20, 21]
    assert cohort.stays["patient_id"].dtype == np.int64
    assert cohort.stays["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert cohort.stays["period_length"].tolist() == [PERIOD[s] for s in expected_order]
    labels = label_matrix(len(stays))
    np.testing.assert_array_equal(cohort.labels, labels[[stays.index(s) for s in expected_order]])
    assert cohort.labels.dtype == np.uint8
    assert cohort.label_names == PHENOTYPE_LABELS
    assert cohort.notes.tolist() == [NOTES[expected_order[0]], "", NOTES[expected_order[2]], "", "", ""]
    assert cohort.source["notes_without_listed_stay"] == 1
    assert cohort.has_note.tolist() == [True, False, True, False, False, False]
    # events: every body line once, with its stay row and file line
    assert len(cohort.events) == sum(len(v) for v in SERIES.values())
    assert cohort.has_series.tolist() == [True, True, True, False, True, True]
    first = cohort.events[cohort.events["row"] == 0]
    assert first["Hours"].tolist() == [0.0, 1.5]
    assert first["line"].tolist() == [2, 3]
    assert first["Heart Rate"].tolist() == ["80", "85"]
    # "None" is a GCS category, not a missing value; an empty cell is missing
    assert first["Glascow coma scale eye opening"].iloc[0] == "None"
    assert pd.isna(first["Glascow coma scale eye opening"].iloc[1])
    assert cohort.dropped == []


def test_read_mimic3_without_notes_and_explicit_notes_path(tmp_path):
    root = write_mimic3(tmp_path / "a", notes=None)
    cohort = read_mimic3_phenotyping(root)
    assert cohort.notes.tolist() == [""] * 6
    notes = tmp_path / "elsewhere.parquet"
    pd.DataFrame({"stay": ["21_episode1_timeseries.csv"], "text": ["sepsis"]}).to_parquet(notes)
    cohort = read_mimic3_phenotyping(root, notes)
    assert cohort.notes.tolist() == [""] * 5 + ["sepsis"]


def test_read_mimic3_unknown_category_as_missing_is_counted(tmp_path):
    root = write_mimic3(tmp_path)
    write_series(root / "train" / "10_episode2_timeseries.csv",
                 [series_line("0.5", Glucose="140", Glascow_coma_scale_total="15.0"),
                  series_line("0.7", Glascow_coma_scale_total="15.0")])
    with pytest.raises(CohortError, match="Glascow coma scale total"):
        read_mimic3_phenotyping(root)
    cohort = read_mimic3_phenotyping(root, unknown_categories="missing")
    assert cohort.source["unknown_categories"] == {"Glascow coma scale total": {"count": 2, "values": {"15.0": 2}}}
    stay = cohort.events[cohort.events["row"] == 1]
    assert stay["Glascow coma scale total"].isna().all()
    assert stay["Glucose"].iloc[0] == "140" and pd.isna(stay["Glucose"].iloc[1])


def test_read_mimic3_drop_bad_stays_records_reason_and_renumbers(tmp_path):
    root = write_mimic3(tmp_path)
    write_series(root / "train" / "10_episode2_timeseries.csv", [series_line("0.5", Glucose="high")])
    (root / "test" / "20_episode1_timeseries.csv").unlink()
    cohort = read_mimic3_phenotyping(root, drop_bad_stays=True)
    assert [d["stay"] for d in cohort.dropped] == ["10_episode2_timeseries.csv", "20_episode1_timeseries.csv"]
    assert "column 'Glucose'" in cohort.dropped[0]["reason"] and "line 2" in cohort.dropped[0]["reason"]
    assert "not found" in cohort.dropped[1]["reason"]
    assert cohort.stays["stay"].tolist() == ["10_episode1_timeseries.csv", "11_episode1_timeseries.csv",
                                             "12_episode1_timeseries.csv", "21_episode1_timeseries.csv"]
    labels = label_matrix(6)
    np.testing.assert_array_equal(cohort.labels, labels[[0, 2, 3, 5]])
    # events re-numbered onto the kept rows: row 1 is now stay 11 (3 lines), row 3 stay 21 (2 lines)
    assert np.bincount(cohort.events["row"], minlength=4).tolist() == [2, 3, 0, 2]
    assert cohort.events.loc[cohort.events["row"] == 3, "Respiratory rate"].iloc[0] == "18"


def test_read_series_in_large_and_quoted_files(tmp_path, monkeypatch):
    """The chunked fast path and the per-file path (quoted cells) agree; chunks split anywhere."""
    import miracl_grid.data.readers as readers
    root = write_mimic3(tmp_path)
    write_series(root / "train" / "11_episode1_timeseries.csv",
                 [series_line("0.25", Capillary_refill_rate="1.0"), series_line("0.25", Temperature='"37.5"'),
                  series_line("3.0", Glascow_coma_scale_total="15")])
    reference = read_mimic3_phenotyping(root)
    monkeypatch.setattr(readers, "CHUNK_BYTES", 1)  # one file per pandas call
    small_chunks = read_mimic3_phenotyping(root)
    pd.testing.assert_frame_equal(reference.events, small_chunks.events)
    assert reference.events.loc[reference.events["row"] == 2, "Temperature"].tolist()[1] == "37.5"


# --------------------------------------------------------------------------- mimic4
def test_read_mimic4_listfile_labels_minus_one_minus_two_notes_and_patient_split(tmp_path):
    listfile = write_mimic4(tmp_path)
    cohort = read_mimic4_multimodal(listfile, tmp_path / "ehr")
    assert cohort.label_names == DIAGNOSIS_LABELS  # dicom_id, the note ... are not labels
    expected = np.zeros((6, 14), dtype=np.uint8)
    expected[:, :3] = MIMIC4_VALUES == 1  # -1 (uncertain) and -2 (not mentioned) read as 0, as MIRACL
    np.testing.assert_array_equal(cohort.labels, expected)
    assert cohort.source["task"] == "diagnosis"
    assert cohort.source["uncertain_labels_read_as_zero"] == 3
    assert cohort.source["unmentioned_labels_read_as_zero"] == 2
    assert cohort.source["unmentioned_labels_per_label"]["Cardiomegaly"] == 1
    assert cohort.source["unmentioned_labels_per_label"]["Consolidation"] == 1
    assert cohort.source["uncertain_labels_per_label"]["Atelectasis"] == 1
    assert cohort.stays["stay"].tolist() == ["3000", "3001", "3002", "3003", "3004", "3005"]
    assert cohort.stays["patient_id"].tolist() == [100, 100, 101, 102, 103, 104]
    np.testing.assert_array_equal(cohort.stays["period_length"], [2.0, 1.0, 6.0, 1.5, 3.0, np.nan])
    assert cohort.notes.tolist() == ["htn dm2", "", "copd", "cad sp cabg", "", "afib"]
    assert cohort.source["note_column"] == "past_medical_history"
    assert cohort.has_series.tolist() == [True, True, True, True, True, False]
    assert cohort.source["stays_without_series_file"] == 1
    assert cohort.stays["split"].isna().all()
    assign_split(cohort, seed=3)
    split = cohort.stays["split"]
    assert set(split) == {"train", "test"}
    assert split.iloc[0] == split.iloc[1]  # both stays of patient 100 on one side
    # GroupShuffleSplit takes ceil(0.2 * 5 patients) = 1 patient into test
    assert cohort.stays.loc[split == "test", "patient_id"].nunique() == 1


@pytest.mark.parametrize("train_val", [False, True], ids=["flexcare-train-val-test", "miracl-train_val-test"])
def test_read_mimic4_task_folder_keeps_the_shipped_split(tmp_path, train_val):
    task = write_mimic4_task(tmp_path / "data", train_val=train_val)
    cohort = read_mimic4_multimodal(task)  # series folder defaults to data/ehr
    order = SPLIT_ROWS["train"] + SPLIT_ROWS["val"] + SPLIT_ROWS["test"]
    assert cohort.stays["stay"].tolist() == [str(3000 + r) for r in order]
    # validation stays are train stays (MIRACL trains on train+val, no validation set)
    assert cohort.stays["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assign_split(cohort, seed=7)  # a source split is kept, whatever the seed
    assert cohort.stays["split"].tolist() == ["train"] * 4 + ["test"] * 2
    files = cohort.source["split"]["stays_per_file"]
    assert files == ({"train_val": 4, "test": 2} if train_val else {"train": 3, "val": 1, "test": 2})
    assert cohort.source["timeseries_dir"] == str((tmp_path / "data" / "ehr").resolve())
    assert cohort.has_series.tolist() == [True, True, True, True, True, False]


def test_read_mimic4_task_folder_rejects_a_patient_in_train_and_test(tmp_path):
    table = mimic4_table()
    table.loc[5, "subject_id"] = 100  # a test stay of a train patient
    task = write_mimic4_task(tmp_path / "data", table=table)
    with pytest.raises(CohortError, match="patient 100 has stays in both train and test"):
        read_mimic4_multimodal(task)


def test_read_mimic4_phenotyping_columns_of_miracl(tmp_path):
    """MIRACL's phenotyping listfile: stay_id, period_length, no dicom_id, 25 phenotypes."""
    table = mimic4_table().drop(columns=list(DIAGNOSIS_LABELS) + ["dicom_id"]).rename(
        columns={"study_id": "stay_id", "period_len": "period_length"})
    for i, name in enumerate(PHENOTYPE_LABELS):
        table[name] = (np.arange(6) + i) % 3 == 0
    table[list(PHENOTYPE_LABELS)] = table[list(PHENOTYPE_LABELS)].astype(int)
    cohort = read_mimic4_multimodal(write_mimic4(tmp_path, table), tmp_path / "ehr")
    assert cohort.source["task"] == "phenotyping" and cohort.label_names == PHENOTYPE_LABELS
    np.testing.assert_array_equal(cohort.labels, table[list(PHENOTYPE_LABELS)].to_numpy())


def test_read_mimic4_stay_on_two_rows_is_one_stay_with_both_notes(tmp_path):
    """FlexCare's merge lists a stay once per discharge note of its admission."""
    table = mimic4_table()
    extra = table.iloc[[2, 2, 0]].copy()
    extra["past_medical_history"] = ["asthma", "copd", ""]  # a second note, a repeat, an empty one
    table = pd.concat([table.iloc[:3], extra, table.iloc[3:]], ignore_index=True)
    listfile = write_mimic4(tmp_path, table)
    cohort = read_mimic4_multimodal(listfile, tmp_path / "ehr")
    assert cohort.stays["stay"].tolist() == ["3000", "3001", "3002", "3003", "3004", "3005"]
    assert cohort.notes.tolist() == ["htn dm2", "", "copd\n\nasthma", "cad sp cabg", "", "afib"]
    assert cohort.source["duplicate_stay_rows"] == {"stays_listed_more_than_once": 2, "rows_merged": 3,
                                                    "policy": "join-notes"}
    assert len(cohort.events) == sum(len(v) for v in MIMIC4_SERIES.values())  # each series read once
    last = read_mimic4_multimodal(listfile, tmp_path / "ehr", duplicate_stays="last")
    assert last.notes.tolist() == ["", "", "copd", "cad sp cabg", "", "afib"]


def test_read_mimic4_stay_on_two_rows_with_other_labels_is_an_error(tmp_path):
    table = mimic4_table()
    extra = table.iloc[[2]].copy()
    extra["Edema"] = 1
    listfile = write_mimic4(tmp_path, pd.concat([table, extra], ignore_index=True))
    with pytest.raises(CohortError, match=r"stay '3002' listed twice with different content: .*line 4 and .*line 8 "
                                          r"\(column 'Edema'\)"):
        read_mimic4_multimodal(listfile, tmp_path / "ehr")


def test_read_mimic4_unknown_column_is_an_error_unless_labels_are_given(tmp_path):
    table = mimic4_table()
    table["insurance_type"] = 1
    listfile = write_mimic4(tmp_path, table)
    with pytest.raises(CohortError, match=r"line 1 \(header\): unknown column\(s\) \['insurance_type'\]"):
        read_mimic4_multimodal(listfile, tmp_path / "ehr")
    cohort = read_mimic4_multimodal(listfile, tmp_path / "ehr", label_columns=[*DIAGNOSIS_LABELS, "insurance_type"])
    assert cohort.label_names[-1] == "insurance_type" and cohort.labels[:, -1].tolist() == [1] * 6


@pytest.mark.parametrize("name", ["../outside_timeseries.csv", "/etc/hostname", "sub/../../outside_timeseries.csv",
                                  "link_timeseries.csv"])
def test_read_mimic4_series_path_outside_the_folder_is_an_error(tmp_path, name):
    listfile = write_mimic4(tmp_path / "data")
    write_series(tmp_path / "outside_timeseries.csv", [series_line("0.0", Heart_Rate="1")])
    (tmp_path / "data" / "ehr" / "link_timeseries.csv").symlink_to(tmp_path / "outside_timeseries.csv")
    table = mimic4_table()
    table.loc[3, "time_series"] = name
    table.to_csv(listfile, index=False)
    with pytest.raises(CohortError) as caught:
        read_mimic4_multimodal(listfile, tmp_path / "data" / "ehr")
    message = str(caught.value)
    for fragment in (f"{listfile}: line 5, column 'time_series'", repr(name), "points outside the series folder"):
        assert fragment in message


def test_read_mimic4_series_in_a_subfolder_of_the_series_folder_is_read(tmp_path):
    listfile = write_mimic4(tmp_path)
    (tmp_path / "ehr" / "sub").mkdir()
    (tmp_path / "ehr" / "102_episode1_timeseries.csv").rename(tmp_path / "ehr" / "sub" / "102_episode1_timeseries.csv")
    table = mimic4_table()
    table.loc[3, "time_series"] = "sub/102_episode1_timeseries.csv"
    table.to_csv(listfile, index=False)
    cohort = read_mimic4_multimodal(listfile, tmp_path / "ehr")
    assert cohort.events.loc[cohort.events["row"] == 3, "Mean blood pressure"].tolist() == ["70"]


# --------------------------------------------------------------------------- bad input
def _edit_series(root: Path, name: str, lines: list[str]) -> None:
    split = SPLIT_OF[name]
    write_series(root / split / name, lines)


def _edit_listfile(root: Path, split: str, edit) -> None:
    path = root / split / "listfile.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(table)
    table.to_csv(path, index=False)


def _mimic4_edit(edit):
    def run(tmp_path):
        listfile = write_mimic4(tmp_path)
        table = pd.read_csv(listfile, dtype=str, keep_default_na=False)
        edit(table)
        table.to_csv(listfile, index=False)
        read_mimic4_multimodal(listfile, tmp_path / "ehr")
    return run


def _mimic3_case(prepare, notes_path=None):
    def run(tmp_path):
        root = write_mimic3(tmp_path)
        prepare(root)
        read_mimic3_phenotyping(root, notes_path(root) if notes_path else None)
    return run


def _set(table, column, row_index, value):
    table.loc[row_index, column] = value


BAD_INPUT = [
    ("missing listfile", _mimic3_case(lambda r: (r / "test" / "listfile.csv").unlink()),
     ["test/listfile.csv", "not found"]),
    ("missing series file", _mimic3_case(lambda r: (r / "train" / "11_episode1_timeseries.csv").unlink()),
     ["train/listfile.csv", "line 4", "11_episode1_timeseries.csv", "not found"]),
    ("wrong header", _mimic3_case(lambda r: (r / "test" / "21_episode1_timeseries.csv").write_text(
        HEADER.replace("Heart Rate", "HR") + "\n" + series_line("1.0") + "\n")),
     ["21_episode1_timeseries.csv", "line 1 (header)", "expected columns", "missing ['Heart Rate']",
      "unexpected ['HR']"]),
    ("wrong field count", _mimic3_case(lambda r: _edit_series(r, "20_episode1_timeseries.csv",
                                                              [series_line("1.0"), series_line("2.0") + ",7"])),
     ["20_episode1_timeseries.csv", "line 3", "expected 18", "found 19"]),
    ("label not 0/1", _mimic3_case(lambda r: _edit_listfile(r, "train", lambda t: _set(t, "Shock", 1, "2"))),
     ["train/listfile.csv", "line 3", "column 'Shock'", "'2'"]),
    ("empty label", _mimic3_case(lambda r: _edit_listfile(r, "test", lambda t: _set(t, PHENOTYPE_LABELS[0], 0, ""))),
     ["test/listfile.csv", "line 2", f"column '{PHENOTYPE_LABELS[0]}'", "found an empty cell"]),
    ("mimic4 label not -2/-1/0/1", _mimic4_edit(lambda t: _set(t, "Cardiomegaly", 3, "0.5")),
     ["multimodal_listfile.csv", "line 5", "column 'Cardiomegaly'", "{-2, -1, 0, 1}"]),
    ("nan in continuous", _mimic3_case(lambda r: _edit_series(r, "10_episode1_timeseries.csv",
                                                              [series_line("0.0"), series_line("1.0", Heart_Rate="nan")])),
     ["10_episode1_timeseries.csv", "line 3", "column 'Heart Rate'", "'nan'"]),
    ("inf in continuous", _mimic3_case(lambda r: _edit_series(r, "10_episode1_timeseries.csv",
                                                              [series_line("0.0", pH="inf")])),
     ["10_episode1_timeseries.csv", "line 2", "column 'pH'", "'inf'"]),
    ("non-numeric continuous", _mimic3_case(lambda r: _edit_series(r, "21_episode1_timeseries.csv",
                                                                   [series_line("0.0", Weight="70kg")])),
     ["21_episode1_timeseries.csv", "line 2", "column 'Weight'", "'70kg'"]),
    ("unknown categorical", _mimic3_case(lambda r: _edit_series(
        r, "11_episode1_timeseries.csv", [series_line("0.0"), series_line("0.5"), series_line("1.0", Glascow_coma_scale_eye_opening="Blinks")])),
     ["11_episode1_timeseries.csv", "line 4", "column 'Glascow coma scale eye opening'", "'Blinks'"]),
    ("unsorted hours", _mimic3_case(lambda r: _edit_series(r, "10_episode2_timeseries.csv",
                                                           [series_line("2.0"), series_line("1.0")])),
     ["10_episode2_timeseries.csv", "line 3", "column 'Hours'", "ascending"]),
    ("negative hours", _mimic3_case(lambda r: _edit_series(r, "10_episode2_timeseries.csv", [series_line("-0.5")])),
     ["10_episode2_timeseries.csv", "line 2", "column 'Hours'", ">= 0"]),
    ("empty hours", _mimic3_case(lambda r: _edit_series(r, "10_episode2_timeseries.csv", [series_line("1"), series_line("")])),
     ["10_episode2_timeseries.csv", "line 3", "column 'Hours'", "found an empty cell"]),
    ("duplicate stay across splits", _mimic3_case(lambda r: _edit_listfile(
        r, "test", lambda t: _set(t, "stay", 1, "10_episode1_timeseries.csv"))),
     ["duplicate stay id '10_episode1_timeseries.csv'", "train/listfile.csv line 2", "test/listfile.csv line 3"]),
    ("mimic4 stay on two rows with other content", _mimic4_edit(lambda t: _set(t, "study_id", 4, "3000")),
     ["stay '3000' listed twice with different content", "multimodal_listfile.csv line 2",
      "multimodal_listfile.csv line 6"]),
    ("bad stay file name", _mimic3_case(lambda r: _edit_listfile(r, "train", lambda t: _set(t, "stay", 2, "eleven.csv"))),
     ["train/listfile.csv", "line 4", "column 'stay'", "'eleven.csv'"]),
    ("negative period_length", _mimic3_case(lambda r: _edit_listfile(r, "train", lambda t: _set(t, "period_length", 0, "-1"))),
     ["train/listfile.csv", "line 2", "column 'period_length'"]),
    ("patient in both splits", _mimic3_case(lambda r: (
        _edit_listfile(r, "test", lambda t: _set(t, "stay", 0, "10_episode3_timeseries.csv")),
        write_series(r / "test" / "10_episode3_timeseries.csv", [series_line("0.0")]))),
     ["patient 10", "both train and test", "10_episode3_timeseries.csv"]),
    ("given notes file missing", _mimic3_case(lambda r: None, notes_path=lambda r: r / "no_notes.csv"),
     ["no_notes.csv", "not found"]),
    ("notes without text column", _mimic3_case(lambda r: pd.DataFrame({"stay": ["x"], "note": ["y"]}).to_csv(
        r / "notes.csv", index=False)),
     ["notes.csv", "line 1 (header)", "['text']"]),
    ("mimic4 missing series file", _mimic4_edit(lambda t: _set(t, "time_series", 2, "404_episode1_timeseries.csv")),
     ["multimodal_listfile.csv", "line 4", "404_episode1_timeseries.csv", "not found"]),
    ("mimic4 listfile missing column", _mimic4_edit(lambda t: t.pop("subject_id")),
     ["multimodal_listfile.csv", "line 1 (header)", "subject_id"]),
]


@pytest.mark.parametrize("name, case, fragments", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_cohort_error_naming_file_and_place(tmp_path, name, case, fragments):
    with pytest.raises(CohortError) as caught:
        case(tmp_path)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --------------------------------------------------------------------------- MIRACL's MIMIC-III listfiles
def _miracl_mimic3(root: Path, *, with_notes: bool) -> Path:
    """Rewrite the benchmark root into MIRACL's {split}_listfile.csv / {split}_multimodal_listfile.csv."""
    for split in ("train", "test"):
        table = pd.read_csv(root / split / "listfile.csv", dtype=str, keep_default_na=False)
        table.insert(0, "stay_id", [str(200000 + i) for i in range(len(table))])
        table.insert(0, "patient_id", [s.split("_")[0] for s in table["stay"]])
        name = f"{split}_listfile.csv"
        if with_notes:
            table.insert(4, "notes", [NOTES.get(s, "") for s in table["stay"]])
            name = f"{split}_multimodal_listfile.csv"
        table.to_csv(root / name, index=False)
        (root / split / "listfile.csv").unlink()
    return root


def test_read_miracl_mimic3_multimodal_listfile_with_notes_column(tmp_path):
    root = _miracl_mimic3(write_mimic3(tmp_path, notes=None), with_notes=True)
    cohort = read_mimic3_phenotyping(root)
    reference = read_mimic3_phenotyping(write_mimic3(tmp_path / "ref"))
    assert cohort.source["layout"] == "{split}_multimodal_listfile.csv"
    assert cohort.stays["stay"].tolist() == reference.stays["stay"].tolist()
    np.testing.assert_array_equal(cohort.labels, reference.labels)
    assert cohort.notes.tolist() == reference.notes.tolist()
    pd.testing.assert_frame_equal(cohort.events, reference.events)


def test_read_miracl_mimic3_listfile_patient_id_must_match_the_stay_name(tmp_path):
    root = _miracl_mimic3(write_mimic3(tmp_path, notes=None), with_notes=False)
    table = pd.read_csv(root / "train_listfile.csv", dtype=str)
    table.loc[1, "patient_id"] = "11"
    table.to_csv(root / "train_listfile.csv", index=False)
    with pytest.raises(CohortError, match=r"train_listfile.csv: line 3, column 'patient_id': 11 differs from the "
                                          r"subject 10 of stay '10_episode2_timeseries.csv'"):
        read_mimic3_phenotyping(root)


def test_read_mimic3_unknown_listfile_column_is_an_error(tmp_path):
    root = write_mimic3(tmp_path)
    _edit_listfile(root, "test", lambda table: table.insert(2, "Shock2", "0"))
    with pytest.raises(CohortError, match=r"test/listfile.csv: line 1 \(header\): unknown column\(s\) \['Shock2'\]"):
        read_mimic3_phenotyping(root)
    root = write_mimic3(tmp_path / "b")
    _edit_listfile(root, "train", lambda table: table.pop("Shock"))
    with pytest.raises(CohortError, match=r"train/listfile.csv: line 1 \(header\): missing label column\(s\) \['Shock'\]"):
        read_mimic3_phenotyping(root)
