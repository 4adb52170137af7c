"""Read side of a materialised cohort directory: `CohortData`, the torch `CohortDataset` and `collate`.

`CohortData` opens the manifest, stays table and labels eagerly (small) and the large arrays
(series values, token features) as read-only memory maps (``np.load(mmap_mode="r")``),
opened lazily and dropped on pickling, so DataLoader workers (fork or spawn) reopen the same
files instead of receiving a copy of the arrays.

Before it trusts a directory it checks it (`miracl_grid.data.materialise` writes what is checked):
the manifest's own digest, every recorded file against its record (``verify="quick"`` at every
trial start, ``"full"`` for ``python -m miracl_grid.data.prepare --verify``; `miracl_grid.data.checksums`), the
structure and patient-wise split of the stays table, and every derived manifest field
(``l_avg_train``, counts, ...) against its value recomputed from the arrays. Any mismatch or
unreadable (e.g. truncated) file is a `CohortError` naming the file.

Batch dict of `collate` (ARCHITECTURE §6), B items::

    index LongTensor B; patient LongTensor B
    series FloatTensor B×T×76 (zero-padded after series_length; T = max length, >= 1)
    series_length LongTensor B; has_series BoolTensor B
    note FloatTensor B×S×D (float32, zero-padded; S >= 1); note_length LongTensor B; has_note BoolTensor B
    labels FloatTensor B×L (clean labels)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from miracl_grid.data.checksums import REPAIR_HINT, verify_files
from miracl_grid.data.errors import CohortError
from miracl_grid.data.materialise import (LABELS, MANIFEST, SERIES_OFFSETS, SERIES_VALUES, STAYS,
                              check_cohort_arrays, check_derived, derived_fields, load_manifest)
from miracl_grid.data.text_features import TextFeatures, load_text_features



def _require(path: Path) -> Path:
    if not path.is_file():
        raise CohortError(f"{path}: not found; the cohort directory is incomplete (re-run `python -m miracl_grid.data.prepare`)")
    return path


def _read(path: Path, reader, **options):
    """``reader(path, **options)`` with an unreadable file (truncated, not that format) as CohortError."""
    try:
        return reader(_require(path), **options)
    except (OSError, ValueError, EOFError) as error:   # pyarrow's ArrowInvalid is a ValueError
        raise CohortError(f"{path}: cannot be read ({type(error).__name__}: {error}); {REPAIR_HINT}") from None


def _check_offsets(offsets: np.ndarray, count: int, rows: int, path: Path) -> None:
    if offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != rows or np.any(np.diff(offsets) < 0):
        raise CohortError(f"{path}: expected {count + 1} non-decreasing offsets from 0 to {rows}, "
                          f"found shape {offsets.shape} ending at {offsets[-1] if len(offsets) else None}")


class CohortData:
    """A materialised cohort directory, opened for reading (N stays, L labels, 76 channels)."""

    def __init__(self, directory: str | os.PathLike, text_key: str | None = None, *, verify: str = "quick"):
        """Open and check ``directory`` (``verify``: "quick" or "full" file checks, module docstring)."""
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        verify_files(self.directory, self.manifest["files"], depth=verify)
        self.stays = _read(self.directory / STAYS, pd.read_parquet)
        self.num_stays = len(self.stays)
        self.label_names: tuple[str, ...] = tuple(self.manifest["label_names"])
        self.labels = _read(self.directory / LABELS, np.load)
        if self.labels.shape != (self.num_stays, len(self.label_names)):
            raise CohortError(f"{self.directory / LABELS}: shape {self.labels.shape}, expected "
                              f"({self.num_stays}, {len(self.label_names)})")
        self.series_offsets = _read(self.directory / SERIES_OFFSETS, np.load)
        values = _read(self.directory / SERIES_VALUES, np.load, mmap_mode="r")
        self.series_channels = int(values.shape[1])
        _check_offsets(self.series_offsets, self.num_stays, values.shape[0], self.directory / SERIES_OFFSETS)
        check_cohort_arrays(self.directory, self.stays, self.labels, self.series_offsets)
        check_derived(self.manifest, derived_fields(self.stays, self.labels, self.label_names, self.series_offsets),
                      self.directory / MANIFEST)
        self._series_values: np.ndarray | None = values
        self.patient_id = self.stays["patient_id"].to_numpy(np.int64)
        split = self.stays["split"].to_numpy(dtype=object)
        self.split = split
        self.train_rows = np.flatnonzero(split == "train")
        self.test_rows = np.flatnonzero(split == "test")
        self.cohort_hash: str = self.manifest["cohort_hash"]
        self._text: dict[str, TextFeatures] = {}
        self.text_key = self.resolve_text_key(text_key)
        self.text(self.text_key)

    # ----------------------------------------------------------------------- text features
    @property
    def text_keys(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("text", {}).get("features", {}))

    def resolve_text_key(self, key: str | None) -> str:
        """None or "" -> the manifest's default key; a key not in the manifest -> CohortError."""
        if not key:
            key = self.manifest.get("text", {}).get("default_key")
            if not key:
                raise CohortError(f"{self.directory / 'manifest.json'}: field 'text.default_key' is empty; "
                                  "the cohort has no text features")
        if key not in self.text_keys:
            raise CohortError(f"{self.directory / 'manifest.json'}: text feature key {key!r} not found; "
                              f"available: {list(self.text_keys)} (prepare with that encoder/max_tokens)")
        return key

    def text(self, key: str | None = None) -> TextFeatures:
        """The text feature set `key` (default: the cohort's), opened once and checked against the
        manifest's record of it (a cache of another encoder copied or left under this key would
        otherwise feed the model foreign features)."""
        key = self.resolve_text_key(key or self.text_key)
        if key not in self._text:
            recorded = self.manifest["text"]["features"][key]
            self._text[key] = load_text_features(
                self.directory, key, num_notes=self.num_stays,
                expected={name: recorded.get(name) for name in ("encoder", "revision", "max_tokens", "dim")},
                recorded_in=str(self.directory / MANIFEST))
        return self._text[key]

    @property
    def note_dim(self) -> int:
        return self.text().dim

    def label_embeddings(self, key: str | None = None) -> np.ndarray:
        """float32 L×D mean-pooled label-name encodings of the text feature set."""
        return self.text(key).label_embeddings

    # ----------------------------------------------------------------------- series
    @property
    def series_values(self) -> np.ndarray:
        """float32 (sum bins)×76 memory map, reopened after unpickling."""
        if self._series_values is None:
            self._series_values = np.load(self.directory / SERIES_VALUES, mmap_mode="r")
        return self._series_values

    def series(self, row: int) -> np.ndarray:
        """Discretised z-scored series of stay ``row``: bins×76 (view of the memmap)."""
        return self.series_values[self.series_offsets[row]:self.series_offsets[row + 1]]

    def rows(self, split: str) -> np.ndarray:
        """Row indices (int64) of the stays of ``split`` ("train" | "test" | "all")."""
        if split == "train":
            return self.train_rows
        if split == "test":
            return self.test_rows
        if split == "all":
            return np.arange(self.num_stays)
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_series_values"] = None
        return state


class CohortDataset(Dataset):
    """torch Dataset over some stays of a `CohortData`; items are dicts (see module docstring)."""

    def __init__(self, data: CohortData, rows: str | Sequence[int] | np.ndarray, text_key: str | None = None,
                 max_series_bins: int | None = None, max_note_tokens: int | None = None):
        self.data = data
        self.rows = data.rows(rows) if isinstance(rows, str) else np.asarray(rows, dtype=np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= data.num_stays):
            raise IndexError(f"row indices must lie in 0..{data.num_stays - 1}")
        self.text_key = data.resolve_text_key(text_key) if text_key else data.text_key
        self.text = data.text(self.text_key)
        if max_series_bins is not None and max_series_bins < 1:
            raise ValueError(f"max_series_bins must be >= 1 or None, got {max_series_bins}")
        if max_note_tokens is not None and max_note_tokens < 1:
            raise ValueError(f"max_note_tokens must be >= 1 or None, got {max_note_tokens}")
        self.max_series_bins = max_series_bins
        self.max_note_tokens = max_note_tokens

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> dict:
        row = int(self.rows[position])
        series = self.data.series(row)
        if self.max_series_bins is not None:
            series = series[-self.max_series_bins:] if len(series) else series
        note = self.text.note(row)
        if self.max_note_tokens is not None:
            note = note[:self.max_note_tokens]
        return {
            "index": row,
            "patient": int(self.data.patient_id[row]),
            "series": torch.from_numpy(np.array(series, dtype=np.float32)),
            "series_length": len(series),
            "has_series": len(series) > 0,
            "note": torch.from_numpy(np.array(note, dtype=np.float32)),
            "note_length": len(note),
            "has_note": len(note) > 0,
            "labels": torch.from_numpy(self.data.labels[row].astype(np.float32)),
        }


def collate(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """List of B dataset items -> batch dict (zero padding; T, S >= 1 even if a modality is all missing)."""
    count = len(items)
    if count == 0:
        raise ValueError("collate needs at least one item")
    series_length = torch.tensor([item["series_length"] for item in items], dtype=torch.long)
    note_length = torch.tensor([item["note_length"] for item in items], dtype=torch.long)
    channels = items[0]["series"].shape[1]
    dim = items[0]["note"].shape[1]
    series = torch.zeros(count, max(1, int(series_length.max())), channels, dtype=torch.float32)
    note = torch.zeros(count, max(1, int(note_length.max())), dim, dtype=torch.float32)
    for position, item in enumerate(items):
        series[position, :item["series_length"]] = item["series"]
        note[position, :item["note_length"]] = item["note"]
    return {
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "patient": torch.tensor([item["patient"] for item in items], dtype=torch.long),
        "series": series,
        "series_length": series_length,
        "has_series": series_length > 0,
        "note": note,
        "note_length": note_length,
        "has_note": note_length > 0,
        "labels": torch.stack([item["labels"] for item in items]),
    }
