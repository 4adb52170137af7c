"""Hourly discretisation of the 17 variables into 76 channels, and the train-only z-scorer (METHOD §9).

Conventions (mimic3-benchmarks' Discretizer with timestep 1 h, start time "zero",
imputation "previous"):

- bin of an event at t hours: ``floor(t - 1e-6)``, with 0 <= t < 1e-6 clipped into bin 0
  (t=0 -> 0, t=1.0 -> 0, t=1.5 -> 1, t=2.999 -> 2);
- bins per stay: ``max(1, ceil(period_length - 1e-6))`` — for period_length >= 0 this equals the
  benchmark's ``int(period_length + 1 - 1e-6)`` — with ``max(Hours)`` in place of an unknown
  (NaN) period_length, as the benchmark does when no end is given; 0 bins for a stay without
  series rows. Events after the end (t > period_length + 1e-6) are skipped and counted;
- within a bin, per variable, the last non-missing value wins (row order after a stable sort on
  Hours); overwritten values are counted;
- categoricals are one-hot in the order of `miracl_grid.data.schema` categories; continuous variables are one
  column each (59 value columns), then 17 masks (1 where the variable was observed in the bin);
- imputation "previous": a bin without an observation carries the stay's previous observed value
  forward; before the first observation the variable's normal value is used (one-hot for
  categoricals); masks stay 0 for imputed bins;
- only the LAST ``max_bins`` bins of a stay are kept (imputation runs over the whole stay first).

Everything is vectorised over the whole events frame: one pass per variable (17), no loop over
stays or cells. Values: float32 (sum of kept bins)×76, ragged by ``offsets`` (int64 N+1).

`fit_normaliser` z-scores the 12 continuous value columns only (not one-hots, not masks) with the
mean and population standard deviation (ddof=0, scikit-learn's `StandardScaler`; a zero std
becomes 1) over the bins of TRAIN stays only; `apply_normaliser` applies them to every stay.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from miracl_grid.data.errors import CohortError
from miracl_grid.data.numbers import parse_numbers
from miracl_grid.data.schema import VARIABLES, channel_names

EPSILON = 1e-6
NUM_VALUE_CHANNELS = sum(v.width for v in VARIABLES)  # 59
NUM_CHANNELS = NUM_VALUE_CHANNELS + len(VARIABLES)     # 76
DEFAULT_MAX_BINS = 512
TRANSPOSE_BLOCK = 4096


def _value_starts() -> tuple[int, ...]:
    starts, position = [], 0
    for variable in VARIABLES:
        starts.append(position)
        position += variable.width
    return tuple(starts)


VALUE_STARTS: tuple[int, ...] = _value_starts()
CONTINUOUS_CHANNELS: tuple[int, ...] = tuple(
    start for start, variable in zip(VALUE_STARTS, VARIABLES) if variable.categories is None)
MASK_CHANNELS: tuple[int, ...] = tuple(NUM_VALUE_CHANNELS + i for i in range(len(VARIABLES)))
assert len(channel_names()) == NUM_CHANNELS


@dataclass
class DiscretisedSeries:
    """Ragged discretised series: stay i is ``values[offsets[i]:offsets[i+1]]`` (bins×76)."""

    values: np.ndarray          # float32 (sum bins)×76
    offsets: np.ndarray         # int64 N+1
    full_bins: np.ndarray       # int64 N, bins before truncation to max_bins
    statistics: dict = field(default_factory=dict)

    @property
    def bins(self) -> np.ndarray:
        """int64 N: kept bins per stay."""
        return np.diff(self.offsets)


@dataclass
class Normaliser:
    """z-scoring of ``channels`` (continuous value columns) with train-only mean/std."""

    channels: tuple[int, ...]
    mean: np.ndarray  # float64 len(channels)
    std: np.ndarray   # float64 len(channels)

    def to_dict(self) -> dict:
        return {"channels": list(self.channels), "mean": self.mean.tolist(), "std": self.std.tolist()}


def bin_index(hours: np.ndarray) -> np.ndarray:
    """Hour bin of each event time (float hours >= 0) -> int64: floor(t - 1e-6), clipped at 0."""
    return np.maximum(np.floor(np.asarray(hours, dtype=np.float64) - EPSILON), 0).astype(np.int64)


def bins_per_stay(period_length: np.ndarray, max_hours: np.ndarray, has_series: np.ndarray) -> np.ndarray:
    """int64 N: max(1, ceil(length - 1e-6)) with length = period_length, or max Hours if NaN; 0 without series."""
    length = np.where(np.isnan(period_length), max_hours, period_length)
    length = np.where(np.isnan(length), 0.0, length)
    count = np.maximum(1, np.ceil(length - EPSILON)).astype(np.int64)
    return np.where(has_series, count, 0)


def _parse_variable(column: pd.Series, variable) -> np.ndarray:
    """Column of strings -> float64 values (continuous) or category codes (categorical, -1 = missing)."""
    if variable.categories is None:
        values, bad = parse_numbers(column)
        if bad.any():
            value = column.to_numpy(dtype=object)[np.flatnonzero(bad)[0]]
            raise CohortError(f"column '{variable.name}': value {value!r} is not a number of miracl_grid.data.numbers' "
                              "grammar (the reader should have rejected it)")
        return values
    codes = pd.Categorical(column, categories=list(variable.categories)).codes.astype(np.int64)
    unknown = (codes < 0) & column.notna().to_numpy()
    if unknown.any():
        value = column.to_numpy(dtype=object)[np.flatnonzero(unknown)[0]]
        raise CohortError(f"column '{variable.name}': value {value!r} is not one of {list(variable.categories)} "
                          "(the reader should have rejected or blanked it)")
    return codes.astype(np.float64)


def discretise(events: pd.DataFrame, period_length: np.ndarray, *,
               max_bins: int = DEFAULT_MAX_BINS) -> DiscretisedSeries:
    """Events (E rows: row, Hours, 17 variables as str) of N stays -> DiscretisedSeries (METHOD §9).

    ``period_length``: float64 N (NaN = unknown). Output values are NOT normalised yet.
    """
    if max_bins < 1:
        raise ValueError(f"max_bins must be >= 1, got {max_bins}")
    period_length = np.asarray(period_length, dtype=np.float64)
    count = len(period_length)
    row = events["row"].to_numpy(np.int64)
    hours = events["Hours"].to_numpy(np.float64)
    step = np.diff(row)
    if np.all((step > 0) | ((step == 0) & (np.diff(hours) >= 0))):
        frame = events  # the readers' order already: by stay, then time
    else:
        order = np.lexsort((hours, row))  # stable: equal times keep their row order
        frame = events.iloc[order]
        row, hours = row[order], hours[order]

    has_series = np.bincount(row, minlength=count) > 0
    max_hours = np.full(count, np.nan)
    if len(row):
        last = np.r_[row[1:] != row[:-1], True]
        max_hours[row[last]] = hours[last]
    full = bins_per_stay(period_length, max_hours, has_series)
    length = np.where(np.isnan(period_length), max_hours, period_length)
    kept = np.minimum(full, max_bins)
    first_kept = full - kept
    full_offsets = np.r_[0, np.cumsum(full)]
    offsets = np.r_[0, np.cumsum(kept)].astype(np.int64)

    event_bin = bin_index(hours)
    in_range = (hours <= length[row] + EPSILON) & (event_bin < full[row])  # benchmark: skip t > end + eps
    event_global = full_offsets[row] + event_bin  # non-decreasing (sorted by row, then Hours)

    total = int(offsets[-1])
    kept_row = np.repeat(np.arange(count, dtype=np.int64), kept)
    within = np.arange(total, dtype=np.int64) - offsets[kept_row]
    kept_global = full_offsets[kept_row] + first_kept[kept_row] + within

    # channel-major buffer: each variable writes whole contiguous rows (a column write into a
    # bins×76 row-major array strides over every page); transposed once at the end
    channels_first = np.zeros((NUM_CHANNELS, total), dtype=np.float32)
    positions = np.arange(total)
    overwritten: dict[str, int] = {}
    observed_bins: dict[str, int] = {}
    for index, (variable, start) in enumerate(zip(VARIABLES, VALUE_STARTS)):
        parsed = _parse_variable(frame[variable.name], variable)
        present = in_range & ~np.isnan(parsed)
        if variable.categories is not None:
            present &= parsed >= 0
        obs_global = event_global[present]
        obs_value = parsed[present]
        obs_row = row[present]
        last_in_bin = np.r_[obs_global[1:] != obs_global[:-1], True] if len(obs_global) else np.zeros(0, bool)
        overwritten[variable.name] = int((~last_in_bin).sum())
        obs_global, obs_value, obs_row = obs_global[last_in_bin], obs_value[last_in_bin], obs_row[last_in_bin]

        previous = np.searchsorted(obs_global, kept_global, side="right") - 1
        safe = np.maximum(previous, 0)
        has_previous = (previous >= 0) & (obs_row[safe] == kept_row) if len(obs_global) else np.zeros(total, bool)
        observed = has_previous & (obs_global[safe] == kept_global) if len(obs_global) else has_previous
        observed_bins[variable.name] = int(observed.sum())
        if variable.categories is None:
            normal = float(variable.normal_value)
            filled = np.where(has_previous, obs_value[safe] if len(obs_value) else normal, normal)
            channels_first[start] = filled
        else:
            normal = variable.categories.index(variable.normal_value)
            code = np.where(has_previous, obs_value[safe] if len(obs_value) else normal, normal).astype(np.int64)
            channels_first[start + code, positions] = 1.0
        channels_first[NUM_VALUE_CHANNELS + index] = observed
    values = np.empty((total, NUM_CHANNELS), dtype=np.float32)
    for block in range(0, total, TRANSPOSE_BLOCK):  # blocked transpose: cache-friendly
        values[block:block + TRANSPOSE_BLOCK] = channels_first[:, block:block + TRANSPOSE_BLOCK].T
    del channels_first

    statistics = {
        "events": int(len(row)),
        "events_after_period_length": int((~in_range).sum()),
        "values_overwritten_in_bin": overwritten,
        "observed_bins": observed_bins,
        "total_bins": total,
        "stays_truncated": int((full > max_bins).sum()),
        "stays_without_series": int((~has_series).sum()),
    }
    return DiscretisedSeries(values=values, offsets=offsets, full_bins=full, statistics=statistics)


def fit_normaliser(values: np.ndarray, offsets: np.ndarray, train_rows: np.ndarray,
                   channels: tuple[int, ...] = CONTINUOUS_CHANNELS) -> Normaliser:
    """Mean/std of ``channels`` over the bins of the stays ``train_rows`` only (values: bins×76)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    bins = np.diff(offsets)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    bin_owner = np.repeat(np.arange(len(bins)), bins)
    is_train = np.zeros(len(bins), dtype=bool)
    is_train[train_rows] = True
    selected = values[:, list(channels)][is_train[bin_owner]].astype(np.float64)  # 12 columns first
    if len(selected) == 0:
        return Normaliser(tuple(channels), np.zeros(len(channels)), np.ones(len(channels)))
    scaler = StandardScaler().fit(selected)
    return Normaliser(tuple(channels), scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64))


def apply_normaliser(values: np.ndarray, normaliser: Normaliser) -> np.ndarray:
    """z-score the normaliser's channels of ``values`` (bins×76 float32) in place; returns it."""
    channels = list(normaliser.channels)
    values[:, channels] = ((values[:, channels].astype(np.float64) - normaliser.mean) / normaliser.std
                           ).astype(np.float32)
    return values
