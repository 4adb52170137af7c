"""The in-memory cohort: what a reader returns and what `miracl_grid.data.materialise` consumes (METHOD §1).

One instance = one ICU stay. A `Cohort` holds, in stay row order 0..N-1:

- ``stays``: DataFrame with ``stay`` (str, unique), ``patient_id`` (int64),
  ``split`` ("train" | "test" | None until `miracl_grid.data.split.assign_split`), ``period_length``
  (float64 hours, NaN = unknown) and, optionally, ``series_file`` (str path or None when the
  stay has no series file; added as None when absent);
- ``labels``: uint8 N×L clean labels, columns named by ``label_names``;
- ``events``: ONE long DataFrame holding every time-series row of every stay: ``row`` (int64
  stay row index), optionally ``line`` (int64 line number in the series file, header =
  line 1; the readers add it for error messages), ``Hours`` (float64) and the 17 variable
  columns of `miracl_grid.data.schema.VARIABLE_NAMES` as the strings read from the file (NaN = missing);
- ``notes``: object array of N str ("" = no note);
- ``source``: JSON-safe description of where it came from (paths, counts of values read as 0,
  unknown categories, ...), copied into the manifest;
- ``dropped``: list of ``{"stay": ..., "reason": ...}`` for every stay left out;
- ``timings``: seconds per stage so far (``generate``, ``read``), merged into the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from miracl_grid.data.schema import VARIABLE_NAMES

STAY_COLUMNS: tuple[str, ...] = ("stay", "patient_id", "split", "period_length")
EVENT_COLUMNS: tuple[str, ...] = ("row", "Hours") + VARIABLE_NAMES
SPLITS: tuple[str, ...] = ("train", "test")


def empty_events() -> pd.DataFrame:
    """An events frame with no rows and the right columns/dtypes."""
    frame = pd.DataFrame({name: pd.Series(dtype=object) for name in VARIABLE_NAMES})
    frame.insert(0, "Hours", pd.Series(dtype=np.float64))
    frame.insert(0, "line", pd.Series(dtype=np.int64))
    frame.insert(0, "row", pd.Series(dtype=np.int64))
    return frame


@dataclass
class Cohort:
    """All stays of one source, before discretisation. Shapes: labels N×L, notes N, events E rows."""

    stays: pd.DataFrame
    labels: np.ndarray
    label_names: tuple[str, ...]
    events: pd.DataFrame
    notes: np.ndarray
    source: dict = field(default_factory=dict)
    dropped: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.label_names = tuple(self.label_names)
        missing = [c for c in STAY_COLUMNS if c not in self.stays.columns]
        if missing:
            raise ValueError(f"Cohort.stays lacks columns {missing}")
        if "series_file" not in self.stays.columns:  # optional: only readers know the files
            self.stays["series_file"] = pd.Series([None] * len(self.stays), dtype=object, index=self.stays.index)
        missing = [c for c in EVENT_COLUMNS if c not in self.events.columns]
        if missing:
            raise ValueError(f"Cohort.events lacks columns {missing}")
        count = len(self.stays)
        if self.labels.shape != (count, len(self.label_names)):
            raise ValueError(f"labels shape {self.labels.shape} != ({count}, {len(self.label_names)})")
        if self.labels.dtype != np.uint8:
            raise ValueError(f"labels dtype {self.labels.dtype}, expected uint8")
        if len(self.notes) != count:
            raise ValueError(f"{len(self.notes)} notes for {count} stays")
        if not self.stays["stay"].is_unique:
            raise ValueError("Cohort.stays['stay'] must be unique")
        rows = self.events["row"].to_numpy()
        if len(rows) and (rows.min() < 0 or rows.max() >= count):
            raise ValueError("Cohort.events['row'] outside 0..N-1")

    @property
    def num_stays(self) -> int:
        return len(self.stays)

    @property
    def has_series(self) -> np.ndarray:
        """bool N: the stay has at least one time-series row."""
        return np.bincount(self.events["row"].to_numpy(np.int64), minlength=self.num_stays) > 0

    @property
    def has_note(self) -> np.ndarray:
        """bool N: the stay has a non-empty note."""
        return (pd.Series(self.notes, dtype=object).str.len() > 0).to_numpy(bool)
