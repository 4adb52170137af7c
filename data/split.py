"""Patient-wise train/test split (METHOD §1: 8:2 by patient, no patient on both sides).

`assign_split` keeps a split the source already has (mimic3-benchmarks' train/ and test/
folders) and otherwise draws one with scikit-learn's `GroupShuffleSplit` grouped by patient:
``test_fraction`` of the PATIENTS (rounded up, as GroupShuffleSplit does) go to test, so the
stay-level ratio is close to, not exactly, 8:2. The draw depends only on ``seed`` and the set of
patient ids in stay row order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from miracl_grid.data.cohort import SPLITS, Cohort
from miracl_grid.data.errors import CohortError


def assert_no_patient_crosses(stays: pd.DataFrame, where: str = "cohort") -> None:
    """Raise CohortError naming a patient with stays in both train and test (stays: N rows)."""
    split = stays["split"]
    known = split.isin(SPLITS).to_numpy()
    sides = stays.loc[known].groupby("patient_id")["split"].nunique()
    crossing = sides[sides > 1]
    if len(crossing):
        patient = crossing.index[0]
        example = stays.loc[known & (stays["patient_id"] == patient).to_numpy(), ["stay", "split"]]
        listing = ", ".join(f"{s} ({p})" for s, p in zip(example["stay"], example["split"]))
        raise CohortError(f"{where}: patient {patient} has stays in both train and test: {listing} "
                          f"({len(crossing)} patient(s) cross the split); expected a patient-wise split")


def patient_split(patient_id: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Patient-grouped split of N stays -> object array of "train"/"test" (N)."""
    patient_id = np.asarray(patient_id)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    split = np.full(len(patient_id), "train", dtype=object)
    if len(np.unique(patient_id)) < 2:
        raise CohortError(f"cannot split {len(patient_id)} stay(s) of fewer than 2 patients into train and test")
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    _, test_rows = next(splitter.split(np.zeros(len(patient_id)), groups=patient_id))
    split[test_rows] = "test"
    return split


def assign_split(cohort: Cohort, *, test_fraction: float = 0.2, seed: int = 0) -> Cohort:
    """Give every stay a split in place (kept if the source has one) and check no patient crosses it."""
    split = cohort.stays["split"]
    assigned = split.isin(SPLITS).to_numpy()
    unknown = split.notna().to_numpy() & ~assigned
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise CohortError(f"stay {cohort.stays['stay'].iat[row]!r}: split {split.iat[row]!r}, expected one of {SPLITS}")
    if assigned.all():
        cohort.source["split"] = cohort.source.get("split") or "source"
    elif not assigned.any():
        cohort.stays["split"] = patient_split(cohort.stays["patient_id"].to_numpy(),
                                              test_fraction=test_fraction, seed=seed)
        cohort.source["split"] = {"method": "GroupShuffleSplit by patient", "test_fraction": test_fraction,
                                  "seed": seed}
    else:
        row = int(np.flatnonzero(~assigned)[0])
        raise CohortError(f"stay {cohort.stays['stay'].iat[row]!r} has no split while {int(assigned.sum())} "
                          "stays have one; expected all or none")
    assert_no_patient_crosses(cohort.stays)
    return cohort
