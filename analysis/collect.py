"""Read a run's results into one tidy frame, select last epochs, check that a sweep is complete.

Input is either the grid's ``results.parquet`` (one row per trial × epoch, schema in
ARCHITECTURE §8) or, when that file is absent, a Ray Tune experiment directory: every trial
folder holds a ``result.json`` with one JSON object per line (one per reported epoch). In such
a line the reported metrics are top-level keys (``"test/mAP"``; nested dicts are flattened with
``/``), ``"config"`` holds either ``{"trial": {<flat TrialConfig dict>}, ...}`` or the flat
dict itself, and Tune adds ``trial_id``, ``training_iteration``, ``time_total_s``.

Derived columns (`annotate`): ``noise_setting`` ('Sym. 20%', …) and ``method_label``
('MIRACL', 'FlexCare', …), see `analysis.labels`.

No torch or ray here: a results file opened on a laptop is enough.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.labels import method_label, noise_setting_label, noise_setting_sort_key

logger = logging.getLogger(__name__)

RESULTS_FILENAME = "results.parquet"
TUNE_RESULT_FILENAME = "result.json"
NOISE_SETTING = "noise_setting"
METHOD_LABEL = "method_label"
CONFIG_PREFIX = "config/"
SEED_COLUMN = "config/seed"
NOISE_COLUMNS = ("config/noise_model", "config/rho_pos", "config/rho_neg")
ARM_COLUMNS = ("config/method", "config/backbone", "config/variant")
REQUIRED_COLUMNS = ("trial_id", "epoch", "config/method", "config/noise_model", "config/rho_pos",
                    "config/rho_neg", "config/seed")
FINISHED_STATUS = "TERMINATED"
# Tune's own bookkeeping keys in result.json (not metrics of ours).
_TUNE_KEYS = {"trial_id", "training_iteration", "time_total_s", "timestamp", "date", "time_this_iter_s",
              "pid", "hostname", "node_ip", "done", "iterations_since_restore", "time_since_restore",
              "checkpoint_dir_name", "experiment_tag", "should_checkpoint", "config", "episodes_total",
              "timesteps_total", "timesteps_since_restore", "experiment_id"}


class ResultsError(ValueError):
    """A results file or directory that cannot be read; the message names the path and field."""


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
def load_results(path: str | Path) -> pd.DataFrame:
    """Read ``results.parquet`` (the file, or a directory holding it) or a Tune experiment dir.

    Returns one row per trial × epoch in the results schema (columns ``trial_id``, ``sweep``,
    ``experiment``, ``epoch``, ``is_last_epoch``, ``status``, ``config/*``, metrics …), sorted
    by trial and epoch. Raises `ResultsError` for a missing path, an empty result, unreadable
    lines or missing required columns (naming the file and the column).
    """
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results path '{path}' does not exist")
    if path.is_file():
        source = path
        frame = _read_parquet(path)
    else:
        parquet = path / RESULTS_FILENAME
        if parquet.is_file():
            source = parquet
            frame = _read_parquet(parquet)
        else:
            source = path
            frame = load_tune_experiment(path)
    frame = _normalise(frame, source)
    frame.attrs["source"] = str(source)
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise ResultsError(f"cannot read results file '{path}': {error}") from error


def _flatten(prefix: str, value: Any, into: dict[str, Any], separator: str = "/") -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}{separator}{key}" if prefix else str(key), inner, into, separator)
    else:
        into[prefix] = value


def _trial_config(config: Any, source: Path, line: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split Tune's ``config`` into (flat TrialConfig fields, other top-level keys)."""
    if config is None:
        return {}, {}
    if not isinstance(config, Mapping):
        raise ResultsError(f"{source}:{line}: field 'config' is {type(config).__name__}, expected an object")
    if isinstance(config.get("trial"), Mapping):
        trial = dict(config["trial"])
        others = {key: value for key, value in config.items() if key != "trial"}
    else:
        trial, others = dict(config), {}
    flat: dict[str, Any] = {}
    for key, value in trial.items():
        if key == "extra" and isinstance(value, Mapping):
            _flatten("extra", value, flat, separator=".")
        elif isinstance(value, Mapping):
            _flatten(str(key), value, flat, separator=".")
        else:
            flat[str(key)] = value
    return flat, others


def _read_trial(result_path: Path, root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params_path = result_path.parent / "params.json"
    fallback_config: Any = None
    if params_path.is_file():
        try:
            fallback_config = json.loads(params_path.read_text())
        except json.JSONDecodeError as error:
            raise ResultsError(f"{params_path}: not valid JSON ({error})") from error
    with result_path.open() as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ResultsError(f"{result_path}:{line_number}: not a JSON object ({error})") from error
            if not isinstance(record, dict):
                raise ResultsError(f"{result_path}:{line_number}: expected a JSON object per line")
            trial, others = _trial_config(record.get("config", fallback_config), result_path, line_number)
            row: dict[str, Any] = {}
            for key, value in record.items():
                if key in _TUNE_KEYS:
                    continue
                _flatten(key, value, row)
            row.update({f"{CONFIG_PREFIX}{key}": value for key, value in trial.items()})
            row["trial_id"] = str(record.get("trial_id") or result_path.parent.name)
            epoch = record.get("epoch", record.get("training_iteration"))
            if epoch is None:
                raise ResultsError(f"{result_path}:{line_number}: neither 'epoch' nor 'training_iteration'")
            row["epoch"] = int(epoch)
            for key in ("sweep", "experiment"):
                value = record.get(key, others.get(key, trial.get(key, trial.get(f"extra.{key}"))))
                if value is not None:
                    row[key] = str(value)
            row.setdefault("experiment", root.name)
            if "time/trial_wall_s" not in row and record.get("time_total_s") is not None:
                row["time/trial_wall_s"] = float(record["time_total_s"])
            row["_done"] = bool(record.get("done", False))
            rows.append(row)
    errored = any((result_path.parent / name).exists() for name in ("error.txt", "error.pkl"))
    if rows:
        last = max(rows, key=lambda item: item["epoch"])
        planned = last.get("config/epochs")
        finished = last["_done"] or (planned is not None and last["epoch"] >= int(planned))
        status = "ERROR" if errored else (FINISHED_STATUS if finished else "INCOMPLETE")
        for row in rows:
            row["status"] = status
            row.pop("_done")
    return rows


def load_tune_experiment(directory: str | Path) -> pd.DataFrame:
    """One row per trial × epoch from every ``result.json`` below `directory` (Ray Tune layout).

    ``sweep`` is taken from the record, the config (top level or ``extra.sweep``), or else the
    directory name. ``status`` is ERROR when the trial folder holds Tune's ``error.txt``,
    TERMINATED when the trial reached ``config/epochs`` (or Tune marked it done), INCOMPLETE
    otherwise.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ResultsError(f"'{root}' is not a directory")
    result_files = sorted(root.rglob(TUNE_RESULT_FILENAME))
    if not result_files:
        raise ResultsError(f"'{root}' holds neither {RESULTS_FILENAME} nor any Tune trial folder with "
                           f"{TUNE_RESULT_FILENAME}")
    rows = [row for path in result_files for row in _read_trial(path, root)]
    if not rows:
        raise ResultsError(f"'{root}': every {TUNE_RESULT_FILENAME} is empty (no epoch reported yet)")
    frame = pd.DataFrame(rows)
    if "sweep" not in frame.columns:
        frame["sweep"] = root.name
    frame["sweep"] = frame["sweep"].fillna(root.name)
    return frame


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
        trial_last = frame.groupby("trial_id")["epoch"].transform("max")
        frame["is_last_epoch"] = (frame["epoch"] == trial_last) & (frame["status"] == FINISHED_STATUS)
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
    """Copy of `frame` with ``noise_setting`` and ``method_label`` columns (analysis.labels)."""
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
