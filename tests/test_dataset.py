"""CohortData / CohortDataset / collate: shapes, padding, missing modalities, DataLoader workers."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import miracl_grid.data.materialise as materialise_module
from miracl_grid.data.cohort import Cohort
from miracl_grid.data.dataset import CohortData, CohortDataset, collate
from miracl_grid.data.errors import CohortError
from miracl_grid.data.materialise import materialise
from miracl_grid.data.schema import VARIABLE_NAMES, channel_names
from fake_text import make_fake_text_features

HR = channel_names().index("Heart Rate")
MASK_HR = channel_names().index("mask->Heart Rate")
DIM = 3


def build_cohort(tmp_path: Path, monkeypatch, *, encoders=("fake",)) -> Path:
    """6 stays: 0 full, 1 no note, 2 no series, 3 neither, 4 long (10 bins), 5 test."""
    # one token per word; token j of note i has features (i, j, 1)
    monkeypatch.setattr(materialise_module, "_ensure_text_features", make_fake_text_features(dim=DIM, revision="r"))
    stays = pd.DataFrame({
        "stay": [f"s{i}" for i in range(6)],
        "patient_id": np.array([7, 7, 8, 9, 10, 11], dtype=np.int64),
        "split": pd.Series(["train"] * 5 + ["test"], dtype=object),
        "period_length": [2.0, 3.0, 4.0, 4.0, 10.0, 1.0],
        "series_file": pd.Series([None] * 6, dtype=object),
    })
    rows = [(0, 0.5, "80"), (1, 2.5, "90"), (4, 0.5, "60"), (4, 9.5, "61"), (5, 0.0, "70")]
    events = pd.DataFrame({name: pd.Series([None] * len(rows), dtype=object) for name in VARIABLE_NAMES})
    events.insert(0, "Hours", [h for _, h, _ in rows])
    events.insert(0, "line", np.arange(len(rows), dtype=np.int64) + 2)
    events.insert(0, "row", np.array([r for r, _, _ in rows], dtype=np.int64))
    events["Heart Rate"] = [v for _, _, v in rows]
    labels = (np.arange(6 * 4).reshape(6, 4) % 3 == 0).astype(np.uint8)
    notes = np.array(["one two", "", "a b c d e", "", "x", "test note here"], dtype=object)
    cohort = Cohort(stays=stays, labels=labels, label_names=("p", "q", "r", "s"), events=events, notes=notes)
    out = tmp_path / "cohort"
    for encoder in encoders:
        materialise(cohort, out, encoder=encoder, max_tokens=16, progress=False)
    return out


@pytest.fixture
def cohort_dir(tmp_path, monkeypatch) -> Path:
    return build_cohort(tmp_path, monkeypatch)


def test_cohort_data_opens_everything(cohort_dir):
    data = CohortData(cohort_dir)
    assert data.num_stays == 6 and data.text_key == "fake-16" and data.note_dim == DIM
    assert data.train_rows.tolist() == [0, 1, 2, 3, 4] and data.test_rows.tolist() == [5]
    assert isinstance(data.series_values, np.memmap)
    assert data.series(4).shape == (10, 76) and data.series(2).shape == (0, 76)
    assert data.label_embeddings().shape == (4, DIM)
    assert data.labels.dtype == np.uint8 and data.labels.shape == (6, 4)


def test_items_and_collate_with_missing_modalities(cohort_dir):
    data = CohortData(cohort_dir)
    dataset = CohortDataset(data, "train")
    assert len(dataset) == 5
    item = dataset[0]
    assert item["index"] == 0 and item["patient"] == 7
    assert item["series"].dtype == torch.float32 and item["series"].shape == (2, 76)
    assert item["note"].dtype == torch.float32 and item["note"].shape == (2, DIM)
    assert item["labels"].tolist() == [1.0, 0.0, 0.0, 1.0]

    batch = collate([dataset[i] for i in range(5)])
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["patient"].tolist() == [7, 7, 8, 9, 10]
    assert batch["series"].shape == (5, 10, 76) and batch["series"].dtype == torch.float32
    assert batch["series_length"].tolist() == [2, 3, 0, 0, 10]
    assert batch["has_series"].tolist() == [True, True, False, False, True]
    assert batch["note"].shape == (5, 5, DIM)
    assert batch["note_length"].tolist() == [2, 0, 5, 0, 1]
    assert batch["has_note"].tolist() == [True, False, True, False, True]
    assert batch["labels"].shape == (5, 4) and batch["labels"].dtype == torch.float32
    for name in ("index", "patient", "series_length", "note_length"):
        assert batch[name].dtype == torch.long
    # zero padding after each length; the unpadded part is the stored data
    assert torch.all(batch["series"][0, 2:] == 0) and torch.all(batch["series"][2] == 0)
    assert torch.all(batch["note"][0, 2:] == 0) and torch.all(batch["note"][1] == 0)
    assert batch["note"][2, :5, 1].tolist() == [0, 1, 2, 3, 4]  # token positions of note 2
    assert batch["note"][2, 0, 0] == 2  # owner id of note 2
    np.testing.assert_array_equal(batch["series"][4].numpy(), data.series(4))


def test_all_missing_batch_still_has_one_step(cohort_dir):
    dataset = CohortDataset(CohortData(cohort_dir), [3])
    batch = collate([dataset[0]])
    assert batch["series"].shape == (1, 1, 76) and batch["note"].shape == (1, 1, DIM)
    assert batch["series_length"].tolist() == [0] and batch["note_length"].tolist() == [0]
    assert not batch["has_series"].any() and not batch["has_note"].any()
    assert torch.all(batch["series"] == 0) and torch.all(batch["note"] == 0)


def test_truncation_keeps_last_bins_and_first_tokens(cohort_dir):
    data = CohortData(cohort_dir)
    dataset = CohortDataset(data, [4, 2], max_series_bins=3, max_note_tokens=2)
    item = dataset[0]
    np.testing.assert_array_equal(item["series"].numpy(), data.series(4)[-3:])
    assert item["series"][-1, MASK_HR] == 1  # the observation at 9.5 h is in the kept last bin
    note = dataset[1]["note"]
    assert note.shape == (2, DIM) and note[:, 1].tolist() == [0, 1]


def test_text_key_selection(tmp_path, monkeypatch):
    out = build_cohort(tmp_path, monkeypatch, encoders=("first", "second"))
    data = CohortData(out)
    assert data.text_key == "second-16"  # the last prepared key is the default
    dataset = CohortDataset(data, "test", text_key="first-16")
    assert dataset.text.key == "first-16" and dataset[0]["note_length"] == 3
    assert CohortData(out, text_key="first-16").text_key == "first-16"
    with pytest.raises(CohortError, match=r"text feature key 'missing' not found; available: \['first-16', 'second-16'\]"):
        CohortData(out, text_key="missing")
    with pytest.raises(CohortError, match="'missing' not found"):
        CohortDataset(data, "train", text_key="missing")


def test_pickling_drops_the_memory_maps(cohort_dir):
    data = CohortData(cohort_dir)
    dataset = CohortDataset(data, "all")
    blob = pickle.dumps(dataset)
    clone = pickle.loads(blob)
    assert clone.data._series_values is None and clone.text._token_features is None
    np.testing.assert_array_equal(clone[4]["series"].numpy(), dataset[4]["series"].numpy())
    assert isinstance(clone.data._series_values, np.memmap)  # reopened lazily


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_with_two_workers(cohort_dir, context):
    """fork shares the parent's maps; spawn pickles the dataset, which reopens them per worker."""
    data = CohortData(cohort_dir)
    dataset = CohortDataset(data, "all")
    loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=2, collate_fn=collate,
                        multiprocessing_context=context)
    batches = list(loader)
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))
    assert torch.cat([b["series_length"] for b in batches]).tolist() == [2, 3, 0, 0, 10, 1]
    assert batches[1]["series"].shape == (2, 10, 76)
