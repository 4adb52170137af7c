"""Raw MIMIC-III tables -> phenotyping cohort (miracl_grid.data.mimic3_raw) on small hand-written tables.

Every expectation below is worked out by hand from the mimic3-benchmarks rules listed in
`miracl_grid.data.mimic3_raw.stays` / `miracl_grid.data.mimic3_raw.series` (stay filters, validation, cleaning, the
largest value at one CHARTTIME, the ICU window, period lengths, labels, the testset split).
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import miracl_grid.data.materialise as materialise_module
from miracl_grid.data.errors import CohortError
from miracl_grid.data.materialise import load_manifest
from miracl_grid.data.mimic3_raw import read_mimic3_raw
from miracl_grid.data.prepare import main, parse_source
from miracl_grid.data.mimic3_raw.reader import period_lengths
from miracl_grid.data.schema import PHENOTYPE_LABELS, VARIABLE_NAMES
from fake_text import make_fake_text_features

# subjects: 1 (not in testset.csv -> train), 4 and 6 (testset flag 1 -> test), 2, 3, 5, 7, 8, 9 (train)
PATIENTS = [(1, "2100-01-01 00:00:00"), (2, "2100-01-01 00:00:00"), (3, "2100-01-01 00:00:00"),
            (4, "2200-01-01 00:00:00"),  # DOB after INTIME: negative age -> 90, kept
            (5, "2140-01-01 00:00:00"),  # 10 years old: removed
            (6, "2100-01-01 00:00:00"), (7, "2100-01-01 00:00:00"), (8, "2100-01-01 00:00:00"),
            (9, "2100-01-01 00:00:00")]
# ICUSTAY_ID, SUBJECT_ID, HADM_ID, FIRST_WARDID, LAST_WARDID, INTIME, OUTTIME, LOS
ICUSTAYS = [
    (101, 1, 11, 7, 7, "2150-01-01 00:00:00", "2150-01-03 00:00:00", "2.0"),
    (102, 1, 12, 7, 7, "2150-06-01 00:00:00", "2150-06-02 12:00:00", "1.5"),
    (201, 2, 21, 7, 8, "2150-01-01 00:00:00", "2150-01-02 00:00:00", "1.0"),   # transfer: removed
    (301, 3, 31, 7, 7, "2150-01-01 00:00:00", "2150-01-02 00:00:00", "1.0"),   # two stays in HADM 31:
    (302, 3, 31, 7, 7, "2150-01-05 00:00:00", "2150-01-06 00:00:00", "1.0"),   # both removed
    (401, 4, 41, 7, 7, "2150-01-01 00:00:00", "2150-01-01 10:00:00", "0.41666"),
    (501, 5, 51, 7, 7, "2150-01-01 00:00:00", "2150-01-02 00:00:00", "1.0"),   # child: removed
    (601, 6, 61, 7, 7, "2150-01-01 00:00:00", "2150-01-02 00:00:00", "1.0"),   # no diagnosis: left out
    (701, 7, 71, 7, 7, "2150-01-01 00:00:00", "2150-01-02 00:00:00", "1.0"),   # only a pre-ICU lab
    (801, 8, 81, 7, 7, "2150-01-01 00:00:00", "", ""),                         # no OUTTIME/LOS
    (901, 9, 91, 7, 7, "2150-01-01 00:00:00", "2150-01-02 00:00:00", "1.0"),   # no events at all
]
DIAGNOSES = [(1, 11, "0389"), (1, 11, "4019"), (1, 12, "5849"), (1, 12, "V1582"), (1, 12, "XXXX"),
             (4, 41, "486"), (7, 71, "4019"), (8, 81, "4019"), (9, 91, "4019")]
D_ICD = ["0389", "4019", "5849", "486", "V1582"]
# SUBJECT_ID, HADM_ID, ICUSTAY_ID, ITEMID, CHARTTIME, VALUE, VALUEUOM
CHART = [
    (1, 11, 101, 211, "2150-01-01 00:30:00", "80", "bpm"),
    (1, 11, 101, 220045, "2150-01-01 00:30:00", "100", "bpm"),     # same time: text max "80" wins
    (1, 11, 101, 51, "2150-01-01 00:30:00", "120", "mmHg"),
    (1, 11, 101, 455, "2150-01-01 00:30:00", "90", "mmHg"),        # same time: numeric max 120 wins
    (1, 11, 101, 3348, "2150-01-01 00:30:00", "Brisk", ""),        # capillary refill -> 0
    (1, 11, 101, 678, "2150-01-01 01:00:00", "98.6", "?F"),        # >= 79 -> Celsius
    (1, 11, 101, 3420, "2150-01-01 01:00:00", "50", ""),           # FiO2 / 100
    (1, 11, 101, 198, "2150-01-01 01:00:00", "15", ""),
    (1, 11, 101, 184, "2150-01-01 01:00:00", "None", ""),          # a GCS category, not missing
    (1, 11, 101, 51, "2150-01-01 02:00:00", "130/70", "mmHg"),     # systolic of "d/d"
    (1, 11, 101, 8368, "2150-01-01 02:00:00", "130/70", "mmHg"),   # diastolic of "d/d"
    (1, 11, 101, 646, "2150-01-01 02:00:00", "0.95", "%"),         # <= 1 -> x 100
    (1, 11, 101, 223835, "2150-01-01 02:00:00", "40", "torr"),     # FiO2 in torr: unchanged
    (1, 11, 101, 3581, "2150-01-01 03:00:00", "154", "lb"),        # pounds -> kg
    (1, 11, 101, 1394, "2150-01-01 03:00:00", "70", ""),           # "Height Inches" -> round(x * 2.54)
    (1, 11, 101, 646, "2150-01-01 03:00:00", "ERROR", ""),         # not a plain decimal: dropped
    (1, 11, 101, 211, "2150-01-01 03:00:00", "NA", ""),            # pandas NA string: dropped
    (1, 11, None, 3582, "2150-01-01 04:00:00", "32", "oz"),        # ICUSTAY_ID repaired; ounces -> kg
    (1, 12, 102, 211, "2150-01-01 05:00:00", "70", ""),            # stay 102's event inside 101's window
    (1, None, 101, 211, "2150-01-01 06:00:00", "71", ""),          # no HADM_ID: dropped
    (1, 99, 101, 211, "2150-01-01 07:00:00", "72", ""),            # HADM 99 is no cohort stay: dropped
    (1, 11, 999, 211, "2150-01-01 08:00:00", "73", ""),            # another ICUSTAY_ID: dropped
    (1, 11, 101, 999999, "2150-01-01 09:00:00", "5", ""),          # ITEMID not mapped
    (1, 11, 101, 211, "2150-01-03 01:00:00", "74", ""),            # 49 h > 24 * LOS: outside
    (1, 12, 102, 211, "2150-06-01 01:00:00", "65", ""),
    (4, 41, 401, 211, "2150-01-01 02:00:00", "90", ""),
    (6, 61, 601, 211, "2150-01-01 02:00:00", "90", ""),
    (8, 81, 801, 211, "2150-01-01 02:00:00", "90", ""),
    (2, 21, 201, 211, "2150-01-01 02:00:00", "90", ""),            # removed stay's subject: not read
]
# SUBJECT_ID, HADM_ID, ITEMID, CHARTTIME, VALUE, VALUEUOM
LABS = [
    (1, 11, 50820, "2150-01-01 02:00:00", "7.35", "units"),
    (1, 11, 50931, "2150-01-01 03:00:00", "<10", "mg/dL"),          # not a plain decimal: dropped
    (1, 11, 50931, "2149-12-31 22:00:00", "140", "mg/dL"),          # before INTIME: -2 h, outside
    (7, 71, 50931, "2149-12-31 22:00:00", "140", "mg/dL"),          # stay 701's only row: outside
    (1, None, 50931, "2150-01-01 02:00:00", "99", "mg/dL"),         # outpatient lab: dropped
]

WEIGHT_LB = 154 * 0.453592
WEIGHT_OZ = 32 / 16.0 * 0.453592
TEMPERATURE = (98.6 - 32) * 5.0 / 9
# stay -> expected rows {Hours: {variable: value}} (continuous values as floats)
EXPECTED = {
    "1_episode1_timeseries.csv": {
        0.5: {"Heart Rate": "80", "Systolic blood pressure": 120.0, "Capillary refill rate": "0.0"},
        1.0: {"Temperature": TEMPERATURE, "Fraction inspired oxygen": 0.5, "Glascow coma scale total": "15",
              "Glascow coma scale eye opening": "None"},
        2.0: {"Systolic blood pressure": 130.0, "Diastolic blood pressure": 70.0, "Oxygen saturation": 95.0,
              "Fraction inspired oxygen": 40.0, "pH": 7.35},
        3.0: {"Weight": WEIGHT_LB, "Height": 178.0},
        4.0: {"Weight": WEIGHT_OZ},
        5.0: {"Heart Rate": "70"},
    },
    "1_episode2_timeseries.csv": {1.0: {"Heart Rate": "65"}},
    "4_episode1_timeseries.csv": {2.0: {"Heart Rate": "90"}},
}
CATEGORICAL_OR_TEXT = {"Heart Rate", "Capillary refill rate", "Glascow coma scale total",
                       "Glascow coma scale eye opening"}


def _frame(rows, columns) -> pd.DataFrame:
    return pd.DataFrame([["" if v is None else v for v in row] for row in rows], columns=columns)


def write_raw(root: Path, *, gzip_charts: bool = False, chart=CHART) -> Path:
    """The small raw MIMIC-III folder of this module (MIMIC-III column names, extra columns included)."""
    root.mkdir(parents=True, exist_ok=True)
    tables = {
        "PATIENTS": _frame([(i, s, "F", dob, "") for i, (s, dob) in enumerate(PATIENTS)],
                           ["ROW_ID", "SUBJECT_ID", "GENDER", "DOB", "DOD"]),
        "ADMISSIONS": _frame(sorted({(s[1], s[2], "2149-12-31 00:00:00") for s in ICUSTAYS}),
                             ["SUBJECT_ID", "HADM_ID", "ADMITTIME"]),
        "ICUSTAYS": _frame([(i, s[1], s[2], s[0], "carevue", "MICU", "MICU", s[3], s[4], s[5], s[6], s[7])
                            for i, s in enumerate(ICUSTAYS)],
                           ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "DBSOURCE", "FIRST_CAREUNIT",
                            "LAST_CAREUNIT", "FIRST_WARDID", "LAST_WARDID", "INTIME", "OUTTIME", "LOS"]),
        "DIAGNOSES_ICD": _frame([(i, s, h, i + 1, c) for i, (s, h, c) in enumerate(DIAGNOSES)],
                                ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"]),
        "D_ICD_DIAGNOSES": _frame([(i, c, "short", "long, with a comma") for i, c in enumerate(D_ICD)],
                                  ["ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"]),
        "CHARTEVENTS": _frame([(i, *r[:5], r[5], "", r[6], 0) for i, r in enumerate(chart)],
                              ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "ITEMID", "CHARTTIME", "VALUE",
                               "VALUENUM", "VALUEUOM", "ERROR"]),
        "LABEVENTS": _frame([(i, *r, "") for i, r in enumerate(LABS)],
                            ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ITEMID", "CHARTTIME", "VALUE", "VALUEUOM", "FLAG"]),
        "OUTPUTEVENTS": _frame([(0, 1, 11, 101, "2150-01-01 01:00:00", 40055, "39", "ml")],
                               ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "CHARTTIME", "ITEMID", "VALUE",
                                "VALUEUOM"]),
    }
    for name, table in tables.items():
        path = root / f"{name}.csv"
        table.to_csv(path, index=False)
        if gzip_charts and name == "CHARTEVENTS":
            with open(path, "rb") as source, gzip.open(root / f"{name}.csv.gz", "wb") as target:
                shutil.copyfileobj(source, target)
            path.unlink()
    return root


@pytest.fixture(scope="module")
def raw_cohort(tmp_path_factory):
    return read_mimic3_raw(write_raw(tmp_path_factory.mktemp("raw")), threads=1, memory_limit="500MB")


def test_stays_splits_period_lengths(raw_cohort):
    stays = raw_cohort.stays
    assert stays["stay"].tolist() == list(EXPECTED)  # train (sorted by name) then test
    assert stays["split"].tolist() == ["train", "train", "test"]
    assert stays["patient_id"].tolist() == [1, 1, 4]
    assert stays["icustay_id"].tolist() == [101, 102, 401]
    assert stays["hadm_id"].tolist() == [11, 12, 41]
    assert stays["period_length"].tolist() == [48.0, 36.0, 9.99984]


def test_rule_counts(raw_cohort):
    rules = raw_cohort.source["rules"]
    assert {k: rules[k] for k in ("icu_stays", "removed_icu_transfers", "removed_without_admission_or_patient",
                                  "removed_admissions_with_several_icu_stays", "removed_age_under_18",
                                  "age_negative_set_to_90", "cohort_stays", "cohort_subjects")} == {
        "icu_stays": 11, "removed_icu_transfers": 1, "removed_without_admission_or_patient": 0,
        "removed_admissions_with_several_icu_stays": 2, "removed_age_under_18": 1, "age_negative_set_to_90": 1,
        "cohort_stays": 7, "cohort_subjects": 6}
    assert rules["episode_order_ties"] == 0
    assert rules["diagnoses_without_d_icd_code"] == 1
    assert rules["cohort_stays_without_diagnoses"] == 1
    assert {k: rules[k] for k in ("stays_without_events", "stays_without_diagnoses", "stays_without_los",
                                  "stays_without_events_in_icu", "phenotyping_stays")} == {
        "stays_without_events": 1, "stays_without_diagnoses": 1, "stays_without_los": 1,
        "stays_without_events_in_icu": 1, "phenotyping_stays": 3}
    assert rules["events_dropped_empty_hadm"] == 2        # one chart, one lab
    assert rules["events_dropped_hadm_not_in_stays"] == 1
    assert rules["events_dropped_icustay_not_in_stays"] == 1
    assert rules["events_icustay_recovered"] == 1 + 4     # the ounce weight and four inpatient labs
    assert rules["values_missing"] == 1
    assert rules["values_dropped_by_cleaning_rule"] == 2
    assert rules["values_same_time_not_largest"] == 2
    assert rules["values_not_a_number"] == {}


def test_labels(raw_cohort):
    expected = np.zeros((3, len(PHENOTYPE_LABELS)), dtype=np.uint8)
    for row, groups in enumerate([("Septicemia (except in labor)", "Essential hypertension"),
                                  ("Acute and unspecified renal failure",),
                                  ("Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",)]):
        for group in groups:
            expected[row, PHENOTYPE_LABELS.index(group)] = 1
    np.testing.assert_array_equal(raw_cohort.labels, expected)


def test_series_rows_and_values(raw_cohort):
    events = raw_cohort.events
    names = raw_cohort.stays["stay"].to_numpy()
    for row, stay in enumerate(names):
        mine = events[events["row"] == row]
        assert mine["Hours"].tolist() == list(EXPECTED[stay]), stay
        for (_, cells), (hours, expected) in zip(mine.iterrows(), EXPECTED[stay].items()):
            present = {name: cells[name] for name in VARIABLE_NAMES if pd.notna(cells[name])}
            assert set(present) == set(expected), (stay, hours)
            for name, value in expected.items():
                if name in CATEGORICAL_OR_TEXT:
                    assert present[name] == value, (stay, hours, name)
                else:
                    assert float(present[name]) == value, (stay, hours, name)


def test_gzip_tables_read_the_same(raw_cohort, tmp_path):
    cohort = read_mimic3_raw(write_raw(tmp_path / "gz", gzip_charts=True), threads=1, memory_limit="500MB")
    assert (tmp_path / "gz" / "CHARTEVENTS.csv.gz").is_file()
    pd.testing.assert_frame_equal(cohort.events, raw_cohort.events)
    np.testing.assert_array_equal(cohort.labels, raw_cohort.labels)


def test_period_length_is_printed_with_six_decimals():
    np.testing.assert_array_equal(period_lengths(np.array([1.23456789, 2.0, 0.0000001])),
                                  [29.629629, 48.0, 0.000002])


def test_missing_table_names_it(tmp_path):
    root = write_raw(tmp_path / "raw")
    (root / "LABEVENTS.csv").unlink()
    with pytest.raises(CohortError, match=r"raw table LABEVENTS: neither .*LABEVENTS\.csv nor .*LABEVENTS\.csv\.gz"):
        read_mimic3_raw(root, threads=1)


def test_missing_column_names_table_and_column(tmp_path):
    root = write_raw(tmp_path / "raw")
    table = pd.read_csv(root / "ICUSTAYS.csv", dtype=str).drop(columns=["LAST_WARDID"])
    table.to_csv(root / "ICUSTAYS.csv", index=False)
    with pytest.raises(CohortError, match=r"raw table ICUSTAYS .*missing column\(s\) \['LAST_WARDID'\]"):
        read_mimic3_raw(root, threads=1)


def test_malformed_cell_names_table_and_column(tmp_path):
    bad = list(CHART)
    bad[3] = (1, 11, 101, "two-eleven", "2150-01-01 00:30:00", "90", "mmHg")
    root = write_raw(tmp_path / "raw", chart=bad)
    with pytest.raises(CohortError, match=r"raw table CHARTEVENTS \(.*CHARTEVENTS.csv\): line 5, column .ITEMID.: "
                                          r"expected a BIGINT value or an empty cell, found .two-eleven.") as caught:
        read_mimic3_raw(root, threads=1)
    assert "two-eleven" in str(caught.value)


def test_unknown_category_policies(tmp_path):
    chart = list(CHART) + [(4, 41, 401, 198, "2150-01-01 03:00:00", "16", "")]  # GCS total 16: not a category
    root = write_raw(tmp_path / "raw", chart=chart)
    with pytest.raises(CohortError, match=r"stay 4_episode1_timeseries.csv: column 'Glascow coma scale total'.*'16'"):
        read_mimic3_raw(root, threads=1)
    blanked = read_mimic3_raw(root, threads=1, unknown_categories="missing")
    assert blanked.source["unknown_categories"] == {"Glascow coma scale total": {"count": 1, "values": {"16": 1}}}
    assert blanked.num_stays == 3
    dropped = read_mimic3_raw(root, threads=1, drop_bad_stays=True)
    assert dropped.stays["stay"].tolist() == ["1_episode1_timeseries.csv", "1_episode2_timeseries.csv"]
    assert [d["stay"] for d in dropped.dropped] == ["4_episode1_timeseries.csv"]
    assert dropped.labels.shape == (2, len(PHENOTYPE_LABELS))


def test_threads_and_memory_limit_are_checked(tmp_path):
    root = write_raw(tmp_path / "raw")
    with pytest.raises(ValueError, match="threads"):
        read_mimic3_raw(root, threads=10_000)
    with pytest.raises(ValueError, match="memory_limit 'lots'"):
        read_mimic3_raw(root, threads=1, memory_limit="lots")


def test_parse_source_mimic3_raw():
    assert parse_source("mimic3-raw:/data/mimic-iii-1.4") == ("mimic3-raw", ["/data/mimic-iii-1.4"])
    with pytest.raises(CohortError, match="mimic3-raw:MIMIC_III_DIR"):
        parse_source("mimic3-raw:")


def test_cli_materialises_the_raw_cohort_with_notes(tmp_path, monkeypatch):
    monkeypatch.setattr(materialise_module, "_ensure_text_features",
                        make_fake_text_features(dim=2, values="ones", key_prefix="fake", revision="0"))
    root = write_raw(tmp_path / "raw")
    pd.DataFrame({"stay": ["1_episode2_timeseries.csv"], "text": ["renal failure"]}).to_csv(
        tmp_path / "notes.csv", index=False)
    out = tmp_path / "out"
    assert main(["--source", f"mimic3-raw:{root}", "--out", str(out), "--notes", str(tmp_path / "notes.csv"),
                 "--quiet"]) == 0
    manifest = load_manifest(out)
    assert manifest["num_stays"] == 3 and manifest["num_patients"] == 2
    assert manifest["source"]["format"] == "mimic3-raw"
    assert manifest["source"]["rules"]["phenotyping_stays"] == 3
    stays = pd.read_parquet(out / "stays.parquet")
    assert stays["split"].tolist() == ["train", "train", "test"]
    assert stays["has_note"].tolist() == [False, True, False]
    assert stays["series_bins"].tolist() == [48, 36, 10]  # ceil(period_length - 1e-6)


def test_cli_missing_table_exits_2(tmp_path, capsys):
    root = write_raw(tmp_path / "raw")
    (root / "PATIENTS.csv").unlink()
    assert main(["--source", f"mimic3-raw:{root}", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "raw table PATIENTS: neither" in capsys.readouterr().err


def test_noteevents_select_each_stays_notes_by_its_own_times(tmp_path):
    root = write_raw(tmp_path / "raw")
    notes = _frame([
        (1, 1, 11, "2150-01-01", "2150-01-01 02:00:00", "Nursing", "", "BP  stable,\n afebrile"),
        (2, 1, 11, "2150-01-01", "2150-01-01 01:00:00", "Physician", "", "admitted [**Hospital 1**] today"),
        (3, 1, 11, "2150-01-01", "2150-01-01 03:00:00", "Nursing", "1", "error note"),      # ISERROR: excluded
        (4, 1, 11, "2150-01-06", "2150-01-06 00:00:00", "Nursing", "", "after the stay"),   # outside the window
        (5, 1, 12, "2150-06-01", "2150-06-01 05:00:00", "Nursing", "", "second stay"),
        (6, 4, 41, "2150-01-01", "", "Discharge summary", "", "no charttime"),              # no CHARTTIME: dropped
    ], ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "CATEGORY", "ISERROR", "TEXT"])
    notes.to_csv(root / "NOTEEVENTS.csv", index=False)
    cohort = read_mimic3_raw(root, noteevents=root / "NOTEEVENTS.csv", threads=1)
    assert cohort.notes.tolist() == ["admitted today\n\nBP stable, afebrile", "second stay", ""]
    assert cohort.source["notes_from_noteevents"]["error_rows_excluded"] == 1
    with pytest.raises(CohortError, match="expected one notes source"):
        read_mimic3_raw(root, tmp_path / "notes.csv", noteevents=root / "NOTEEVENTS.csv", threads=1)


def test_text_that_is_not_a_number_is_dropped_and_counted(tmp_path):
    chart = list(CHART) + [(4, 41, 401, 211, "2150-01-01 03:00:00", " 95", ""),        # Python float() takes it
                           (4, 41, 401, 51, "2150-01-01 03:00:00", "1_20", "mmHg"),    # and this
                           (4, 41, 401, 8368, "2150-01-01 03:00:00", "120/", "mmHg")]  # the benchmark stops here
    cohort = read_mimic3_raw(write_raw(tmp_path / "raw", chart=chart), threads=1)
    assert cohort.source["rules"]["values_not_a_number"] == {
        "Diastolic blood pressure": 1, "Heart Rate": 1, "Systolic blood pressure": 1}
    row = cohort.stays["stay"].tolist().index("4_episode1_timeseries.csv")
    assert cohort.events.loc[cohort.events["row"] == row, "Hours"].tolist() == [2.0]
