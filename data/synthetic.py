"""Seeded generator of the embedded default cohort (METHOD §1, §9, §10; ARCHITECTURE §3).

`generate_synthetic_cohort(out_dir)` writes a longitudinal, multimodal phenotyping cohort in
the file layout of the mimic3-benchmarks phenotyping extract, so the default pipeline runs the
very reader a MIMIC user runs:

```
OUT/train/listfile.csv        stay,period_length,<25 labels of miracl_grid.data.schema.PHENOTYPE_LABELS> (0/1)
OUT/test/listfile.csv         same columns; the split is by patient (no patient on both sides)
OUT/<split>/<subject>_episode<k>_timeseries.csv
                              header "Hours,<17 miracl_grid.data.schema.VARIABLE_NAMES>"; empty cell = not
                              measured; categorical cells are exactly the strings of
                              miracl_grid.data.schema.VARIABLES[i].categories; Hours >= 0, ascending,
                              <= period_length; every file has at least one row
OUT/notes.csv                 stay,text (one row per stay; the empty string = no note; pandas
                              reads it back as NaN unless keep_default_na=False)
OUT/synthetic_cohort.json     marker: generator name, parameters, "complete" flag, summary
```

Generative model (everything vectorised with numpy over patients / stays; the only per-stay
Python loop is the one writing each series CSV):

1. Patients and stays. Each patient has 1-4 stays with probabilities .55/.25/.13/.07
   (episode 1 is the earliest), a sex, an age at the first stay (N(64, 16) clipped to 18-91;
   later stays are older by exponential gaps) and four continuous latent factors, N(0, 1):
   ``age`` (standardised age), ``metabolic``, ``pulmonary`` (smoking) and ``alcohol``. Each stay
   has two more: ``severity`` and ``infection``. Patients are split ~8:2 by a seeded
   permutation (`test_fraction`).

2. Labels: a logistic Bayesian network with a hand-written coupling matrix (`_NODES`),
   evaluated in topological order, each node vectorised over all patients or all stays:
   ``P(node = 1) = sigmoid(b + sum_parent coefficient * parent)``. The intercept ``b`` of every
   node is solved (scipy brentq) so that the expected stay-level prevalence matches the
   approximate mimic3-benchmarks phenotyping prevalence (`PREVALENCE`, L_avg ~ 4.1), so the
   couplings shape the correlations without moving the marginals.
   * Patient-level latent states (not labels): diabetes, hypertension, arrhythmia history,
     conduction-system disease.
   * CHRONIC labels (`CHRONIC_LABELS`) are sampled ONCE per patient as a latent truth and then
     coded in each stay with probability 0.9 (false coding 0.004), so they persist across a
     patient's stays: diabetes with / without complication (gated by latent diabetes; mutually
     exclusive in practice), essential hypertension / hypertension with complications (gated by
     latent hypertension; CKD pushes the coding to "with complications"), CKD (<- diabetes,
     hypertension), COPD, CHF, coronary atherosclerosis (<- lipids, diabetes, hypertension),
     lipid disorders, liver disease.
   * RECURRENT labels (`RECURRENT_LABELS`: dysrhythmia, conduction disorders) are per stay
     but dominated by a patient-level latent history.
   * ACUTE labels (`ACUTE_LABELS`) are per stay with couplings: sepsis -> pneumonia, shock,
     AKI, respiratory failure, fluid/electrolyte; pneumonia -> respiratory failure, pleurisy;
     COPD -> pneumonia, respiratory failure, other lower respiratory; liver -> GI hemorrhage;
     coronary -> AMI; GI hemorrhage / AMI -> shock; shock / CKD -> AKI; dysrhythmia -> stroke;
     a latent surgical admission -> complications, pleurisy.

3. Physiology: an hourly latent trajectory per stay and continuous variable on the grid
   0..max_hours, array (variables x stays x hours):
   ``x = population mean + patient baseline + sum_label effect * state * profile
         + diurnal sine (stay-specific clock) + AR(1) noise (scipy.signal.lfilter)``.
   Chronic states act with a constant profile; acute/recurrent ones from an onset hour (0 for
   70 % of stays) with an exponentially resolving profile (floor 0.35). Effects (`_EFFECTS`):
   hypertension -> SBP/DBP (and MBP) up; sepsis -> HR and temperature up, BP down; shock ->
   SBP/DBP down, HR up; diabetes -> glucose up; respiratory failure -> SpO2 down, RR up and
   mechanical ventilation (FiO2 charted and high); COPD -> SpO2 slightly down, RR up; AKI /
   CKD / shock -> pH down; stroke -> GCS down, SBP up; GI hemorrhage -> HR up, BP down. MBP is
   (SBP + 2 DBP) / 3 plus noise. GCS is a latent deficit (stroke, shock, sepsis, sedation on
   the ventilator) split into eye/motor/verbal scores; each patient is charted in one of two
   styles that mimic MIMIC-III's two systems: "MetaVision" ("4 Spontaneously", no total) or
   "CareVue" ("Spontaneously", total charted); intubated patients get the ET/Trach verbal code.
   Lipid disorders, coronary atherosclerosis, liver disease, conduction disorders, surgical
   complications and upper respiratory disease have NO vital-sign effect (note-only labels).

4. Sampling (masks over the grid, then one long event table sorted by stay and minute):
   vital "rounds" roughly hourly (minute jitter) carry HR, SBP/DBP/MBP, SpO2 and RR with
   per-variable dropout and 0-3 gaps of 2-6 h with no rounds; temperature every 4 h; GCS every
   4 h (every 2 h after a stroke); FiO2 only while on oxygen (nasal cannula episodes driven by
   COPD/pneumonia/CHF/sepsis, ventilation for 60 % of respiratory failures and 30 % of surgical
   admissions post-op); capillary refill rarely (3 % of rounds; "1.0" mostly in shock); glucose
   every 4 h for diabetics, 6-8 h otherwise; pH (blood gas) every 4-8 h mostly in ventilated,
   septic, shocked or AKI stays; height/weight once within the first hour. Times are whole
   minutes, written as hours rounded to 4 decimals. Missing EHR: ~2 % of stays
   (`ANTHROPOMETRIC_ONLY_FRACTION`) keep only their height/weight row (never an empty file).

5. Notes (3-8 sentences; a stay has one with probability `note_probability`, ~13 % empty):
   an opening sentence (age, sex, unit, a symptom-level complaint), then sentence slots: a
   mention of each coded label by name/abbreviation or by a medication that implies it
   (e.g. statins for lipids, lisinopril/metoprolol for hypertension, insulin for diabetes),
   negations or rule-outs of absent conditions ("No evidence of pneumonia."), a post-op
   sentence for surgical stays, and filler ("Family at bedside."); slots beyond the length cap
   are dropped by priority. Mention rates (`_NOTE_EVIDENCE`) make the evidence channels:
   * note-only: lipid disorders (name or statin; 0.9 in a patient's first stay), coronary
     atherosclerosis, liver disease, conduction disorders, complications, upper respiratory:
     no vital signature at all;
   * vitals-mostly: sepsis (named in 20 % of septic stays), shock (15 %), AKI (30 %),
     fluid/electrolyte (25 %), dysrhythmia (35 %), essential hypertension (BP; 55 % / 20 %);
   * earlier-stay-only: chronic labels are named in a patient's FIRST stay at 0.8-0.9 but in
     later stays only at 0.2-0.4, so a later stay's chronic label is often evidenced only by an
     earlier stay's note (and, for lipids/coronary/liver, nowhere in the stay itself).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.signal import lfilter
from scipy.special import expit

from miracl_grid.data.schema import PHENOTYPE_LABELS, TIMESERIES_HEADER, VARIABLE_NAMES, VARIABLES

logger = logging.getLogger(__name__)

GENERATOR_NAME = "miracl_grid.data.synthetic"
FORMAT_VERSION = 1
MARKER_FILE = "synthetic_cohort.json"
NOTES_FILE = "notes.csv"
LISTFILE = "listfile.csv"
SPLITS = ("train", "test")

STAYS_PER_PATIENT_PROBABILITIES = (0.55, 0.25, 0.13, 0.07)   # 1, 2, 3, 4 stays
CHRONIC_CODING_RATE = 0.90           # P(coded in a stay | chronic truth)
CHRONIC_FALSE_CODING_RATE = 0.004    # P(coded in a stay | no chronic truth)
ANTHROPOMETRIC_ONLY_FRACTION = 0.02  # stays whose series holds only height/weight

# Short whole-word keys for the 25 labels, in PHENOTYPE_LABELS (column) order.
LABEL_KEYS: dict[str, str] = {
    "renal_failure_acute": "Acute and unspecified renal failure",
    "stroke": "Acute cerebrovascular disease",
    "myocardial_infarction": "Acute myocardial infarction",
    "dysrhythmia": "Cardiac dysrhythmias",
    "kidney_disease_chronic": "Chronic kidney disease",
    "copd": "Chronic obstructive pulmonary disease and bronchiectasis",
    "complication": "Complications of surgical procedures or medical care",
    "conduction": "Conduction disorders",
    "heart_failure": "Congestive heart failure; nonhypertensive",
    "coronary": "Coronary atherosclerosis and other heart disease",
    "diabetes_complicated": "Diabetes mellitus with complications",
    "diabetes_uncomplicated": "Diabetes mellitus without complication",
    "lipid": "Disorders of lipid metabolism",
    "hypertension_essential": "Essential hypertension",
    "fluid_electrolyte": "Fluid and electrolyte disorders",
    "gastrointestinal_hemorrhage": "Gastrointestinal hemorrhage",
    "hypertension_complicated": "Hypertension with complications and secondary hypertension",
    "liver": "Other liver diseases",
    "respiratory_lower": "Other lower respiratory disease",
    "respiratory_upper": "Other upper respiratory disease",
    "pleurisy": "Pleurisy; pneumothorax; pulmonary collapse",
    "pneumonia": "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
    "respiratory_failure": "Respiratory failure; insufficiency; arrest (adult)",
    "sepsis": "Septicemia (except in labor)",
    "shock": "Shock",
}
assert tuple(LABEL_KEYS.values()) == PHENOTYPE_LABELS
_KEY_INDEX = {key: index for index, key in enumerate(LABEL_KEYS)}

# Approximate stay-level prevalence of the mimic3-benchmarks phenotyping labels (sum ~ 4.1).
PREVALENCE: dict[str, float] = {
    "renal_failure_acute": 0.214, "stroke": 0.075, "myocardial_infarction": 0.103,
    "dysrhythmia": 0.321, "kidney_disease_chronic": 0.134, "copd": 0.131, "complication": 0.207,
    "conduction": 0.073, "heart_failure": 0.268, "coronary": 0.302,
    "diabetes_complicated": 0.094, "diabetes_uncomplicated": 0.193, "lipid": 0.291,
    "hypertension_essential": 0.419, "fluid_electrolyte": 0.269,
    "gastrointestinal_hemorrhage": 0.072, "hypertension_complicated": 0.133, "liver": 0.089,
    "respiratory_lower": 0.052, "respiratory_upper": 0.040, "pleurisy": 0.087,
    "pneumonia": 0.139, "respiratory_failure": 0.181, "sepsis": 0.143, "shock": 0.082,
}


@dataclass(frozen=True)
class _Node:
    """One binary node of the label network: level "patient" or "stay"; kind "latent" (not a
    label), "chronic" (patient truth, coded per stay) or "stay" (a per-stay label)."""

    key: str
    level: str
    kind: str
    prevalence: float
    parents: dict[str, float]


_NODES: tuple[_Node, ...] = (
    # patient-level latent states
    _Node("diabetes", "patient", "latent", 0.34, {"metabolic": 1.3, "age": 0.3}),
    _Node("hypertension", "patient", "latent", 0.62, {"metabolic": 0.9, "age": 0.9}),
    _Node("arrhythmia_history", "patient", "latent", 0.20, {"age": 1.0}),
    _Node("conduction_history", "patient", "latent", 0.06, {"age": 0.8}),
    # chronic labels (patient-level truth)
    _Node("lipid", "patient", "chronic", PREVALENCE["lipid"],
          {"metabolic": 1.2, "age": 0.5, "diabetes": 0.8}),
    _Node("kidney_disease_chronic", "patient", "chronic", PREVALENCE["kidney_disease_chronic"],
          {"diabetes": 1.3, "hypertension": 1.3, "age": 0.6}),
    _Node("diabetes_complicated", "patient", "chronic", PREVALENCE["diabetes_complicated"],
          {"diabetes": 10.0, "kidney_disease_chronic": 1.5}),
    _Node("diabetes_uncomplicated", "patient", "chronic", PREVALENCE["diabetes_uncomplicated"],
          {"diabetes": 10.0, "diabetes_complicated": -5.0}),
    _Node("hypertension_complicated", "patient", "chronic",
          PREVALENCE["hypertension_complicated"],
          {"hypertension": 10.0, "kidney_disease_chronic": 3.5}),
    _Node("hypertension_essential", "patient", "chronic", PREVALENCE["hypertension_essential"],
          {"hypertension": 10.0, "hypertension_complicated": -6.0}),
    _Node("copd", "patient", "chronic", PREVALENCE["copd"], {"pulmonary": 1.8, "age": 0.5}),
    _Node("coronary", "patient", "chronic", PREVALENCE["coronary"],
          {"age": 0.8, "metabolic": 0.4, "diabetes": 0.7, "hypertension": 0.6, "lipid": 1.0}),
    _Node("heart_failure", "patient", "chronic", PREVALENCE["heart_failure"],
          {"coronary": 1.0, "hypertension": 0.5, "age": 0.6, "diabetes": 0.4,
           "arrhythmia_history": 0.7, "kidney_disease_chronic": 0.6}),
    _Node("liver", "patient", "chronic", PREVALENCE["liver"], {"alcohol": 2.0, "metabolic": 0.3}),
    # stay-level latent admission type
    _Node("surgical", "stay", "latent", 0.35, {"age": 0.2}),
    # per-stay labels, topological order
    _Node("sepsis", "stay", "stay", PREVALENCE["sepsis"],
          {"infection": 1.6, "severity": 0.8, "age": 0.3, "diabetes": 0.3,
           "kidney_disease_chronic": 0.3, "liver": 0.4}),
    _Node("pneumonia", "stay", "stay", PREVALENCE["pneumonia"],
          {"infection": 1.0, "pulmonary": 0.5, "copd": 0.8, "age": 0.3, "sepsis": 0.9}),
    _Node("respiratory_lower", "stay", "stay", PREVALENCE["respiratory_lower"],
          {"copd": 1.2, "pulmonary": 0.6}),
    _Node("respiratory_upper", "stay", "stay", PREVALENCE["respiratory_upper"],
          {"infection": 0.6, "pulmonary": 0.3}),
    _Node("pleurisy", "stay", "stay", PREVALENCE["pleurisy"],
          {"surgical": 1.2, "pneumonia": 0.7, "pulmonary": 0.4, "severity": 0.3}),
    _Node("gastrointestinal_hemorrhage", "stay", "stay",
          PREVALENCE["gastrointestinal_hemorrhage"], {"liver": 1.8, "alcohol": 0.4, "age": 0.3}),
    _Node("myocardial_infarction", "stay", "stay", PREVALENCE["myocardial_infarction"],
          {"coronary": 2.0, "diabetes": 0.3, "lipid": 0.3, "severity": 0.4}),
    _Node("dysrhythmia", "stay", "stay", PREVALENCE["dysrhythmia"],
          {"arrhythmia_history": 3.5, "age": 0.4, "sepsis": 0.6, "myocardial_infarction": 0.8,
           "heart_failure": 0.6, "surgical": 0.5}),
    _Node("conduction", "stay", "stay", PREVALENCE["conduction"],
          {"conduction_history": 4.5, "myocardial_infarction": 0.6, "age": 0.3}),
    _Node("stroke", "stay", "stay", PREVALENCE["stroke"],
          {"hypertension": 0.6, "dysrhythmia": 0.9, "age": 0.5, "diabetes": 0.3}),
    _Node("respiratory_failure", "stay", "stay", PREVALENCE["respiratory_failure"],
          {"pneumonia": 1.6, "copd": 1.0, "sepsis": 1.0, "heart_failure": 0.6, "pleurisy": 0.8,
           "severity": 0.8, "stroke": 0.5}),
    _Node("shock", "stay", "stay", PREVALENCE["shock"],
          {"sepsis": 2.8, "gastrointestinal_hemorrhage": 1.2, "myocardial_infarction": 1.0,
           "severity": 1.0}),
    _Node("renal_failure_acute", "stay", "stay", PREVALENCE["renal_failure_acute"],
          {"sepsis": 1.3, "shock": 1.3, "kidney_disease_chronic": 1.5, "heart_failure": 0.4,
           "severity": 0.5, "diabetes": 0.3}),
    _Node("fluid_electrolyte", "stay", "stay", PREVALENCE["fluid_electrolyte"],
          {"renal_failure_acute": 1.0, "sepsis": 0.7, "kidney_disease_chronic": 0.5,
           "diabetes": 0.3, "liver": 0.6, "gastrointestinal_hemorrhage": 0.4, "severity": 0.3}),
    _Node("complication", "stay", "stay", PREVALENCE["complication"],
          {"surgical": 2.5, "severity": 0.3}),
)
_PATIENT_FACTORS = ("age", "metabolic", "pulmonary", "alcohol")
_STAY_FACTORS = ("severity", "infection")

CHRONIC_LABELS: tuple[str, ...] = tuple(
    LABEL_KEYS[n.key] for n in _NODES if n.kind == "chronic")
RECURRENT_LABELS: tuple[str, ...] = (LABEL_KEYS["dysrhythmia"], LABEL_KEYS["conduction"])
ACUTE_LABELS: tuple[str, ...] = tuple(
    label for label in PHENOTYPE_LABELS
    if label not in CHRONIC_LABELS and label not in RECURRENT_LABELS)
assert sorted(n.key for n in _NODES if n.kind in ("chronic", "stay")) == sorted(LABEL_KEYS)

# --- physiology -------------------------------------------------------------------------------
# Continuous latent variables: mean, patient sd, AR(1) sd, AR(1) phi, measurement sd, diurnal
# amplitude, clip low, clip high.
_CONTINUOUS: dict[str, tuple[float, ...]] = {
    "heart_rate": (84.0, 8.0, 6.0, 0.85, 2.0, 3.0, 30.0, 200.0),
    "systolic": (118.0, 9.0, 8.0, 0.80, 4.0, 5.0, 60.0, 230.0),
    "diastolic": (60.0, 6.0, 5.0, 0.80, 3.0, 3.0, 25.0, 130.0),
    "saturation": (97.3, 0.8, 1.0, 0.70, 0.8, 0.0, 70.0, 100.0),
    "respiratory_rate": (18.0, 2.0, 2.2, 0.70, 1.5, 1.0, 6.0, 45.0),
    "temperature": (36.8, 0.2, 0.3, 0.90, 0.1, 0.25, 34.5, 41.0),
    "glucose": (122.0, 12.0, 18.0, 0.60, 8.0, 0.0, 40.0, 600.0),
    "ph": (7.39, 0.015, 0.025, 0.80, 0.01, 0.0, 6.95, 7.60),
    "gcs_deficit": (-0.4, 0.4, 0.7, 0.90, 0.0, 0.0, 0.0, 12.0),
}
_CONTINUOUS_KEYS = tuple(_CONTINUOUS)

# Effect of each condition (truth for chronic labels) on each latent variable, natural units.
_EFFECTS: dict[str, dict[str, float]] = {
    "heart_rate": {"sepsis": 15, "shock": 10, "dysrhythmia": 9, "myocardial_infarction": 4,
                   "respiratory_failure": 6, "pneumonia": 5, "gastrointestinal_hemorrhage": 10,
                   "fluid_electrolyte": 2, "pleurisy": 4, "heart_failure": -2,
                   "renal_failure_acute": 2},
    "systolic": {"hypertension_essential": 18, "hypertension_complicated": 20,
                 "kidney_disease_chronic": 4, "stroke": 14, "shock": -30, "sepsis": -8,
                 "gastrointestinal_hemorrhage": -12, "heart_failure": -4,
                 "myocardial_infarction": -3},
    "diastolic": {"hypertension_essential": 9, "hypertension_complicated": 8, "stroke": 7,
                  "shock": -15, "sepsis": -5, "gastrointestinal_hemorrhage": -6,
                  "heart_failure": -2},
    "saturation": {"respiratory_failure": -4.5, "copd": -2.5, "pneumonia": -1.8,
                   "pleurisy": -1.5, "heart_failure": -1.0, "respiratory_lower": -0.8,
                   "sepsis": -0.5},
    "respiratory_rate": {"copd": 3, "respiratory_failure": 6, "pneumonia": 3.5, "sepsis": 3,
                         "pleurisy": 3, "respiratory_lower": 1.5, "shock": 2,
                         "heart_failure": 1.5},
    "temperature": {"sepsis": 1.2, "pneumonia": 0.7, "shock": -0.3, "respiratory_lower": 0.2},
    "glucose": {"diabetes_uncomplicated": 50, "diabetes_complicated": 70, "sepsis": 20,
                "shock": 15},
    "ph": {"renal_failure_acute": -0.06, "kidney_disease_chronic": -0.03, "shock": -0.08,
           "sepsis": -0.03, "respiratory_failure": -0.04, "copd": -0.01,
           "diabetes_complicated": -0.03, "fluid_electrolyte": -0.01},
    "gcs_deficit": {"stroke": 5.0, "shock": 2.0, "sepsis": 1.0, "respiratory_failure": 1.0,
                    "renal_failure_acute": 0.3, "fluid_electrolyte": 0.5},
}
assert set(_EFFECTS) == set(_CONTINUOUS)
NOTE_ONLY_LABELS: tuple[str, ...] = tuple(
    label for key, label in LABEL_KEYS.items()
    if all(key not in effects for effects in _EFFECTS.values()))
_ACUTE_PROFILE_FLOOR = 0.35
_VENTILATION_SEDATION = 4.0   # GCS deficit added while ventilated

_COLUMN = {name: index for index, name in enumerate(VARIABLE_NAMES)}
# Output formatting: decimals for numeric columns ("int" = integer string).
_DECIMALS: dict[str, int | str] = {
    "Diastolic blood pressure": 0, "Fraction inspired oxygen": 2, "Glucose": 0,
    "Heart Rate": "int", "Height": 1, "Mean blood pressure": 0, "Oxygen saturation": 0,
    "Respiratory rate": "int", "Systolic blood pressure": 0, "Temperature": 1, "Weight": 1,
    "pH": 2,
}
assert set(_DECIMALS) == {v.name for v in VARIABLES if not v.is_categorical}


def _category_codes(variable: str, values: dict[int, str]) -> np.ndarray:
    """Lookup score -> index in the variable's schema category list (raises if not there)."""
    categories = VARIABLES[_COLUMN[variable]].categories
    table = np.full(max(values) + 1, -1, dtype=np.int64)
    for score, text in values.items():
        table[score] = categories.index(text)
    return table


# GCS charting styles: 0 = MetaVision (numbered text, no total), 1 = CareVue (plain text + total).
# Verbal score 0 encodes "intubated" (ET/Trach); it counts as 1 in the total.
_GCS_EYE = np.stack([
    _category_codes("Glascow coma scale eye opening",
                    {4: "4 Spontaneously", 3: "3 To speech", 2: "2 To pain", 1: "1 No Response"}),
    _category_codes("Glascow coma scale eye opening",
                    {4: "Spontaneously", 3: "To Speech", 2: "To Pain", 1: "None"})])
_GCS_MOTOR = np.stack([
    _category_codes("Glascow coma scale motor response",
                    {6: "6 Obeys Commands", 5: "5 Localizes Pain", 4: "4 Flex-withdraws",
                     3: "3 Abnorm flexion", 2: "2 Abnorm extensn", 1: "1 No Response"}),
    _category_codes("Glascow coma scale motor response",
                    {6: "Obeys Commands", 5: "Localizes Pain", 4: "Flex-withdraws",
                     3: "Abnormal Flexion", 2: "Abnormal extension", 1: "No response"})])
_GCS_VERBAL = np.stack([
    _category_codes("Glascow coma scale verbal response",
                    {5: "5 Oriented", 4: "4 Confused", 3: "3 Inapprop words",
                     2: "2 Incomp sounds", 1: "1 No Response", 0: "1.0 ET/Trach"}),
    _category_codes("Glascow coma scale verbal response",
                    {5: "Oriented", 4: "Confused", 3: "Inappropriate Words",
                     2: "Incomprehensible sounds", 1: "No Response", 0: "No Response-ETT"})])
_GCS_TOTAL = _category_codes("Glascow coma scale total", {t: str(t) for t in range(3, 16)})
_CAPILLARY = _category_codes("Capillary refill rate", {0: "0.0", 1: "1.0"})

# --- notes ------------------------------------------------------------------------------------
# Per label: (mention rate in a patient's first stay, in later stays, share via medication).
_NOTE_EVIDENCE: dict[str, tuple[float, float, float]] = {
    "lipid": (0.90, 0.40, 0.5), "coronary": (0.85, 0.35, 0.3), "liver": (0.85, 0.35, 0.3),
    "conduction": (0.70, 0.70, 0.0), "complication": (0.75, 0.75, 0.0),
    "respiratory_upper": (0.70, 0.70, 0.0),
    "sepsis": (0.20, 0.20, 0.3), "shock": (0.15, 0.15, 0.4),
    "renal_failure_acute": (0.30, 0.30, 0.0), "fluid_electrolyte": (0.25, 0.25, 0.0),
    "dysrhythmia": (0.35, 0.35, 0.4), "hypertension_essential": (0.55, 0.20, 0.5),
    "hypertension_complicated": (0.60, 0.25, 0.3),
    "diabetes_uncomplicated": (0.85, 0.35, 0.4), "diabetes_complicated": (0.85, 0.35, 0.2),
    "copd": (0.85, 0.35, 0.3), "heart_failure": (0.80, 0.35, 0.3),
    "kidney_disease_chronic": (0.80, 0.35, 0.2),
    "pneumonia": (0.75, 0.75, 0.3), "stroke": (0.80, 0.80, 0.0),
    "myocardial_infarction": (0.75, 0.75, 0.3), "gastrointestinal_hemorrhage": (0.80, 0.80, 0.2),
    "respiratory_failure": (0.50, 0.50, 0.0), "pleurisy": (0.50, 0.50, 0.0),
    "respiratory_lower": (0.60, 0.60, 0.0),
}
assert set(_NOTE_EVIDENCE) == set(LABEL_KEYS)
_MENTIONS: dict[str, tuple[str, ...]] = {
    "renal_failure_acute": ("Creatinine up from baseline, consistent with acute kidney injury.",
                            "AKI, likely prerenal; renal following.",
                            "Acute renal failure with poor urine output."),
    "stroke": ("CT head shows acute left MCA infarct.",
               "Admitted with acute ischemic stroke, neuro checks q2h.",
               "CVA with right-sided weakness."),
    "myocardial_infarction": ("Troponin elevated, consistent with NSTEMI.",
                              "STEMI, taken emergently to the cath lab.",
                              "Acute MI, cardiology consulted."),
    "dysrhythmia": ("Atrial fibrillation with RVR, rate controlled.", "Paroxysmal afib.",
                    "Runs of SVT overnight."),
    "kidney_disease_chronic": ("Known CKD stage 4.", "History of chronic kidney disease.",
                               "ESRD on hemodialysis MWF."),
    "copd": ("History of COPD on home oxygen.", "COPD with chronic bronchitis.",
             "Known bronchiectasis."),
    "complication": ("Post-op course complicated by wound infection.",
                     "Anastomotic leak after recent surgery.",
                     "Transfusion reaction overnight."),
    "conduction": ("First-degree AV block on ECG.", "Known RBBB.",
                   "Complete heart block, pacemaker placed."),
    "heart_failure": ("Hx CHF with EF 25%.", "Congestive heart failure, volume overloaded.",
                      "Systolic heart failure."),
    "coronary": ("CAD s/p stent to LAD.", "History of coronary artery disease.",
                 "Prior CABG for coronary disease."),
    "diabetes_complicated": ("Diabetic nephropathy and neuropathy.",
                             "Type 2 diabetes complicated by retinopathy.",
                             "DKA on admission."),
    "diabetes_uncomplicated": ("Pt with hx of type 2 diabetes on insulin.",
                               "DM2, diet controlled.", "History of diabetes mellitus."),
    "lipid": ("History of hyperlipidemia.", "HLD.", "Hypercholesterolemia."),
    "hypertension_essential": ("PMH notable for HTN.", "History of hypertension.",
                               "Essential hypertension, poorly controlled."),
    "fluid_electrolyte": ("Hyponatremia, fluid restricted.", "Hypokalemia, repleted.",
                          "Hypomagnesemia repleted IV."),
    "gastrointestinal_hemorrhage": ("Melena with Hct drop, GI consulted for EGD.",
                                    "Upper GI bleed.", "BRBPR, transfused 2 units PRBC."),
    "hypertension_complicated": ("Hypertensive kidney disease.",
                                 "Hypertensive heart and kidney disease.",
                                 "Secondary hypertension."),
    "liver": ("Alcoholic cirrhosis.", "History of cirrhosis with ascites.",
              "Hepatitis C with chronic liver disease."),
    "respiratory_lower": ("Bronchospasm, nebs given.", "Hemoptysis, pulmonary following.",
                          "Lung nodule noted on CT chest."),
    "respiratory_upper": ("Sinusitis.", "Epistaxis, packed by ENT.", "Upper airway edema."),
    "pleurisy": ("Small left pneumothorax on CXR.", "Right pleural effusion, s/p thoracentesis.",
                 "Bibasilar atelectasis."),
    "pneumonia": ("CXR with RLL infiltrate concerning for pneumonia.", "Aspiration pneumonia.",
                  "PNA, on vanc/zosyn."),
    "respiratory_failure": ("Intubated for hypoxemic respiratory failure.",
                            "Acute respiratory failure, on BiPAP.",
                            "Hypercarbic respiratory insufficiency."),
    "sepsis": ("Septic from urinary source.", "Sepsis, cultures pending.",
               "Meets SIRS criteria, treated for sepsis."),
    "shock": ("Septic shock on norepinephrine.", "Hypotensive requiring pressors.",
              "Cardiogenic shock."),
}
_MEDICATIONS: dict[str, tuple[str, ...]] = {
    "myocardial_infarction": ("Started on heparin drip for ACS.",),
    "dysrhythmia": ("On amiodarone drip.", "Anticoagulated with apixaban."),
    "kidney_disease_chronic": ("Renal diet, sevelamer with meals.",),
    "copd": ("Continued on tiotropium and albuterol nebs.",),
    "heart_failure": ("Diuresed with IV furosemide.",),
    "coronary": ("Continued on aspirin and clopidogrel.",),
    "diabetes_complicated": ("Insulin drip per protocol.",),
    "diabetes_uncomplicated": ("Continued on metformin.", "Insulin sliding scale."),
    "lipid": ("Home meds include atorvastatin.", "Continued on simvastatin."),
    "hypertension_essential": ("Started on lisinopril and metoprolol.",
                               "Home amlodipine resumed."),
    "hypertension_complicated": ("Started on lisinopril and metoprolol.",),
    "gastrointestinal_hemorrhage": ("On pantoprazole drip.",),
    "liver": ("Continued on lactulose and rifaximin.",),
    "pneumonia": ("Started on ceftriaxone and azithromycin for CAP.",),
    "sepsis": ("Broad-spectrum antibiotics started after cultures.",),
    "shock": ("On levophed.",),
}
_NEGATIONS: dict[str, tuple[str, ...]] = {
    "renal_failure_acute": ("Renal function at baseline.",),
    "stroke": ("CT head negative for acute stroke.", "No focal neurologic deficits."),
    "myocardial_infarction": ("Troponins negative x2.", "No evidence of MI."),
    "dysrhythmia": ("Normal sinus rhythm on tele.",),
    "heart_failure": ("No signs of heart failure.",),
    "fluid_electrolyte": ("Electrolytes within normal limits.",),
    "gastrointestinal_hemorrhage": ("No signs of GI bleeding.", "Guaiac negative."),
    "pneumonia": ("No evidence of pneumonia.", "CXR clear."),
    "respiratory_failure": ("Breathing comfortably on room air.",),
    "sepsis": ("Afebrile, no signs of infection.",),
    "pleurisy": ("No pneumothorax.",),
}
_RULE_OUTS: dict[str, tuple[str, ...]] = {
    "pneumonia": ("Rule out pneumonia.",), "sepsis": ("Rule out sepsis.",),
    "myocardial_infarction": ("Rule out MI.",), "stroke": ("Rule out stroke.",),
}
_NEGATION_RATE = 0.06
_RULE_OUT_RATE = 0.03
# Opening complaint by the highest-priority present condition (last match wins in the loop).
_COMPLAINTS: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    (None, ("weakness", "altered mental status", "a fall at home")),
    ("surgical", ("post-operative monitoring",)),
    ("heart_failure", ("leg swelling and dyspnea",)),
    ("respiratory_failure", ("shortness of breath", "hypoxia")),
    ("pneumonia", ("cough and fever",)),
    ("sepsis", ("fever and hypotension", "rigors")),
    ("gastrointestinal_hemorrhage", ("melena", "hematemesis")),
    ("myocardial_infarction", ("chest pain",)),
    ("stroke", ("acute left-sided weakness", "slurred speech")),
)
_PROCEDURES = ("CABG", "AVR", "exploratory laparotomy", "hip replacement", "colectomy",
               "craniotomy", "Whipple")
_FILLER = ("Family at bedside.", "Full code.", "Plan discussed with team.",
           "Pain well controlled.", "Tolerating diet.", "Will continue to monitor.",
           "PT/OT following.", "Lines and drains intact.", "Ambulating with assistance.",
           "Skin intact.", "Social work involved.", "Sleeping comfortably overnight.")
_FILLER_SLOTS = 4
_MAX_SENTENCES = 8
_MIN_SENTENCES = 3

_STRING = np.dtypes.StringDType()


@dataclass
class SyntheticSummary:
    """What `generate_synthetic_cohort` wrote. `prevalence` maps label name -> share of stays."""

    num_stays: int
    num_patients: int
    l_avg: float
    prevalence: dict[str, float]
    split_sizes: dict[str, int]
    stays_per_patient: float
    empty_note_fraction: float
    anthropometric_only_fraction: float
    num_series_rows: int
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)

    def to_json_dict(self) -> dict:
        payload = asdict(self)
        payload["paths"] = {key: str(value) for key, value in self.paths.items()}
        return payload


# ============================================================================================
# 1. patients, stays, labels
# ============================================================================================
def _calibrated_draw(linear: np.ndarray, target: float, weights: np.ndarray,
                     uniforms: np.ndarray) -> np.ndarray:
    """Bernoulli draws with P = sigmoid(b + linear), b solved so the weighted mean P = target.

    linear, weights, uniforms: (n,) -> bool (n,)."""
    def excess(intercept: float) -> float:
        return float(np.average(expit(intercept + linear), weights=weights) - target)

    intercept = brentq(excess, -40.0, 40.0, xtol=1e-10)
    return uniforms < expit(intercept + linear)


def _sample_conditions(rng: np.random.Generator, stay_patient: np.ndarray,
                       stays_per_patient: np.ndarray, age_standardised: np.ndarray) -> dict:
    """Sample the label network (`_NODES`) for P patients and N stays.

    Returns dict with "state" {key: bool (P,) or (N,)} (truths and latent states),
    "truth" float (N, 25) physiological states, "labels" uint8 (N, 25) coded labels."""
    num_patients = stays_per_patient.shape[0]
    num_stays = stay_patient.shape[0]
    values: dict[str, np.ndarray] = {"age": age_standardised}
    for factor in _PATIENT_FACTORS[1:]:
        values[factor] = rng.standard_normal(num_patients)
    for factor in _STAY_FACTORS:
        values[factor] = rng.standard_normal(num_stays)
    levels = {key: "patient" for key in _PATIENT_FACTORS} | {key: "stay" for key in _STAY_FACTORS}
    patient_weights = stays_per_patient.astype(np.float64)
    stay_weights = np.ones(num_stays)
    for node in _NODES:
        size = num_patients if node.level == "patient" else num_stays
        linear = np.zeros(size)
        for parent, coefficient in node.parents.items():
            parent_value = values[parent].astype(np.float64)
            if node.level == "stay" and levels[parent] == "patient":
                parent_value = parent_value[stay_patient]
            elif node.level == "patient" and levels[parent] == "stay":
                raise AssertionError(f"patient node {node.key} has stay parent {parent}")
            linear += coefficient * parent_value
        target = node.prevalence
        if node.kind == "chronic":   # truth prevalence such that coded prevalence == target
            target = ((target - CHRONIC_FALSE_CODING_RATE)
                      / (CHRONIC_CODING_RATE - CHRONIC_FALSE_CODING_RATE))
        weights = patient_weights if node.level == "patient" else stay_weights
        values[node.key] = _calibrated_draw(linear, target, weights, rng.random(size))
        levels[node.key] = node.level

    truth = np.zeros((num_stays, len(LABEL_KEYS)))
    labels = np.zeros((num_stays, len(LABEL_KEYS)), dtype=np.uint8)
    coding_uniforms = rng.random((num_stays, len(LABEL_KEYS)))
    for key, column in _KEY_INDEX.items():
        state = values[key][stay_patient] if levels[key] == "patient" else values[key]
        truth[:, column] = state
        if levels[key] == "patient":
            rate = np.where(state, CHRONIC_CODING_RATE, CHRONIC_FALSE_CODING_RATE)
            labels[:, column] = coding_uniforms[:, column] < rate
        else:
            labels[:, column] = state
    return {"state": values, "level": levels, "truth": truth, "labels": labels}


# ============================================================================================
# 2. physiology on the hourly grid
# ============================================================================================
def _ar1(rng: np.random.Generator, shape: tuple[int, int], sd: float, phi: float) -> np.ndarray:
    """Stationary AR(1) noise along the last axis, (n, T)."""
    innovations = rng.standard_normal(shape) * sd
    innovations[:, 0] /= np.sqrt(1.0 - phi ** 2)
    return lfilter([np.sqrt(1.0 - phi ** 2)], [1.0, -phi], innovations, axis=-1)


def _latent_trajectories(rng: np.random.Generator, truth: np.ndarray, stay_patient: np.ndarray,
                         num_patients: int, period_hours: np.ndarray, num_hours: int) -> dict:
    """Hourly latent values of `_CONTINUOUS` variables, each (N, T) with T = num_hours.

    Also returns "profile" (N, 25, T) condition intensities and "onset" (N, 25) hours."""
    num_stays = truth.shape[0]
    hours = np.arange(num_hours, dtype=np.float64)
    chronic = np.array([LABEL_KEYS[key] in CHRONIC_LABELS for key in LABEL_KEYS])
    delayed = rng.random((num_stays, len(LABEL_KEYS))) >= 0.7
    onset = np.where(delayed, rng.random((num_stays, len(LABEL_KEYS)))
                     * 0.6 * period_hours[:, None], 0.0)
    onset[:, chronic] = 0.0
    resolution = rng.uniform(12.0, 60.0, (num_stays, len(LABEL_KEYS)))
    since_onset = hours[None, None, :] - onset[:, :, None]
    profile = np.where(since_onset >= 0.0,
                       _ACUTE_PROFILE_FLOOR + (1.0 - _ACUTE_PROFILE_FLOOR)
                       * np.exp(-np.clip(since_onset, 0.0, None) / resolution[:, :, None]),
                       0.0)
    profile[:, chronic, :] = 1.0
    intensity = truth[:, :, None] * profile                                    # (N, 25, T)
    effect_matrix = np.array([[_EFFECTS[variable].get(key, 0.0) for key in LABEL_KEYS]
                              for variable in _CONTINUOUS_KEYS])                # (V, 25)
    effects = np.tensordot(effect_matrix, intensity, axes=([1], [1]))               # (V, N, T)
    clock = rng.uniform(0.0, 24.0, num_stays)
    diurnal = np.sin(2.0 * np.pi * (hours[None, :] + clock[:, None] - 10.0) / 24.0)
    latent = {}
    for index, variable in enumerate(_CONTINUOUS_KEYS):
        mean, patient_sd, ar_sd, phi, _, amplitude, _, _ = _CONTINUOUS[variable]
        baseline = rng.normal(0.0, patient_sd, num_patients)[stay_patient]
        latent[variable] = (mean + baseline[:, None] + effects[index] + amplitude * diurnal
                            + _ar1(rng, (num_stays, num_hours), ar_sd, phi))
    latent["gcs_deficit"] = np.maximum(latent["gcs_deficit"], 0.0)
    return {"latent": latent, "profile": profile, "onset": onset}


def _measure(rng: np.random.Generator, latent: np.ndarray, hour_index: np.ndarray,
             variable: str) -> np.ndarray:
    """Latent (N, T) read at integer hours (N, K) plus measurement noise, clipped: (N, K)."""
    _, _, _, _, measurement_sd, _, low, high = _CONTINUOUS[variable]
    values = np.take_along_axis(latent, hour_index, axis=1)
    values = values + rng.normal(0.0, measurement_sd, values.shape) if measurement_sd else values
    return np.clip(values, low, high)


# ============================================================================================
# 3. sampling schedules -> event blocks
# ============================================================================================
@dataclass
class _Block:
    """Candidate observation rows: minute (N, K) int, keep (N, K) bool, values (N, K, 17)."""

    minute: np.ndarray
    keep: np.ndarray
    values: np.ndarray


def _scheduled_times(rng: np.random.Generator, interval: np.ndarray, num_hours: int,
                     jitter_hours: float) -> tuple[np.ndarray, np.ndarray]:
    """Events every `interval` (N,) hours from a random phase: minutes (N, K), hour index (N, K)."""
    count = int(np.ceil(num_hours / interval.min())) + 1
    phase = rng.random(interval.shape[0]) * interval
    times = phase[:, None] + np.arange(count)[None, :] * interval[:, None]
    times = times + rng.normal(0.0, jitter_hours, times.shape)
    minutes = np.rint(np.clip(times, 0.0, None) * 60.0).astype(np.int64)
    hour_index = np.minimum(minutes // 60, num_hours - 1)
    return minutes, hour_index


def _sample_blocks(rng: np.random.Generator, conditions: dict, physiology: dict,
                   stay_patient: np.ndarray, num_patients: int, period_minutes: np.ndarray,
                   num_hours: int) -> tuple[list[_Block], dict]:
    """Build the observation blocks (rounds, glucose, blood gas, height/weight). Returns blocks
    and per-stay facts (ventilated, anthropometric_only)."""
    truth = conditions["truth"]
    state = conditions["state"]
    latent = physiology["latent"]
    num_stays = truth.shape[0]
    width = len(VARIABLE_NAMES)

    def has(key: str) -> np.ndarray:
        return truth[:, _KEY_INDEX[key]] > 0

    period_hours = period_minutes / 60.0
    hours = np.arange(num_hours)
    surgical = state["surgical"]

    # --- rounds: roughly hourly, with gaps ---------------------------------------------------
    round_minute = hours[None, :] * 60 + rng.integers(0, 21, (num_stays, num_hours))
    round_minute[:, 0] += rng.integers(1, 15, num_stays)
    gap_active = rng.random((num_stays, 3)) < 0.2
    gap_start = rng.integers(1, max(num_hours - 1, 2), (num_stays, 3))
    gap_length = rng.integers(2, 7, (num_stays, 3))
    in_gap = np.any(gap_active[:, :, None]
                    & (hours[None, None, :] >= gap_start[:, :, None])
                    & (hours[None, None, :] < (gap_start + gap_length)[:, :, None]), axis=1)
    round_keep = ((round_minute <= period_minutes[:, None]) & ~in_gap
                  & (rng.random((num_stays, num_hours)) < 0.97))
    hour_index = np.broadcast_to(hours, (num_stays, num_hours))
    values = np.full((num_stays, num_hours, width), np.nan)

    def observe(column: str, measured: np.ndarray, probability: float | np.ndarray) -> np.ndarray:
        mask = rng.random((num_stays, num_hours)) < probability
        values[:, :, _COLUMN[column]] = np.where(mask, measured, np.nan)
        return mask

    observe("Heart Rate", _measure(rng, latent["heart_rate"], hour_index, "heart_rate"), 0.98)
    systolic = _measure(rng, latent["systolic"], hour_index, "systolic")
    diastolic = np.minimum(_measure(rng, latent["diastolic"], hour_index, "diastolic"),
                           systolic - 15.0)
    blood_pressure = rng.random((num_stays, num_hours)) < 0.94
    values[:, :, _COLUMN["Systolic blood pressure"]] = np.where(blood_pressure, systolic, np.nan)
    values[:, :, _COLUMN["Diastolic blood pressure"]] = np.where(blood_pressure, diastolic, np.nan)
    mean_pressure = np.clip((systolic + 2.0 * diastolic) / 3.0
                            + rng.normal(0.0, 2.0, systolic.shape), 35.0, 160.0)
    observe("Mean blood pressure", np.where(blood_pressure, mean_pressure, np.nan), 0.97)
    observe("Oxygen saturation", _measure(rng, latent["saturation"], hour_index, "saturation"),
            0.95)
    observe("Respiratory rate",
            _measure(rng, latent["respiratory_rate"], hour_index, "respiratory_rate"), 0.93)
    temperature_phase = rng.integers(0, 4, num_stays)
    observe("Temperature", _measure(rng, latent["temperature"], hour_index, "temperature"),
            np.where((hours[None, :] - temperature_phase[:, None]) % 4 == 0, 0.9, 0.0))

    # --- oxygen and ventilation ----------------------------------------------------------------
    respiratory_failure = has("respiratory_failure")
    ventilated_rf = respiratory_failure & (rng.random(num_stays) < 0.6)
    rf_onset = physiology["onset"][:, _KEY_INDEX["respiratory_failure"]]
    rf_end = rf_onset + rng.uniform(0.5, 1.2, num_stays) * (period_hours - rf_onset)
    postop_vent = surgical & (rng.random(num_stays) < 0.3)
    postop_end = rng.uniform(2.0, 8.0, num_stays)
    ventilated = ((ventilated_rf[:, None] & (hours[None, :] >= rf_onset[:, None])
                   & (hours[None, :] < rf_end[:, None]))
                  | (postop_vent[:, None] & (hours[None, :] < postop_end[:, None])))
    cannula_logit = (-2.0 + 1.5 * has("copd") + 1.5 * has("pneumonia")
                     + 1.0 * has("heart_failure") + 0.8 * has("sepsis") + 1.0 * has("pleurisy")
                     + 2.0 * respiratory_failure)
    cannula_stay = rng.random(num_stays) < expit(cannula_logit)
    cannula_end = rng.uniform(0.2, 1.0, num_stays) * period_hours
    on_cannula = cannula_stay[:, None] & (hours[None, :] < cannula_end[:, None]) & ~ventilated
    fio2_ventilated = (0.40 + 0.20 * respiratory_failure + 0.05 * has("pneumonia"))[:, None] \
        - 0.005 * hours[None, :] + _ar1(rng, (num_stays, num_hours), 0.06, 0.8)
    fio2_ventilated = np.clip(np.rint(fio2_ventilated * 20.0) / 20.0, 0.30, 1.0)
    fio2_cannula = (0.28 + 0.04 * (has("copd") | has("pneumonia")))[:, None] \
        + _ar1(rng, (num_stays, num_hours), 0.03, 0.8)
    fio2_cannula = np.clip(fio2_cannula, 0.24, 0.50)
    observe("Fraction inspired oxygen", np.where(ventilated, fio2_ventilated, fio2_cannula),
            np.where(ventilated, 0.9, np.where(on_cannula, 0.4, 0.0)))

    # --- GCS -------------------------------------------------------------------------------------
    deficit_latent = latent["gcs_deficit"] + _VENTILATION_SEDATION * ventilated
    deficit = np.clip(np.rint(deficit_latent + rng.normal(0.0, 0.3, deficit_latent.shape)),
                      0, 12).astype(np.int64)
    verbal_deficit = np.minimum(4, np.ceil(deficit * 4.0 / 12.0).astype(np.int64))
    eye_deficit = np.minimum(3, np.rint(deficit * 3.0 / 12.0).astype(np.int64))
    motor_deficit = np.clip(deficit - verbal_deficit - eye_deficit, 0, 5)
    eye, motor, verbal = 4 - eye_deficit, 6 - motor_deficit, 5 - verbal_deficit
    verbal_code = np.where(ventilated, 0, verbal)
    total = eye + motor + np.maximum(verbal_code, 1)
    style = (rng.random(num_patients) < 0.5).astype(np.int64)[stay_patient][:, None]
    gcs_interval = np.where(has("stroke"), 2, 4)
    gcs_phase = rng.integers(0, 4, num_stays) % gcs_interval
    gcs_mask = (((hours[None, :] - gcs_phase[:, None]) % gcs_interval[:, None] == 0)
                & (rng.random((num_stays, num_hours)) < 0.9))
    for column, codes in (("Glascow coma scale eye opening", _GCS_EYE[style, eye]),
                          ("Glascow coma scale motor response", _GCS_MOTOR[style, motor]),
                          ("Glascow coma scale verbal response", _GCS_VERBAL[style, verbal_code])):
        values[:, :, _COLUMN[column]] = np.where(gcs_mask, codes, np.nan)
    values[:, :, _COLUMN["Glascow coma scale total"]] = np.where(
        gcs_mask & (style == 1), _GCS_TOTAL[total], np.nan)

    # --- capillary refill (rare) ---------------------------------------------------------------
    shock_intensity = truth[:, _KEY_INDEX["shock"], None] * physiology["profile"][
        :, _KEY_INDEX["shock"], :]
    refill = (rng.random((num_stays, num_hours)) < 0.05 + 0.6 * shock_intensity).astype(np.int64)
    observe("Capillary refill rate", _CAPILLARY[refill], 0.03)
    blocks = [_Block(round_minute, round_keep, values)]

    # --- glucose (fingersticks / labs) -----------------------------------------------------------
    diabetic = has("diabetes_uncomplicated") | has("diabetes_complicated")
    interval = np.where(diabetic, 4.0, np.where(rng.random(num_stays) < 0.5, 6.0, 8.0))
    minute, index = _scheduled_times(rng, interval, num_hours, 0.25)
    glucose = np.full(minute.shape + (width,), np.nan)
    glucose[:, :, _COLUMN["Glucose"]] = _measure(rng, latent["glucose"], index, "glucose")
    keep = (minute <= period_minutes[:, None]) & (rng.random(minute.shape) < 0.92)
    blocks.append(_Block(minute, keep, glucose))

    # --- blood gas (pH) ----------------------------------------------------------------------
    gas_indicated = ventilated.any(axis=1) | respiratory_failure | has("shock") | has("sepsis") \
        | has("renal_failure_acute")
    gas_stay = rng.random(num_stays) < np.where(gas_indicated, 0.85, 0.15)
    interval = rng.choice(np.array([4.0, 6.0, 8.0]), num_stays)
    minute, index = _scheduled_times(rng, interval, num_hours, 0.25)
    gas = np.full(minute.shape + (width,), np.nan)
    gas[:, :, _COLUMN["pH"]] = _measure(rng, latent["ph"], index, "ph")
    keep = (gas_stay[:, None] & (minute <= period_minutes[:, None])
            & (rng.random(minute.shape) < 0.85))
    blocks.append(_Block(minute, keep, gas))

    # --- missing EHR: only height/weight survive ---------------------------------------------
    anthropometric_only = rng.random(num_stays) < ANTHROPOMETRIC_ONLY_FRACTION
    for block in blocks:
        block.keep &= ~anthropometric_only[:, None]
        block.keep &= ~np.all(np.isnan(block.values), axis=2)
    rows_elsewhere = sum(block.keep.sum(axis=1) for block in blocks)

    # --- height / weight once near admission -------------------------------------------------
    male = state["male"]
    height = rng.normal(np.where(male, 176.0, 163.0), 7.0)
    weight = rng.normal(np.where(male, 86.0, 72.0), 16.0) + 6.0 * state["metabolic"]
    stay_weight = np.clip(weight[stay_patient] + rng.normal(0.0, 3.0, num_stays)
                          + 4.0 * has("heart_failure"), 35.0, 200.0)
    anthropometric = np.full((num_stays, 1, width), np.nan)
    height_mask = rng.random(num_stays) < 0.5
    weight_mask = (rng.random(num_stays) < 0.85) | anthropometric_only | (rows_elsewhere == 0)
    anthropometric[:, 0, _COLUMN["Height"]] = np.where(
        height_mask, np.clip(height, 140.0, 205.0)[stay_patient], np.nan)
    anthropometric[:, 0, _COLUMN["Weight"]] = np.where(weight_mask, stay_weight, np.nan)
    minute = np.minimum(rng.integers(0, 60, (num_stays, 1)), period_minutes[:, None])
    keep = ~np.all(np.isnan(anthropometric), axis=2)
    blocks.append(_Block(minute, keep, anthropometric))
    facts = {"ventilated": ventilated.any(axis=1), "anthropometric_only": anthropometric_only}
    return blocks, facts


def _assemble_rows(blocks: list[_Block]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks -> rows sorted by (stay, minute), same-minute rows merged.

    Returns stay (R,) int, minute (R,) int, values (R, 17) float (NaN = not measured)."""
    stays, minutes, values = [], [], []
    for block in blocks:
        stay_index, slot = np.nonzero(block.keep)
        stays.append(stay_index)
        minutes.append(block.minute[stay_index, slot])
        values.append(block.values[stay_index, slot])
    stay = np.concatenate(stays)
    minute = np.concatenate(minutes)
    value = np.concatenate(values)
    order = np.lexsort((minute, stay))
    stay, minute, value = stay[order], minute[order], value[order]
    first = np.ones(stay.shape[0], dtype=bool)
    first[1:] = (stay[1:] != stay[:-1]) | (minute[1:] != minute[:-1])
    starts = np.flatnonzero(first)
    merged = np.fmax.reduceat(value, starts, axis=0) if starts.size else value
    return stay[starts], minute[starts], merged


# ============================================================================================
# 4. notes
# ============================================================================================
def _choose(rng: np.random.Generator, templates: tuple[str, ...], size: int) -> np.ndarray:
    """A random template per stay: (size,) strings."""
    return np.array(templates, dtype=_STRING)[rng.integers(0, len(templates), size)]


def _compose_notes(rng: np.random.Generator, labels: np.ndarray, truth: np.ndarray,
                   state: dict, stay_patient: np.ndarray, episode: np.ndarray,
                   age: np.ndarray, note_probability: float) -> np.ndarray:
    """Short clinical notes, (N,) strings ("" = no note). See module docstring, point 5."""
    num_stays = labels.shape[0]
    first_stay = episode == 1
    empty = np.array("", dtype=_STRING)
    sentences: list[np.ndarray] = []
    priorities: list[np.ndarray] = []

    def add(text: np.ndarray, active: np.ndarray, priority: float) -> None:
        sentences.append(np.where(active, text, empty))
        priorities.append(np.where(active, priority + rng.random(num_stays), -np.inf))

    def present(key: str) -> np.ndarray:
        return labels[:, _KEY_INDEX[key]] > 0

    # opening sentence
    complaint = _choose(rng, _COMPLAINTS[0][1], num_stays)
    for key, options in _COMPLAINTS[1:]:
        active = state["surgical"] if key == "surgical" else present(key)
        complaint = np.where(active, _choose(rng, options, num_stays), complaint)
    unit = np.where(state["surgical"], "SICU", np.where(
        present("myocardial_infarction") | present("dysrhythmia") | present("heart_failure"),
        "CCU", "MICU")).astype(_STRING)
    sex = np.where(state["male"][stay_patient], "man", "woman").astype(_STRING)
    verb = np.where(first_stay, " admitted to the ", " readmitted to the ").astype(_STRING)
    opening = age.astype(_STRING) + "-year-old " + sex + verb + unit + " with " + complaint + "."
    sentences.append(opening)
    priorities.append(np.full(num_stays, 100.0))

    # label mentions (by name or medication), negations and rule-outs of absent conditions
    for key in LABEL_KEYS:
        first_rate, later_rate, medication_share = _NOTE_EVIDENCE[key]
        rate = np.where(first_stay, first_rate, later_rate)
        mention = present(key) & (rng.random(num_stays) < rate)
        text = _choose(rng, _MENTIONS[key], num_stays)
        if key in _MEDICATIONS:
            via_medication = rng.random(num_stays) < medication_share
            text = np.where(via_medication, _choose(rng, _MEDICATIONS[key], num_stays), text)
        add(text, mention, 10.0)
        if key in _NEGATIONS:
            absent = ~present(key) & (truth[:, _KEY_INDEX[key]] == 0)
            negation = _choose(rng, _NEGATIONS[key], num_stays)
            negated = absent & (rng.random(num_stays) < _NEGATION_RATE)
            if key in _RULE_OUTS:
                rule_out = absent & ~negated & (rng.random(num_stays) < _RULE_OUT_RATE)
                negation = np.where(rule_out, _choose(rng, _RULE_OUTS[key], num_stays), negation)
                negated = negated | rule_out
            add(negation, negated, 4.0)
    procedure = "POD 1 s/p " + _choose(rng, _PROCEDURES, num_stays) + "."
    add(procedure, state["surgical"] & (rng.random(num_stays) < 0.6), 8.0)

    # filler: 0-2 sentences, more if the note would otherwise be shorter than the minimum
    content = np.sum(np.isfinite(np.stack(priorities, axis=1)), axis=1)
    filler_count = rng.integers(0, 3, num_stays) + np.maximum(0, _MIN_SENTENCES - content)
    filler_choice = np.argsort(rng.random((num_stays, len(_FILLER))), axis=1)[:, :_FILLER_SLOTS]
    filler_table = np.array(_FILLER, dtype=_STRING)
    for slot in range(_FILLER_SLOTS):
        add(filler_table[filler_choice[:, slot]], slot < filler_count, 1.0)

    # keep the highest-priority sentences up to a per-stay cap, then shuffle behind the opening
    text = np.stack(sentences, axis=1)                                          # (N, S)
    priority = np.stack(priorities, axis=1)                                     # (N, S)
    cap = rng.integers(5, _MAX_SENTENCES + 1, num_stays)
    rank = np.argsort(np.argsort(-priority, axis=1, kind="stable"), axis=1)
    kept = np.isfinite(priority) & (rank < cap[:, None])
    order_key = np.where(kept, rng.random(priority.shape), np.inf)
    order_key[:, 0] = np.where(kept[:, 0], -1.0, np.inf)
    order = np.argsort(order_key, axis=1)[:, :_MAX_SENTENCES]
    chosen = np.take_along_axis(text, order, axis=1)
    chosen_kept = np.take_along_axis(kept, order, axis=1)
    note = chosen[:, 0]
    for slot in range(1, _MAX_SENTENCES):
        note = np.where(chosen_kept[:, slot], note + " " + chosen[:, slot], note)
    has_note = rng.random(num_stays) < note_probability
    return np.where(has_note, note, empty)


# ============================================================================================
# 5. writing
# ============================================================================================
def _format_rows(minute: np.ndarray, values: np.ndarray) -> list[str]:
    """Rows -> CSV lines "Hours,<17 cells>" (no newline), vectorised with numpy strings."""
    line = np.round(minute / 60.0, 4).astype(_STRING)
    for column, variable in enumerate(VARIABLES):
        cell = values[:, column]
        missing = np.isnan(cell)
        if variable.is_categorical:
            table = np.array(variable.categories + ("",), dtype=_STRING)
            text = table[np.where(missing, len(variable.categories), np.nan_to_num(cell)
                                  .astype(np.int64))]
        elif _DECIMALS[variable.name] == "int":
            text = np.where(missing, "", np.rint(np.nan_to_num(cell)).astype(np.int64)
                            .astype(_STRING)).astype(_STRING)
        else:
            text = np.where(missing, "", np.round(cell, _DECIMALS[variable.name])
                            .astype(_STRING)).astype(_STRING)
        line = line + "," + text
    return line.tolist()


def _prepare_directory(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty directory that is not a previous synthetic output unless overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: expected a directory for the synthetic cohort")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        marker = out_dir / MARKER_FILE
        previous = False
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text()).get("generator") == GENERATOR_NAME
            except (json.JSONDecodeError, AttributeError):
                previous = False
        if not previous and not overwrite:
            raise FileExistsError(
                f"{out_dir}: directory is not empty and holds no {MARKER_FILE} from "
                f"{GENERATOR_NAME}; pass overwrite=True to replace train/, test/ and "
                f"{NOTES_FILE} there")
        for split in SPLITS:
            if (out_dir / split).exists():
                shutil.rmtree(out_dir / split)
        for name in (NOTES_FILE, MARKER_FILE):
            if (out_dir / name).exists():
                (out_dir / name).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_marker(out_dir: Path, parameters: dict, complete: bool,
                  summary: SyntheticSummary | None) -> None:
    """The marker is byte-identical for identical arguments: no timings, paths relative."""
    content = None
    if summary is not None:
        content = summary.to_json_dict()
        content.pop("seconds")
        content["paths"] = {key: str(Path(value).relative_to(out_dir))
                            for key, value in summary.paths.items()}
    payload = {"generator": GENERATOR_NAME, "format_version": FORMAT_VERSION,
               "parameters": parameters, "complete": complete, "summary": content}
    (out_dir / MARKER_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _validate(num_patients: int, max_hours: int, seed: int, test_fraction: float,
              note_probability: float) -> None:
    if not isinstance(num_patients, (int, np.integer)) or num_patients < 2:
        raise ValueError(f"num_patients: expected an integer >= 2, got {num_patients!r}")
    if not isinstance(max_hours, (int, np.integer)) or max_hours < 4:
        raise ValueError(f"max_hours: expected an integer >= 4, got {max_hours!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction!r}")
    if not 0.0 <= note_probability <= 1.0:
        raise ValueError(f"note_probability: expected a value in [0, 1], got {note_probability!r}")


# ============================================================================================
# public API
# ============================================================================================
def generate_synthetic_cohort(out_dir: str | Path, *, num_patients: int = 1600,
                              max_hours: int = 48, seed: int = 0, test_fraction: float = 0.2,
                              note_probability: float = 0.87,
                              overwrite: bool = False) -> SyntheticSummary:
    """Generate and write the embedded default cohort (module docstring; METHOD §1, §9, §10).

    Deterministic in (num_patients, max_hours, seed, test_fraction, note_probability): the same
    arguments write byte-identical files. A non-empty `out_dir` is only replaced when it holds a
    previous synthetic output (its `synthetic_cohort.json`) or `overwrite=True`; then only
    train/, test/, notes.csv and the marker are removed first.
    """
    _validate(num_patients, max_hours, seed, test_fraction, note_probability)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    parameters = {"num_patients": int(num_patients), "max_hours": int(max_hours),
                  "seed": int(seed), "test_fraction": float(test_fraction),
                  "note_probability": float(note_probability)}
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20240611]))

    # patients and stays
    stays_per_patient = rng.choice(np.arange(1, 5), num_patients,
                                   p=STAYS_PER_PATIENT_PROBABILITIES)
    subject = np.sort(rng.choice(np.arange(10_000, 10_000 + max(90_000, 20 * num_patients)),
                                 num_patients, replace=False))
    stay_patient = np.repeat(np.arange(num_patients), stays_per_patient)
    num_stays = stay_patient.shape[0]
    first_of_patient = np.concatenate([[0], np.cumsum(stays_per_patient)[:-1]])
    episode = np.arange(num_stays) - first_of_patient[stay_patient] + 1
    test_patient = np.zeros(num_patients, dtype=bool)
    num_test = min(max(int(round(test_fraction * num_patients)), 1), num_patients - 1)
    test_patient[rng.permutation(num_patients)[:num_test]] = True
    first_age = np.clip(rng.normal(64.0, 16.0, num_patients), 18.0, 91.0)
    years_since_first = rng.exponential(1.0, num_stays)
    years_since_first[episode == 1] = 0.0
    years_since_first = np.cumsum(years_since_first) - np.cumsum(years_since_first)[
        first_of_patient[stay_patient]]
    age = np.floor(first_age[stay_patient] + years_since_first).astype(np.int64)
    male = rng.random(num_patients) < 0.56
    minimum_hours = min(12.0, max_hours / 2.0)

    conditions = _sample_conditions(rng, stay_patient, stays_per_patient,
                                    (first_age - 64.0) / 16.0)
    conditions["state"]["male"] = male
    labels, truth, state = conditions["labels"], conditions["truth"], conditions["state"]
    severity = state["severity"]
    period_hours = np.clip(np.exp(rng.normal(np.log(0.55 * max_hours) + 0.15 * severity, 0.45)),
                           minimum_hours, float(max_hours))
    period_minutes = np.rint(period_hours * 60.0).astype(np.int64)
    num_hours = int(max_hours) + 1

    physiology = _latent_trajectories(rng, truth, stay_patient, num_patients,
                                      period_minutes / 60.0, num_hours)
    blocks, facts = _sample_blocks(rng, conditions, physiology, stay_patient, num_patients,
                                   period_minutes, num_hours)
    row_stay, row_minute, row_values = _assemble_rows(blocks)
    notes = _compose_notes(rng, labels, truth, state, stay_patient, episode, age,
                           note_probability)
    generated = time.perf_counter()

    # names, listfiles, notes, series
    stay_names = (subject[stay_patient].astype(_STRING) + "_episode"
                  + episode.astype(_STRING) + "_timeseries.csv").tolist()
    split = np.where(test_patient[stay_patient], "test", "train")
    _prepare_directory(out_dir, overwrite)
    _write_marker(out_dir, parameters, complete=False, summary=None)
    period_length = np.round(period_minutes / 60.0, 4)
    table = pd.DataFrame(labels, columns=list(PHENOTYPE_LABELS))
    table.insert(0, "period_length", period_length)
    table.insert(0, "stay", stay_names)
    for name in SPLITS:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        table[split == name].to_csv(out_dir / name / LISTFILE, index=False, lineterminator="\n")
    pd.DataFrame({"stay": stay_names, "text": notes.tolist()}).to_csv(
        out_dir / NOTES_FILE, index=False, lineterminator="\n")

    lines = _format_rows(row_minute, row_values)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row_stay, minlength=num_stays))])
    header = ",".join(TIMESERIES_HEADER) + "\n"
    directories = [str(out_dir / name) for name in split.tolist()]
    for index in range(num_stays):
        body = "\n".join(lines[offsets[index]:offsets[index + 1]])
        with open(f"{directories[index]}/{stay_names[index]}", "w", newline="") as handle:
            handle.write(header + body + "\n")

    seconds = time.perf_counter() - started
    summary = SyntheticSummary(
        num_stays=int(num_stays), num_patients=int(num_patients),
        l_avg=float(labels.sum(axis=1).mean()),
        prevalence={label: float(share) for label, share in zip(PHENOTYPE_LABELS,
                                                                labels.mean(axis=0))},
        split_sizes={name: int(np.sum(split == name)) for name in SPLITS},
        stays_per_patient=float(num_stays / num_patients),
        empty_note_fraction=float(np.mean(notes == "")),
        anthropometric_only_fraction=float(facts["anthropometric_only"].mean()),
        num_series_rows=int(row_stay.shape[0]), seconds=round(seconds, 3),
        paths={"root": out_dir, "train_listfile": out_dir / "train" / LISTFILE,
               "test_listfile": out_dir / "test" / LISTFILE, "notes": out_dir / NOTES_FILE,
               "marker": out_dir / MARKER_FILE})
    _write_marker(out_dir, parameters, complete=True, summary=summary)
    logger.info("synthetic cohort: %d stays of %d patients, L_avg %.3f, %d series rows; "
                "generated in %.2f s, written in %.2f s -> %s", num_stays, num_patients,
                summary.l_avg, summary.num_series_rows, generated - started,
                seconds - (generated - started), out_dir)
    return summary


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m miracl_grid.data.synthetic OUT_DIR [--num-patients N] [--max-hours H] [--seed S]."""
    parser = argparse.ArgumentParser(description="Write the embedded synthetic default cohort.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-patients", type=int, default=1600)
    parser.add_argument("--max-hours", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--note-probability", type=float, default=0.87)
    parser.add_argument("--overwrite", action="store_true")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = generate_synthetic_cohort(
        arguments.out_dir, num_patients=arguments.num_patients, max_hours=arguments.max_hours,
        seed=arguments.seed, test_fraction=arguments.test_fraction,
        note_probability=arguments.note_probability, overwrite=arguments.overwrite)
    print(json.dumps(summary.to_json_dict(), indent=2))


if __name__ == "__main__":
    main()
