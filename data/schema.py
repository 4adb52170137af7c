"""Fixed vocabularies of the phenotyping task (METHOD §9 and §10).

`PHENOTYPE_LABELS` are the 25 HCUP-CCS phenotypes of mimic3-benchmarks in alphabetical
(column) order (FlexCare's MIMIC-IV phenotyping uses the same 25 names); `DIAGNOSIS_LABELS` the
14 CheXpert findings of the MIMIC-IV diagnosis task. `VARIABLES` are the 17 time-series variables in file order; categorical ones
carry their value list in the one-hot order of mimic3-benchmarks' discretiser. Together they
define the 76 discretised channels: 59 value columns then 17 observation masks.
"""
from __future__ import annotations

from dataclasses import dataclass

PHENOTYPE_LABELS: tuple[str, ...] = (
    "Acute and unspecified renal failure",
    "Acute cerebrovascular disease",
    "Acute myocardial infarction",
    "Cardiac dysrhythmias",
    "Chronic kidney disease",
    "Chronic obstructive pulmonary disease and bronchiectasis",
    "Complications of surgical procedures or medical care",
    "Conduction disorders",
    "Congestive heart failure; nonhypertensive",
    "Coronary atherosclerosis and other heart disease",
    "Diabetes mellitus with complications",
    "Diabetes mellitus without complication",
    "Disorders of lipid metabolism",
    "Essential hypertension",
    "Fluid and electrolyte disorders",
    "Gastrointestinal hemorrhage",
    "Hypertension with complications and secondary hypertension",
    "Other liver diseases",
    "Other lower respiratory disease",
    "Other upper respiratory disease",
    "Pleurisy; pneumothorax; pulmonary collapse",
    "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
    "Respiratory failure; insufficiency; arrest (adult)",
    "Septicemia (except in labor)",
    "Shock",
)


# MIMIC-IV diagnosis (DIA, FlexCare's create_diagnosis): the 14 CheXpert findings of
# mimic-cxr-2.0.0-chexpert.csv, in that file's (alphabetical) column order.
DIAGNOSIS_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
assert len(DIAGNOSIS_LABELS) == 14


@dataclass(frozen=True)
class Variable:
    """One time-series variable: its CSV column name, normal value and (if categorical) values."""

    name: str
    normal_value: str
    categories: tuple[str, ...] | None = None

    @property
    def is_categorical(self) -> bool:
        return self.categories is not None

    @property
    def width(self) -> int:
        """Number of value columns it occupies after discretisation."""
        return len(self.categories) if self.categories else 1


VARIABLES: tuple[Variable, ...] = (
    Variable("Capillary refill rate", "0.0", ("0.0", "1.0")),
    Variable("Diastolic blood pressure", "59.0"),
    Variable("Fraction inspired oxygen", "0.21"),
    Variable("Glascow coma scale eye opening", "4 Spontaneously",
             ("To Pain", "3 To speech", "1 No Response", "4 Spontaneously", "None",
              "To Speech", "Spontaneously", "2 To pain")),
    Variable("Glascow coma scale motor response", "6 Obeys Commands",
             ("1 No Response", "3 Abnorm flexion", "Abnormal extension", "No response",
              "4 Flex-withdraws", "Localizes Pain", "Flex-withdraws", "Obeys Commands",
              "Abnormal Flexion", "6 Obeys Commands", "5 Localizes Pain", "2 Abnorm extensn")),
    Variable("Glascow coma scale total", "15",
             ("11", "10", "13", "12", "15", "14", "3", "5", "4", "7", "6", "9", "8")),
    Variable("Glascow coma scale verbal response", "5 Oriented",
             ("1 No Response", "No Response", "Confused", "Inappropriate Words", "Oriented",
              "No Response-ETT", "5 Oriented", "Incomprehensible sounds", "1.0 ET/Trach",
              "4 Confused", "2 Incomp sounds", "3 Inapprop words")),
    Variable("Glucose", "128.0"),
    Variable("Heart Rate", "86"),
    Variable("Height", "170.0"),
    Variable("Mean blood pressure", "77.0"),
    Variable("Oxygen saturation", "98.0"),
    Variable("Respiratory rate", "19"),
    Variable("Systolic blood pressure", "118.0"),
    Variable("Temperature", "36.6"),
    Variable("Weight", "81.0"),
    Variable("pH", "7.4"),
)

VARIABLE_NAMES: tuple[str, ...] = tuple(v.name for v in VARIABLES)
TIMESERIES_HEADER: tuple[str, ...] = ("Hours",) + VARIABLE_NAMES


def channel_names() -> tuple[str, ...]:
    """The 76 discretised channel names: 59 values (categoricals as 'name->value') then 17 masks."""
    values: list[str] = []
    for variable in VARIABLES:
        if variable.categories:
            values.extend(f"{variable.name}->{c}" for c in variable.categories)
        else:
            values.append(variable.name)
    return tuple(values) + tuple(f"mask->{v.name}" for v in VARIABLES)


NUM_CHANNELS = len(channel_names())
assert NUM_CHANNELS == 76, NUM_CHANNELS
