"""Tests of miracl_grid.data.synthetic: file layout (METHOD §9/§10 mimic3-benchmarks phenotyping format),
patient split (METHOD §1), label structure, physiology and note evidence as documented in the
module docstring. Every expectation is computed here from the files on disk with pandas."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from miracl_grid.data.schema import PHENOTYPE_LABELS, VARIABLE_NAMES, VARIABLES
from miracl_grid.data.synthetic import generate_synthetic_cohort

SMALL = {"num_patients": 150, "max_hours": 24, "seed": 7}
MODERATE = {"num_patients": 600, "max_hours": 24, "seed": 11}
HEADER = "Hours," + ",".join(VARIABLE_NAMES)
NUMERIC = [v.name for v in VARIABLES if not v.is_categorical]
CATEGORICAL = [v for v in VARIABLES if v.is_categorical]

# Chronic vs acute as the brief defines them (independent of the module's own constants).
CHRONIC = ["Diabetes mellitus with complications", "Diabetes mellitus without complication",
           "Essential hypertension",
           "Hypertension with complications and secondary hypertension",
           "Chronic kidney disease", "Chronic obstructive pulmonary disease and bronchiectasis",
           "Congestive heart failure; nonhypertensive",
           "Coronary atherosclerosis and other heart disease", "Disorders of lipid metabolism",
           "Other liver diseases"]
ACUTE = ["Septicemia (except in labor)", "Shock", "Acute and unspecified renal failure",
         "Respiratory failure; insufficiency; arrest (adult)",
         "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
         "Gastrointestinal hemorrhage", "Acute myocardial infarction",
         "Acute cerebrovascular disease", "Complications of surgical procedures or medical care",
         "Pleurisy; pneumothorax; pulmonary collapse"]
LIPID = "Disorders of lipid metabolism"
LIPID_WORDS = re.compile(r"hyperlipid|\bHLD\b|cholesterol|statin", re.IGNORECASE)


@dataclass
class Cohort:
    root: Path
    summary: object
    stays: pd.DataFrame      # index stay; split, subject, episode, period_length, labels, text
    series: pd.DataFrame     # long: all rows of all series files as strings, plus "stay"


def _read_cohort(root: Path, summary) -> Cohort:
    frames = []
    for split in ("train", "test"):
        listfile = pd.read_csv(root / split / "listfile.csv")
        frames.append(listfile.assign(split=split))
    stays = pd.concat(frames, ignore_index=True)
    parts = stays["stay"].str.extract(r"^(\d+)_episode(\d+)_timeseries\.csv$")
    stays["subject"] = parts[0].astype(int)
    stays["episode"] = parts[1].astype(int)
    stays = stays.set_index("stay")
    notes = pd.read_csv(root / "notes.csv", keep_default_na=False, dtype=str)
    stays["text"] = notes.set_index("stay")["text"]
    series = pd.concat(
        [pd.read_csv(root / split / stay, dtype=str, keep_default_na=False).assign(stay=stay)
         for stay, split in zip(stays.index, stays["split"])], ignore_index=True)
    return Cohort(root, summary, stays, series)


def _numeric(series: pd.DataFrame) -> pd.DataFrame:
    values = series[NUMERIC].replace("", np.nan).apply(pd.to_numeric)
    return values.assign(stay=series["stay"].values)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Cohort:
    root = tmp_path_factory.mktemp("small")
    summary = generate_synthetic_cohort(root, **SMALL)
    return _read_cohort(root, summary)


@pytest.fixture(scope="module")
def moderate(tmp_path_factory) -> Cohort:
    root = tmp_path_factory.mktemp("moderate")
    summary = generate_synthetic_cohort(root, **MODERATE)
    return _read_cohort(root, summary)


@pytest.fixture(scope="module")
def stay_means(moderate) -> pd.DataFrame:
    """Per-stay mean of every numeric variable joined with the labels (moderate cohort)."""
    means = _numeric(moderate.series).groupby("stay").mean()
    return means.join(moderate.stays[list(PHENOTYPE_LABELS)], how="right")


# --- layout -----------------------------------------------------------------------------------
def test_listfile_columns_and_values(small):
    for split in ("train", "test"):
        with open(small.root / split / "listfile.csv") as handle:
            header = handle.readline().rstrip("\n").split(",")
        assert header[:2] == ["stay", "period_length"]
        assert ",".join(header[2:]) == ",".join(PHENOTYPE_LABELS)
    labels = small.stays[list(PHENOTYPE_LABELS)]
    assert set(np.unique(labels.values)) <= {0, 1}
    assert small.stays["period_length"].between(12.0, 24.0).all()
    assert small.stays.index.str.fullmatch(r"\d+_episode\d+_timeseries\.csv").all()


def test_series_files_have_exact_header_and_rows(small):
    for stay, split in zip(small.stays.index, small.stays["split"]):
        lines = (small.root / split / stay).read_text().splitlines()
        assert lines[0] == HEADER, stay
        assert len(lines) >= 2, f"{stay} has no data row"
        assert all(line.count(",") == len(VARIABLE_NAMES) for line in lines[1:]), stay


def test_categorical_cells_come_from_schema_and_numeric_cells_parse(small):
    for variable in CATEGORICAL:
        observed = set(small.series[variable.name]) - {""}
        assert observed, f"{variable.name} never observed"
        assert observed <= set(variable.categories), (variable.name,
                                                      observed - set(variable.categories))
    numeric = _numeric(small.series)          # raises on any non-numeric cell
    for name in NUMERIC:
        assert numeric[name].notna().any(), f"{name} never observed"
    assert numeric["Oxygen saturation"].max() <= 100.0
    assert numeric["Fraction inspired oxygen"].dropna().between(0.21, 1.0).all()
    assert numeric["pH"].dropna().between(6.8, 7.8).all()


def test_hours_sorted_nonnegative_within_period(small):
    hours = pd.to_numeric(small.series["Hours"])
    stay = small.series["stay"]
    assert (hours >= 0).all()
    period = small.stays.loc[stay, "period_length"].to_numpy()
    assert (hours.to_numpy() <= period).all()
    same_stay = stay.to_numpy()[1:] == stay.to_numpy()[:-1]
    assert (np.diff(hours.to_numpy())[same_stay] > 0).all()


def test_listfiles_match_files_on_disk_and_notes(small):
    for split in ("train", "test"):
        on_disk = {p.name for p in (small.root / split).glob("*_timeseries.csv")}
        listed = set(small.stays.index[small.stays["split"] == split])
        assert on_disk == listed
    notes = pd.read_csv(small.root / "notes.csv", keep_default_na=False, dtype=str)
    assert list(notes.columns) == ["stay", "text"]
    assert notes["stay"].is_unique and set(notes["stay"]) == set(small.stays.index)


def test_split_is_by_patient_and_stays_are_longitudinal(small):
    train = set(small.stays.loc[small.stays["split"] == "train", "subject"])
    test = set(small.stays.loc[small.stays["split"] == "test", "subject"])
    assert not train & test
    assert len(test) == round(0.2 * SMALL["num_patients"])
    assert len(train | test) == SMALL["num_patients"]
    episodes = small.stays.groupby("subject")["episode"].agg(["min", "max", "count"])
    assert (episodes["min"] == 1).all() and (episodes["max"] == episodes["count"]).all()
    assert episodes["count"].max() <= 4 and (episodes["count"] > 1).any()


def test_summary_agrees_with_files(small):
    summary = small.summary
    labels = small.stays[list(PHENOTYPE_LABELS)]
    assert summary.num_stays == len(small.stays)
    assert summary.num_patients == small.stays["subject"].nunique()
    assert summary.l_avg == pytest.approx(labels.sum(axis=1).mean())
    assert summary.prevalence[LIPID] == pytest.approx(labels[LIPID].mean())
    assert summary.split_sizes["test"] == (small.stays["split"] == "test").sum()
    assert summary.num_series_rows == len(small.series)
    marker = json.loads((small.root / "synthetic_cohort.json").read_text())
    assert marker["complete"] is True and marker["parameters"]["seed"] == SMALL["seed"]


# --- label structure --------------------------------------------------------------------------
def test_label_cardinality_and_prevalence_pattern(moderate):
    labels = moderate.stays[list(PHENOTYPE_LABELS)]
    assert 3.5 <= labels.sum(axis=1).mean() <= 6.0
    prevalence = labels.mean()
    for common in ("Essential hypertension", LIPID, "Cardiac dysrhythmias",
                   "Fluid and electrolyte disorders"):
        assert prevalence[common] > 0.2, common
    for rare in ("Pleurisy; pneumothorax; pulmonary collapse", "Other upper respiratory disease"):
        assert prevalence[rare] < 0.12, rare
    assert (prevalence > 0).all()


def _persistence(stays: pd.DataFrame, labels: list[str]) -> float:
    """P(label in stay k+1 | label in stay k), pooled over the given labels."""
    ordered = stays.sort_values(["subject", "episode"])
    following = ordered.groupby("subject")[labels].shift(-1)
    has_next = following.notna().all(axis=1)
    current = ordered.loc[has_next, labels].to_numpy()
    after = following.loc[has_next].to_numpy()
    return float((current * after).sum() / current.sum())


def test_chronic_labels_persist_across_stays_far_more_than_acute(moderate):
    chronic = _persistence(moderate.stays, CHRONIC)
    acute = _persistence(moderate.stays, ACUTE)
    assert chronic > 0.75
    assert chronic - acute > 0.4, (chronic, acute)


def test_comorbidity_couplings(moderate):
    labels = moderate.stays[list(PHENOTYPE_LABELS)].astype(bool)

    def lift(cause: str, effect: str) -> float:
        return labels.loc[labels[cause], effect].mean() / labels.loc[~labels[cause], effect].mean()

    assert lift("Septicemia (except in labor)", "Shock") > 3.0
    assert lift("Septicemia (except in labor)", "Acute and unspecified renal failure") > 1.5
    assert lift("Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
                "Respiratory failure; insufficiency; arrest (adult)") > 2.0
    assert lift("Chronic kidney disease",
                "Hypertension with complications and secondary hypertension") > 3.0


# --- physiology -------------------------------------------------------------------------------
def _gap(means: pd.DataFrame, label: str | pd.Series, variable: str) -> float:
    group = means[label] if isinstance(label, str) else label
    return means.loc[group == 1, variable].mean() - means.loc[group == 0, variable].mean()


def test_vitals_respond_to_conditions(stay_means):
    diabetic = (stay_means["Diabetes mellitus with complications"]
                | stay_means["Diabetes mellitus without complication"])
    assert _gap(stay_means, "Essential hypertension", "Systolic blood pressure") > 6.0
    assert _gap(stay_means, diabetic, "Glucose") > 30.0
    assert _gap(stay_means, "Septicemia (except in labor)", "Heart Rate") > 8.0
    assert _gap(stay_means, "Septicemia (except in labor)", "Temperature") > 0.4
    assert _gap(stay_means, "Shock", "Systolic blood pressure") < -12.0
    assert _gap(stay_means, "Respiratory failure; insufficiency; arrest (adult)",
                "Oxygen saturation") < -2.0
    assert _gap(stay_means, "Acute and unspecified renal failure", "pH") < -0.02


def test_fio2_charted_mostly_on_oxygen_and_gcs_lower_after_stroke(moderate):
    series = moderate.series
    failure = moderate.stays["Respiratory failure; insufficiency; arrest (adult)"]
    charted = (series["Fraction inspired oxygen"] != "").groupby(series["stay"]).any()
    charted = charted.reindex(moderate.stays.index)
    assert charted[failure == 1].mean() > charted[failure == 0].mean() + 0.3
    verbal = series["Glascow coma scale verbal response"]
    oriented = verbal[verbal != ""].isin(["Oriented", "5 Oriented"]).groupby(
        series.loc[verbal != "", "stay"]).mean()
    stroke = moderate.stays.loc[oriented.index, "Acute cerebrovascular disease"]
    assert oriented[stroke == 1].mean() < oriented[stroke == 0].mean() - 0.2


def test_some_stays_have_only_height_and_weight(moderate):
    others = [name for name in VARIABLE_NAMES if name not in ("Height", "Weight")]
    measured = (moderate.series[others] != "").any(axis=1).groupby(moderate.series["stay"]).any()
    share = 1.0 - measured.mean()
    assert 0.005 <= share <= 0.05


# --- notes ------------------------------------------------------------------------------------
def test_note_share_and_length(moderate):
    text = moderate.stays["text"]
    assert 0.08 <= (text == "").mean() <= 0.18
    sentences = text[text != ""].str.count(r"\.(?:\s|$)")
    assert sentences.min() >= 3 and sentences.max() <= 8


def test_lipid_is_evidenced_in_notes_not_in_vitals(moderate, stay_means):
    """Documented note-only label: lipid disorders are named (or a statin is) in most positive
    notes, never in negative ones, and have no vital-sign signature: in an OLS of each stay's
    mean vital on all 25 labels the lipid coefficient stays small, while positive controls
    (hypertension -> SBP, diabetes -> glucose, sepsis -> temperature) are large."""
    stays = moderate.stays[moderate.stays["text"] != ""]
    mentioned = stays["text"].str.contains(LIPID_WORDS)
    positive = stays[LIPID] == 1
    assert mentioned[positive & (stays["episode"] == 1)].mean() > 0.7
    assert mentioned[~positive].mean() < 0.02
    vitals = ["Diastolic blood pressure", "Glucose", "Heart Rate", "Mean blood pressure",
              "Oxygen saturation", "Respiratory rate", "Systolic blood pressure", "Temperature",
              "pH"]
    coefficients = {}
    for variable in vitals:
        rows = stay_means[variable].notna()
        design = stay_means.loc[rows, list(PHENOTYPE_LABELS)].to_numpy(dtype=float)
        outcome = stay_means.loc[rows, variable].to_numpy()
        fit = LinearRegression().fit(design, outcome)
        coefficients[variable] = pd.Series(fit.coef_ / outcome.std(), index=PHENOTYPE_LABELS)
    assert max(abs(c[LIPID]) for c in coefficients.values()) < 0.3
    assert coefficients["Systolic blood pressure"]["Essential hypertension"] > 0.6
    assert coefficients["Glucose"]["Diabetes mellitus without complication"] > 0.6
    assert coefficients["Temperature"]["Septicemia (except in labor)"] > 0.6


def test_chronic_conditions_are_named_mostly_in_the_first_stay(moderate):
    stays = moderate.stays[(moderate.stays["text"] != "") & (moderate.stays[LIPID] == 1)]
    mentioned = stays["text"].str.contains(LIPID_WORDS)
    first = mentioned[stays["episode"] == 1].mean()
    later = mentioned[stays["episode"] > 1].mean()
    assert first - later > 0.25, (first, later)


def test_sepsis_is_rarely_named_but_visible_in_vitals(moderate, stay_means):
    stays = moderate.stays[moderate.stays["text"] != ""]
    named = stays["text"].str.contains(r"\bsep(?:sis|tic)\b", case=False, regex=True)
    septic = stays["Septicemia (except in labor)"] == 1
    assert named[septic].mean() < 0.5
    assert _gap(stay_means, "Septicemia (except in labor)", "Temperature") > 0.4


# --- determinism and directory safety -----------------------------------------------------------
def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    arguments = {"num_patients": 40, "max_hours": 16}
    generate_synthetic_cohort(tmp_path / "a", seed=3, **arguments)
    generate_synthetic_cohort(tmp_path / "b", seed=3, **arguments)
    generate_synthetic_cohort(tmp_path / "c", seed=4, **arguments)
    first, second, other = (_file_bytes(tmp_path / name) for name in "abc")
    assert first == second
    assert first != other
    assert (first["train/listfile.csv"] != other["train/listfile.csv"]
            or first["notes.csv"] != other["notes.csv"])


def test_refuses_foreign_directory_but_replaces_its_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_synthetic_cohort(foreign, num_patients=10, max_hours=12)
    generate_synthetic_cohort(foreign, num_patients=10, max_hours=12, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "user data"
    (foreign / "train" / "stale_episode1_timeseries.csv").write_text("stale")
    summary = generate_synthetic_cohort(foreign, num_patients=12, max_hours=12)  # own output
    assert not (foreign / "train" / "stale_episode1_timeseries.csv").exists()
    listed = sum(len(pd.read_csv(foreign / s / "listfile.csv")) for s in ("train", "test"))
    assert listed == summary.num_stays == len(list(foreign.rglob("*_timeseries.csv")))


@pytest.mark.parametrize("arguments", [{"num_patients": 1}, {"test_fraction": 1.0},
                                       {"max_hours": 2}, {"note_probability": 1.5}])
def test_rejects_invalid_arguments(tmp_path, arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        generate_synthetic_cohort(tmp_path / "out", **arguments)
