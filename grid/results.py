"""Tidy `results.parquet` and `trials.parquet` from a sweep folder (schema in README "Results").

The one reader of the grid's folder layout (`miracl_grid.grid.folder`); `miracl_grid.analysis.collect` calls it when a
folder has no `results.parquet`. No Ray, no torch: it runs on a laptop over a copied folder,
and on any pyarrow URI (s3://...) directly.

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

import pandas as pd

from miracl_grid.grid.folder import SweepFolder, write_atomically
from miracl_grid.trainables.config import TrialConfig

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.parquet"
TRIALS_FILE = "trials.parquet"
METRIC_PREFIXES = ("test/", "train/", "correction/", "noise/", "time/", "artifact/", "placement/")
FINISHED_STATUS = "TERMINATED"
ERROR_STATUS = "ERROR"
UNFINISHED_STATUS = "INCOMPLETE"


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
            record = {**identity, "epoch": epoch, "is_last_epoch": epoch == epochs_done, "status": status}
            record.update(config_columns)
            record.update({k: v for k, v in row.items() if k.startswith(METRIC_PREFIXES)})
            record.update(provenance)
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame = frame.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)
    return frame, pd.DataFrame.from_records(expected)


def write_frame(frame: pd.DataFrame, folder: SweepFolder, name: str) -> str:
    """Write `frame` as parquet file `name` in the sweep folder, atomically (temporary file +
    rename: a full disk or a kill leaves the previous file intact). Returns its URI."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomically(folder.filesystem, f"{folder.path}/{name}", buffer.getvalue())
    return folder.child(name)
