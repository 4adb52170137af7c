"""`results.parquet` and `trials.parquet` (ARCHITECTURE §8): their names, writer and reader.

`collect_sweep` is the one reader of the grid's sweep folder (`miracl_grid.grid.folder`), `write_results`
writes both files from it, and `read_results` reads them back — or, where a folder has no
`results.parquet`, collects the folder itself; `miracl_grid.analysis.collect` calls it. No Ray,
no torch: it runs on a laptop over a copied folder, and `collect_sweep` on any pyarrow URI
(s3://...) directly.

`results.parquet`: one row per trial × epoch — identity (trial_id, sweep, experiment, epoch,
is_last_epoch, status), the flattened TrialConfig as ``config/<field>``, every reported metric
(``test/*``, ``train/*``, ``correction/*``, ``noise/*``, ``time/*``, ``artifact/*``,
``placement/*``: Ray node id and device of each rank) and the
``provenance/*`` columns the trial was registered with, plus ``provenance/config_hash``.
A trial's rows are the `history.json` of its newest complete checkpoint: every epoch exactly
once, whatever the driver lost between a checkpoint and Tune's result log.

`trials.parquet`: one row per registered trial (the sweep's expansion, finished or not):
trial_id, sweep, experiment, status, epochs_done, the ``config/*`` and ``provenance/*`` columns.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from miracl_grid.grid.folder import TRIALS_FOLDER, FolderError, SweepFolder, write_atomically
from miracl_grid.trainables.config import TrialConfig

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.parquet"
TRIALS_FILE = "trials.parquet"
METRIC_PREFIXES = ("test/", "train/", "correction/", "noise/", "time/", "artifact/", "placement/")
FINISHED_STATUS = "TERMINATED"
ERROR_STATUS = "ERROR"
UNFINISHED_STATUS = "INCOMPLETE"


class ResultsError(ValueError):
    """A results file or directory that cannot be read; the message names the path and field."""


def trial_status(epochs_done: int, epochs: int, failure: str | None) -> str:
    """TERMINATED when every planned epoch is checkpointed, else ERROR (its last run failed
    after retries) or INCOMPLETE (interrupted, or not started yet)."""
    if epochs_done >= epochs:
        return FINISHED_STATUS
    return ERROR_STATUS if failure is not None else UNFINISHED_STATUS


def collect_sweep(folder: SweepFolder | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, trials) frames of every trial registered in a sweep folder."""
    folder = folder if isinstance(folder, SweepFolder) else SweepFolder(folder)
    experiment = folder.uri.rsplit("/", 1)[-1]
    records, expected = [], []
    for trial in folder.trial_records():
        config = TrialConfig.from_dict(trial["config"])
        store = folder.checkpoint_store(trial["id"])
        try:
            history = store.history()
        except ValueError as error:
            raise ValueError(f"trial {trial['id']}: {error}") from None
        epochs_done = max((int(row["epoch"]) for row in history), default=0)
        status = trial_status(epochs_done, config.epochs, folder.failure(trial["id"]))
        identity = {"trial_id": trial["id"], "sweep": trial["sweep"], "experiment": experiment}
        config_columns = {f"config/{k}": v for k, v in config.to_flat_dict().items()}
        provenance = {**trial.get("provenance", {}), "provenance/config_hash": trial["config_hash"]}
        expected.append({**identity, "status": status, "epochs_done": epochs_done, **config_columns,
                         **provenance})
        for row in sorted(history, key=lambda item: int(item["epoch"])):
            epoch = int(row["epoch"])
            record = {**identity, "epoch": epoch, "is_last_epoch": False, "status": status}
            record.update(config_columns)
            record.update({k: v for k, v in row.items() if k.startswith(METRIC_PREFIXES)})
            record.update(provenance)
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame["is_last_epoch"] = last_epoch_flags(frame)
        frame = frame.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)
    return frame, pd.DataFrame.from_records(expected)


def last_epoch_flags(frame: pd.DataFrame) -> pd.Series:
    """``is_last_epoch``: each row whose epoch is its trial's largest (its newest checkpoint's
    epoch), whatever the trial's status."""
    return frame["epoch"] == frame.groupby("trial_id")["epoch"].transform("max")


def write_results(folder: SweepFolder) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """Collect the sweep folder and write its `results.parquet` and `trials.parquet`;
    returns (URI of results.parquet, results frame, trials frame)."""
    frame, trials = collect_sweep(folder)
    results_uri = write_frame(frame, folder, RESULTS_FILE)
    write_frame(trials, folder, TRIALS_FILE)
    return results_uri, frame, trials


def write_frame(frame: pd.DataFrame, folder: SweepFolder, name: str) -> str:
    """Write `frame` as parquet file `name` in the sweep folder, atomically (temporary file +
    rename: a full disk or a kill leaves the previous file intact). Returns its URI."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomically(folder.filesystem, f"{folder.path}/{name}", buffer.getvalue())
    return folder.child(name)


def read_results(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None, Path]:
    """(results, trials or None, source) from a local ``results.parquet``, a folder holding one
    (with ``trials.parquet`` beside it where present), or a sweep folder without one
    (`collect_sweep`). `ResultsError` names the path: missing, unreadable, neither of these."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results path '{path}' does not exist")
    source = path if path.is_file() else path / RESULTS_FILE
    if not source.is_file():
        return (*_collect_folder(path), path)
    trials = source.parent / TRIALS_FILE
    return _read_parquet(source), (_read_parquet(trials) if trials.is_file() else None), source


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise ResultsError(f"cannot read results file '{path}': {error}") from error


def _collect_folder(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not (path / TRIALS_FOLDER).is_dir():
        raise ResultsError(f"'{path}' holds neither {RESULTS_FILE} nor a grid sweep folder "
                           f"({TRIALS_FOLDER}/<trial>/trial.json)")
    try:
        frame, trials = collect_sweep(str(path))
    except (FolderError, ValueError) as error:
        raise ResultsError(f"cannot read sweep folder '{path}': {error}") from error
    if frame.empty:
        raise ResultsError(f"'{path}': no trial has checkpointed an epoch yet ({len(trials)} registered)")
    return frame, trials
