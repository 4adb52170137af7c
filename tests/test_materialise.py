"""Materialised cohort directory (ARCHITECTURE §5): files, manifest, content hash, reuse."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import miracl_grid.data.materialise as materialise_module
from miracl_grid.data.cohort import Cohort
from miracl_grid.data.errors import CohortError
from miracl_grid.data.materialise import load_manifest, materialise
from miracl_grid.data.schema import VARIABLE_NAMES, channel_names
from fake_text import make_fake_text_features

NAMES = channel_names()


@pytest.fixture
def text_calls(monkeypatch):
    calls: list = []
    # one token per word, D = 4; encoder None stands for "fake"
    monkeypatch.setattr(materialise_module, "_ensure_text_features",
                        make_fake_text_features(dim=4, values="modulo", default_encoder="fake", revision="r1",
                                                seconds=0.1, calls=calls))
    return calls


def small_cohort() -> Cohort:
    """5 stays / 4 patients: stay 2 without series, stays 1 and 4 without note."""
    stays = pd.DataFrame({
        "stay": ["a", "b", "c", "d", "e"],
        "patient_id": np.array([1, 1, 2, 3, 4], dtype=np.int64),
        "split": pd.Series(["train", "train", "train", "test", "test"], dtype=object),
        "period_length": [3.0, 2.0, 5.0, 1.5, np.nan],
        "series_file": pd.Series([None] * 5, dtype=object),
    })
    rows = [(0, 0.5, "80"), (0, 2.5, "100"), (1, 0.0, "60"), (3, 1.0, "120"), (4, 0.2, "90"), (4, 1.7, "95")]
    events = pd.DataFrame({name: pd.Series([None] * len(rows), dtype=object) for name in VARIABLE_NAMES})
    events.insert(0, "Hours", [h for _, h, _ in rows])
    events.insert(0, "line", np.arange(len(rows), dtype=np.int64) + 2)
    events.insert(0, "row", np.array([r for r, _, _ in rows], dtype=np.int64))
    events["Heart Rate"] = [v for _, _, v in rows]
    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1]], dtype=np.uint8)
    notes = np.array(["renal failure on dialysis", "", "copd", "chest pain today", ""], dtype=object)
    return Cohort(stays=stays, labels=labels, label_names=("x", "y", "z"), events=events, notes=notes,
                  source={"format": "test"}, dropped=[{"stay": "f", "reason": "test reason"}],
                  timings={"read": 0.5})


def test_writes_the_contract_layout(tmp_path, text_calls):
    out = materialise(small_cohort(), tmp_path / "cohort", max_bins=4, encoder="fake", max_tokens=8)
    for name in ("manifest.json", "stays.parquet", "labels.npy", "series_values.npy", "series_offsets.npy",
                 "text/fake-8/token_features.npy"):
        assert (out / name).is_file(), name
    stays = pd.read_parquet(out / "stays.parquet")
    assert list(stays.columns) == ["index", "stay", "patient_id", "split", "period_length", "has_series",
                                   "has_note", "series_bins"]
    assert stays["index"].tolist() == [0, 1, 2, 3, 4]
    assert stays["series_bins"].dtype == np.int32 and stays["patient_id"].dtype == np.int64
    # bins: ceil(3)=3, ceil(2)=2, none, ceil(1.5)=2, NaN period -> max Hours 1.7 -> 2
    assert stays["series_bins"].tolist() == [3, 2, 0, 2, 2]
    assert stays["has_series"].tolist() == [True, True, False, True, True]
    assert stays["has_note"].tolist() == [True, False, True, True, False]
    offsets = np.load(out / "series_offsets.npy")
    assert offsets.tolist() == [0, 3, 5, 5, 7, 9] and offsets.dtype == np.int64
    values = np.load(out / "series_values.npy", mmap_mode="r")
    assert values.shape == (9, 76) and values.dtype == np.float32
    labels = np.load(out / "labels.npy")
    assert labels.dtype == np.uint8 and labels.tolist() == small_cohort().labels.tolist()

    manifest = load_manifest(out)
    assert manifest["num_stays"] == 5 and manifest["num_patients"] == 4 and manifest["num_labels"] == 3
    assert manifest["split_sizes"] == {"train": 3, "test": 2}
    assert manifest["label_counts"] == {"train": [2, 1, 1], "test": [1, 1, 1]}
    assert manifest["l_avg_train"] == pytest.approx((2 + 2 + 0) / 3)
    assert manifest["series"]["channels"] == 76 and manifest["series"]["channel_names"] == list(NAMES)
    assert manifest["series"]["max_bins"] == 4
    # train HR bins: stay a: 80, 80, 100; stay b: 60, 60 -> mean 76
    hr = manifest["series"]["continuous_channels"].index(NAMES.index("Heart Rate"))
    assert manifest["series"]["normalisation"]["mean"][hr] == pytest.approx(76.0)
    assert manifest["text"] == {"default_key": "fake-8", "features": {
        "fake-8": {"encoder": "fake", "revision": "r1", "max_tokens": 8, "dim": 4}}}
    assert manifest["dropped"] == [{"stay": "f", "reason": "test reason"}]
    assert manifest["missingness"]["all"] == {"stays": 5, "without_series": 1, "without_note": 2, "without_both": 0}
    assert manifest["missingness"]["test"]["without_note"] == 1
    assert manifest["missingness"]["variable_observed_bin_fraction"]["Heart Rate"] == pytest.approx(6 / 9)
    assert len(manifest["cohort_hash"]) == 64
    assert set(manifest["timings"]) >= {"read", "discretise", "write", "text"}
    assert manifest["versions"]["numpy"] == np.__version__
    assert manifest["source"] == {"format": "test"}


def test_hash_is_stable_and_an_identical_cohort_is_reused(tmp_path, text_calls):
    out = tmp_path / "cohort"
    materialise(small_cohort(), out, encoder="fake", max_tokens=8)
    first = load_manifest(out)
    stamp = (out / "series_values.npy").stat().st_mtime_ns
    materialise(small_cohort(), out, encoder="fake", max_tokens=8)
    second = load_manifest(out)
    assert second["cohort_hash"] == first["cohort_hash"]
    assert second["reused"] == {"cohort": True, "text": True}
    assert (out / "series_values.npy").stat().st_mtime_ns == stamp
    # a new encoder key is added next to the old one, which stays listed
    materialise(small_cohort(), out, encoder="other", max_tokens=4)
    third = load_manifest(out)
    assert third["reused"] == {"cohort": True, "text": False}
    assert set(third["text"]["features"]) == {"fake-8", "other-4"} and third["text"]["default_key"] == "other-4"
    # a second directory gets the same hash: it depends on content only
    materialise(small_cohort(), tmp_path / "elsewhere", encoder="fake", max_tokens=8)
    assert load_manifest(tmp_path / "elsewhere")["cohort_hash"] == first["cohort_hash"]


def test_changed_content_changes_the_hash_and_drops_stale_text(tmp_path, text_calls):
    out = tmp_path / "cohort"
    materialise(small_cohort(), out, encoder="fake", max_tokens=8)
    first = load_manifest(out)["cohort_hash"]
    changed = small_cohort()
    changed.notes[2] = "copd and asthma"
    materialise(changed, out, encoder="fake", max_tokens=8)
    manifest = load_manifest(out)
    assert manifest["cohort_hash"] != first
    assert manifest["reused"] == {"cohort": False, "text": False}
    offsets = np.load(out / "text" / "fake-8" / "token_offsets.npy")
    assert np.diff(offsets).tolist() == [4, 0, 3, 3, 0]  # recomputed for the new note
    changed = small_cohort()
    changed.labels[0, 1] = 1
    materialise(changed, out, encoder="fake", max_tokens=8)
    assert load_manifest(out)["cohort_hash"] not in (first, manifest["cohort_hash"])


def test_optional_columns_do_not_change_the_hash(tmp_path, text_calls):
    """series_file and line are reader bookkeeping; a Cohort built without them hashes the same."""
    materialise(small_cohort(), tmp_path / "a", encoder="fake", max_tokens=8)
    bare = small_cohort()
    bare = Cohort(stays=bare.stays.drop(columns=["series_file"]), labels=bare.labels, label_names=bare.label_names,
                  events=bare.events.drop(columns=["line"]), notes=bare.notes)
    materialise(bare, tmp_path / "b", encoder="fake", max_tokens=8)
    assert load_manifest(tmp_path / "a")["cohort_hash"] == load_manifest(tmp_path / "b")["cohort_hash"]


def test_requires_an_assigned_split(tmp_path, text_calls):
    cohort = small_cohort()
    cohort.stays["split"] = pd.Series([None] * 5, dtype=object)
    with pytest.raises(CohortError, match="stay 'a': split None"):
        materialise(cohort, tmp_path / "cohort")


def test_load_manifest_errors(tmp_path):
    with pytest.raises(CohortError, match="manifest.json: not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format_version": 99}')
    with pytest.raises(CohortError, match="'format_version': expected 2, found 99"):
        load_manifest(tmp_path)
