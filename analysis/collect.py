"""Read a run's results into one tidy frame, select last epochs, check that a sweep is complete.

Input is the grid's ``results.parquet`` (one row per trial × epoch, ARCHITECTURE §8), or — when
that file is absent — the grid's sweep folder itself; both are read by
`miracl_grid.grid.results.read_results`, the module that owns that format and writes it (files
only, no Ray). Next to the results, ``trials.parquet`` lists every trial the sweep registered,
finished or not: the expected cells come from it (`expected_cells_from_trials`), not from the
rows that exist.

Derived columns (`annotate`): ``noise_setting`` ('Sym. 20%', …) and ``method_label``
('MIRACL', 'FlexCare', …), see `miracl_grid.analysis.labels`.

No torch or ray here: a results file opened on a laptop is enough.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from miracl_grid.analysis.labels import method_label, noise_setting_label, noise_setting_sort_key
from miracl_grid.grid.results import FINISHED_STATUS, ResultsError, last_epoch_flags, read_results

logger = logging.getLogger(__name__)

NOISE_SETTING = "noise_setting"
METHOD_LABEL = "method_label"
CONFIG_PREFIX = "config/"
SEED_COLUMN = "config/seed"
NOISE_COLUMNS = ("config/noise_model", "config/rho_pos", "config/rho_neg")
ARM_COLUMNS = ("config/method", "config/backbone", "config/variant")
REQUIRED_COLUMNS = ("trial_id", "epoch", "config/method", "config/noise_model", "config/rho_pos",
                    "config/rho_neg", "config/seed")


class IncompleteSweepError(ResultsError):
    """Expected cells (method, noise setting, seed, …) without a finished trial.

    `missing` holds one dict per missing cell (column -> expected value).
    """

    def __init__(self, missing: list[dict[str, Any]], context: str = ""):
        self.missing = missing
        lines = "\n".join(f"  - {format_cell(cell)}" for cell in missing[:50])
        more = f"\n  … and {len(missing) - 50} more" if len(missing) > 50 else ""
        where = f" in {context}" if context else ""
        super().__init__(f"{len(missing)} expected cell(s) have no finished trial{where}:\n{lines}{more}\n"
                         "(pass allow_partial=True / --allow-partial to report what is there)")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_results(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Read ``results.parquet`` (the file, or a sweep folder holding it) or a sweep folder without it.

    Returns (results, trials). results: one row per trial × epoch in the results schema (columns
    ``trial_id``, ``sweep``, ``experiment``, ``epoch``, ``is_last_epoch``, ``status``,
    ``config/*``, metrics …), sorted by trial and epoch, ``attrs["source"]`` naming the file
    read. trials: the sweep's registered trials (``trials.parquet``), or None where unknown;
    they travel beside the results, never in their ``attrs`` (pandas compares attrs with ``==``
    when it concatenates, which a frame there breaks). Raises `ResultsError` for a missing
    path, an empty result, an unreadable file or missing required columns (naming the file and
    the column).
    """
    frame, trials, source = read_results(path)
    frame = _normalise(frame, source)
    frame.attrs["source"] = str(source)
    return frame, (trials if trials is not None and not trials.empty else None)


def _normalise(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    if frame.empty:
        raise ResultsError(f"results '{source}' contain no rows")
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ResultsError(f"results '{source}' lack required column(s) {', '.join(missing)}")
    frame = frame.copy()
    frame["trial_id"] = frame["trial_id"].astype(str)
    try:
        frame["epoch"] = frame["epoch"].astype("int64")
    except (TypeError, ValueError) as error:
        raise ResultsError(f"results '{source}': column 'epoch' must hold integers ({error})") from error
    for column, default in (("sweep", "unknown"), ("experiment", ""), ("status", FINISHED_STATUS)):
        if column not in frame.columns:
            frame[column] = default
        frame[column] = frame[column].fillna(default).astype(str)
    if "is_last_epoch" not in frame.columns:
        frame["is_last_epoch"] = last_epoch_flags(frame)
    frame["is_last_epoch"] = frame["is_last_epoch"].fillna(False).astype(bool)
    duplicated = frame.duplicated(["trial_id", "epoch"], keep="last")
    if duplicated.any():
        logger.warning("results '%s': %d duplicated (trial_id, epoch) rows; keeping the last of each",
                       source, int(duplicated.sum()))
        frame = frame.loc[~duplicated]
    return frame.sort_values(["sweep", "trial_id", "epoch"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Derived labels and selections
# --------------------------------------------------------------------------------------------
def annotate(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of `frame` with ``noise_setting`` and ``method_label`` columns (miracl_grid.analysis.labels)."""
    frame = frame.copy()
    noise = frame[list(NOISE_COLUMNS)].astype(object).to_numpy()
    frame[NOISE_SETTING] = [noise_setting_label(*values) for values in noise]
    arms = frame.reindex(columns=list(ARM_COLUMNS)).astype(object).to_numpy()
    frame[METHOD_LABEL] = [method_label(*values) for values in arms]
    return frame


def ensure_annotated(frame: pd.DataFrame) -> pd.DataFrame:
    """`annotate` unless both label columns are already there."""
    if NOISE_SETTING in frame.columns and METHOD_LABEL in frame.columns:
        return frame
    return annotate(frame)


def noise_setting_order(frame: pd.DataFrame) -> list[str]:
    """Distinct noise-setting labels of `frame` in table order (Tables 2/3 column order)."""
    frame = ensure_annotated(frame)
    keys: dict[str, tuple] = {}
    for label, values in zip(frame[NOISE_SETTING], frame[list(NOISE_COLUMNS)].astype(object).to_numpy()):
        key = noise_setting_sort_key(*values)
        keys[label] = min(keys.get(label, key), key)
    return sorted(keys, key=keys.__getitem__)


def last_epoch(frame: pd.DataFrame, *, finished_only: bool = False) -> pd.DataFrame:
    """Each trial's row with its largest epoch (METHOD §7: last-epoch metrics are reported).

    finished_only: keep only trials whose status is TERMINATED (an unfinished or failed trial's
    latest epoch is not a last-epoch result).
    """
    if frame.empty:
        return frame.copy()
    rows = frame.loc[frame.groupby("trial_id", sort=False)["epoch"].idxmax()]
    if finished_only and "status" in rows.columns:
        rows = rows.loc[rows["status"] == FINISHED_STATUS]
    return rows.sort_values(["sweep", "trial_id"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Completeness
# --------------------------------------------------------------------------------------------
def _normal_value(value: Any) -> Any:
    """Comparable form of a cell value: floats rounded to 9 decimals, NaN/None -> None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        return None if math.isnan(number) else round(number, 9)
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def format_cell(cell: Mapping[str, Any]) -> str:
    """'method_label=MIRACL, noise_setting=Sym. 20%, config/seed=40'."""
    def text(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    return ", ".join(f"{key}={text(value)}" for key, value in cell.items())


def _cells(expected: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(expected, pd.DataFrame):
        return expected.to_dict(orient="records")
    return [dict(cell) for cell in expected]


def check_complete(frame: pd.DataFrame, expected_cells: pd.DataFrame | Iterable[Mapping[str, Any]],
                   allow_partial: bool = False) -> list[dict[str, Any]]:
    """Expected cells that have no finished trial; raise `IncompleteSweepError` unless allowed.

    frame: results (any epochs; annotated or not). expected_cells: a DataFrame or mappings whose
    keys are columns of `frame` (``config/*``, ``sweep``, ``noise_setting``, ``method_label`` …),
    e.g. ``{"method_label": "MIRACL", "noise_setting": "Sym. 20%", "config/seed": 40}``.
    A cell counts as present when some TERMINATED trial's last row matches it on every key
    (floats compared to 9 decimals). Returns the missing cells in the given order (empty when
    complete); with ``allow_partial=False`` a non-empty result raises instead.
    """
    cells = _cells(expected_cells)
    if not cells:
        return []
    finals = last_epoch(ensure_annotated(frame), finished_only=True)
    missing: list[dict[str, Any]] = []
    present_by_keys: dict[tuple[str, ...], set[tuple]] = {}
    for cell in cells:
        keys = tuple(cell)
        unknown = [key for key in keys if key not in finals.columns]
        if unknown:
            raise ResultsError(f"expected cell {format_cell(cell)}: column(s) {', '.join(unknown)} "
                               "are not in the results")
        if keys not in present_by_keys:
            values = finals[list(keys)].astype(object).to_numpy()
            present_by_keys[keys] = {tuple(_normal_value(value) for value in row) for row in values}
        if tuple(_normal_value(cell[key]) for key in keys) not in present_by_keys[keys]:
            missing.append(cell)
    if missing and not allow_partial:
        raise IncompleteSweepError(missing, frame.attrs.get("source", ""))
    if missing:
        logger.warning("%d expected cell(s) missing; reporting what is there", len(missing))
    return missing


def design_factors(trials: pd.DataFrame) -> list[str]:
    """Columns whose distinct values span a sweep's design (one row per trial, annotated).

    Always ``method_label``, ``noise_setting`` and ``config/seed``; plus every other varying
    ``config/*`` column that is not a function of one of the factors already chosen (so that
    ablation switches such as ``config/alpha`` ride on ``method_label`` while the λ_cons of a
    λ_cons sweep is a factor of its own).
    """
    factors = [METHOD_LABEL, NOISE_SETTING, SEED_COLUMN]
    derived = set(ARM_COLUMNS) | set(NOISE_COLUMNS) | {SEED_COLUMN}
    normal = trials.astype(object).map(_normal_value)
    for column in trials.columns:
        if not column.startswith(CONFIG_PREFIX) or column in derived:
            continue
        if normal[column].nunique(dropna=False) <= 1:
            continue
        determined = any(
            (normal.groupby(normal[factor].astype(str), sort=False)[column].nunique(dropna=False) <= 1).all()
            for factor in factors)
        if not determined:
            factors.append(column)
    return factors


def infer_expected_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The full product of each sweep's `design_factors` values seen in `frame`, per sweep.

    Without an explicit list of planned trials this is the best available expectation: a cell
    is expected when each of its factor values occurs somewhere in that sweep (a method run
    under some noise setting and seed is expected under all of them). Other factors (λ_cons of a
    λ_cons sweep) are expected per method only at the values that method ran with, so a baseline
    run outside the sweep's grid (FlexCare in the λ_cons sweep) is not expected at every λ_cons.
    Columns: ``sweep`` plus the factors (a factor absent from one sweep is NaN there).
    """
    trials = last_epoch(ensure_annotated(frame))
    parts = []
    for sweep, group in trials.groupby("sweep", sort=True):
        factors = design_factors(group)
        levels = [list(dict.fromkeys(group[factor].tolist())) for factor in factors]
        product = pd.DataFrame(list(itertools.product(*levels)), columns=factors)
        for factor in factors[3:]:                 # beyond method, noise setting, seed
            seen = group[[METHOD_LABEL, factor]].astype(object).map(_normal_value).drop_duplicates()
            keys = product[[METHOD_LABEL, factor]].astype(object).map(_normal_value)
            product = product.loc[keys.merge(seen, how="left", indicator=True)["_merge"].eq("both").to_numpy()]
        product = product.reset_index(drop=True)
        product.insert(0, "sweep", sweep)
        parts.append(product)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["sweep"])


def expected_cells_from_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Expected cells from the sweep's registered trials (``trials.parquet``: one row per trial
    of every expansion run into the folder, finished or not): per sweep, the distinct values of
    its `design_factors` over those trials. Columns as `infer_expected_cells`."""
    parts = []
    for sweep, group in annotate(trials).groupby("sweep", sort=True):
        factors = design_factors(group)
        cells = group[factors].drop_duplicates().reset_index(drop=True)
        cells.insert(0, "sweep", sweep)
        parts.append(cells)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["sweep"])


def missing_by_sweep(frame: pd.DataFrame, expected: pd.DataFrame | None = None,
                     allow_partial: bool = False) -> list[dict[str, Any]]:
    """`check_complete` against `expected` (default `infer_expected_cells`), each sweep on its own
    factors (NaN factors of another sweep are dropped from the cell)."""
    expected = infer_expected_cells(frame) if expected is None else expected
    cells = []
    for cell in _cells(expected):
        cells.append({key: value for key, value in cell.items()
                      if not (isinstance(value, float) and math.isnan(value))})
    return check_complete(frame, cells, allow_partial=allow_partial)


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The ``config/*`` columns of `frame`, in frame order."""
    return [column for column in frame.columns if column.startswith(CONFIG_PREFIX)]


def varying_and_constant(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split `columns` into those with several distinct values and a dict of the constant ones."""
    varying: list[str] = []
    constant: dict[str, Any] = {}
    for column in columns:
        values = frame[column].astype(object).map(_normal_value)
        if values.nunique(dropna=False) > 1:
            varying.append(column)
        else:
            constant[column] = frame[column].iloc[0] if len(frame) else None
    return varying, constant
