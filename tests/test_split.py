"""Patient-wise split (METHOD §1): no patient on both sides, seeded, source split kept."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from miracl_grid.data.cohort import Cohort, empty_events
from miracl_grid.data.errors import CohortError
from miracl_grid.data.split import assert_no_patient_crosses, assign_split, patient_split


def make_cohort(patients, split=None) -> Cohort:
    count = len(patients)
    stays = pd.DataFrame({
        "stay": [f"s{i}" for i in range(count)],
        "patient_id": np.asarray(patients, dtype=np.int64),
        "split": pd.Series([split] * count if not isinstance(split, list) else split, dtype=object),
        "period_length": np.full(count, 10.0),
        "series_file": pd.Series([None] * count, dtype=object),
    })
    return Cohort(stays=stays, labels=np.zeros((count, 2), np.uint8), label_names=("a", "b"),
                  events=empty_events(), notes=np.full(count, "", dtype=object))


def test_patient_split_groups_patients_and_takes_a_fifth_of_them():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 500, size=2000)
    split = patient_split(patients, seed=7)
    frame = pd.DataFrame({"patient": patients, "split": split})
    assert (frame.groupby("patient")["split"].nunique() == 1).all()
    test_patients = frame.loc[frame["split"] == "test", "patient"].nunique()
    assert test_patients == math.ceil(0.2 * len(np.unique(patients)))
    assert set(split) == {"train", "test"}


def test_patient_split_is_seeded():
    patients = np.repeat(np.arange(100), 2)
    np.testing.assert_array_equal(patient_split(patients, seed=1), patient_split(patients, seed=1))
    assert not np.array_equal(patient_split(patients, seed=1), patient_split(patients, seed=2))


def test_assign_split_keeps_the_source_split():
    cohort = make_cohort([1, 1, 2, 3], split=["train", "train", "test", "train"])
    assign_split(cohort, seed=0)
    assert cohort.stays["split"].tolist() == ["train", "train", "test", "train"]


def test_assign_split_draws_when_missing_and_records_how():
    cohort = make_cohort(list(range(10)) * 3)
    assign_split(cohort, seed=4, test_fraction=0.3)
    assert cohort.stays["split"].isin(["train", "test"]).all()
    assert cohort.stays.loc[cohort.stays["split"] == "test", "patient_id"].nunique() == 3
    assert cohort.source["split"]["seed"] == 4
    assert_no_patient_crosses(cohort.stays)


def test_partial_or_unknown_split_is_an_error():
    with pytest.raises(CohortError, match="no split"):
        assign_split(make_cohort([1, 2], split=["train", None]))
    with pytest.raises(CohortError, match="'val'"):
        assign_split(make_cohort([1, 2], split=["train", "val"]))


def test_assert_no_patient_crosses_names_the_patient():
    cohort = make_cohort([5, 6, 6, 7], split=["train", "train", "test", "test"])
    with pytest.raises(CohortError, match=r"patient 6 has stays in both train and test: s1 \(train\), s2 \(test\)"):
        assert_no_patient_crosses(cohort.stays)
