"""Tidy `results.parquet` from a Tune experiment directory (schema in README "Results").

One row per trial × epoch: identity (trial_id, sweep, experiment, epoch, is_last_epoch,
status), the flattened TrialConfig as ``config/<field>``, every reported metric
(``test/*``, ``train/*``, ``correction/*``, ``noise/*``, ``time/*``, ``artifact/*``,
``placement/*``: Ray node id and device of each rank) and the
sweep's ``provenance/*`` columns plus a per-trial ``provenance/config_hash``.

Reads each trial folder's ``result.json`` (one JSON object per reported epoch). A resumed
trial may report an epoch twice (before and after the interruption); the later line wins.
An epoch whose report was checkpointed but never reached Tune (the driver died in between)
is filled from the `history.json` of the trial's latest Ray Train checkpoint.
No Ray import: this runs on a laptop over a copied experiment folder too.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from trainables.config import TrialConfig

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.parquet"
TRAIN_RUNS_FOLDER = "train_runs"     # grid.runner puts each trial's Ray Train run here
HISTORY_FILE = "history.json"        # trainables.loop writes it into every checkpoint
METRIC_PREFIXES = ("test/", "train/", "correction/", "noise/", "time/", "artifact/", "placement/")
ERROR_STATUS = "ERROR"


def _trial_rows(result_file: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(result_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{result_file}: line {number} is not JSON ({error.msg})") from None
    return rows


def _checkpoint_history(*folders: Path) -> list[dict]:
    """Per-epoch metrics kept in the trial's latest checkpoint (`history.json`): Ray Train's
    run folder for worker-group trials, the Tune trial folder for in-process ones."""
    histories = [json.loads(path.read_text()) for folder in folders
                 for path in folder.glob(f"checkpoint_*/{HISTORY_FILE}")]
    return max(histories, key=len, default=[])


def collect_experiment(experiment_dir: str | Path, *, sweep: str, provenance: dict | None = None,
                       statuses: dict[str, str] | None = None) -> pd.DataFrame:
    """All trials' per-epoch reports of one Tune experiment as one tidy frame."""
    experiment_dir = Path(experiment_dir)
    records: list[dict] = []
    for result_file in sorted(experiment_dir.glob("*/result.json")):
        by_epoch: dict[int, dict] = {}
        for row in _trial_rows(result_file):
            if "epoch" not in row:
                continue
            by_epoch[int(row["epoch"])] = row       # a resumed trial's later report wins
        if not by_epoch:
            continue
        trial = next(iter(by_epoch.values()))["config"]["trial"]
        for row in _checkpoint_history(experiment_dir / TRAIN_RUNS_FOLDER / trial["name"],
                                       result_file.parent):
            by_epoch.setdefault(int(row["epoch"]), row)   # reported before a driver died, never logged
        config = TrialConfig.from_dict(trial["config"])
        last_epoch = max(by_epoch)
        status = (statuses or {}).get(trial["name"])
        if status is None:
            status = "TERMINATED" if last_epoch == config.epochs else "INCOMPLETE"
        for epoch, row in sorted(by_epoch.items()):
            record = {"trial_id": trial["name"], "sweep": sweep, "experiment": experiment_dir.name,
                      "epoch": epoch, "is_last_epoch": epoch == last_epoch, "status": status}
            record.update({f"config/{k}": v for k, v in config.to_flat_dict().items()})
            record.update({k: v for k, v in row.items() if k.startswith(METRIC_PREFIXES)})
            record.update(provenance or {})
            record["provenance/config_hash"] = config.content_hash()
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame = frame.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)
    return frame


def fetch_result_files(experiment_uri: str, local_dir: str | Path) -> Path:
    """Copy a remote experiment's `result.json` and checkpoint `history.json` files (only
    those: checkpoints and artifacts stay remote) to `local_dir`, keeping relative paths, so
    `collect_experiment` can read an experiment stored on any pyarrow filesystem (s3://, gs://)."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment_uri)
    local_dir = Path(local_dir)
    wanted = ("result.json", HISTORY_FILE)
    for info in filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        if info.type != pyarrow.fs.FileType.File or info.base_name not in wanted:
            continue
        target = local_dir / Path(info.path).relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as stream:
            target.write_bytes(stream.read())
    return local_dir


def write_results(frame: pd.DataFrame, experiment_dir: str | Path) -> str:
    """Write `results.parquet` into the experiment folder (local path or pyarrow URI)."""
    import pyarrow as pa
    import pyarrow.fs
    import pyarrow.parquet as pq

    target = f"{str(experiment_dir).rstrip('/')}/{RESULTS_FILE}"
    filesystem, path = pyarrow.fs.FileSystem.from_uri(target if "://" in target
                                                      else str(Path(target).resolve()))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, filesystem=filesystem)
    return target
