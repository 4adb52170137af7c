"""Raw MIMIC-III v1.4 CSV tables -> the phenotyping `miracl_grid.data.cohort.Cohort` of mimic3-benchmarks (METHOD §9, §10).

``read_mimic3_raw(root)`` builds, straight from ``ROOT/<TABLE>.csv[.gz]``, the cohort that
mimic3-benchmarks' five scripts (extract_subjects, validate_events, extract_episodes_from_subjects,
split_train_and_test, create_phenotyping) followed by `miracl_grid.data.readers.read_mimic3_phenotyping` give:
same stays (named ``<subject>_episode<k>_timeseries.csv``), benchmark train/test split, 25
phenotype labels, period lengths and series rows. The rules are listed in
`miracl_grid.data.mimic3_raw.stays` and `miracl_grid.data.mimic3_raw.series`, with every difference and its count.

Engine: DuckDB, not polars, because (a) it streams gzip CSV — PhysioNet's CHARTEVENTS.csv.gz
is ~4 GB compressed, ~33 GB of text, 330M rows — decompressing on the fly, where polars' CSV
scan decompresses a compressed file into memory first; (b) its joins and aggregations spill to
disk under a fixed ``memory_limit``, so peak memory stays bounded whatever the table size;
(c) the benchmark's rules are joins, group-bys and CASE expressions that read one-to-one as SQL.
Only the ~18% of CHARTEVENTS rows with a mapped ITEMID of a cohort subject are kept after the
scan. DuckDB runs with ``threads`` (default: the CPUs this process may use) and spills to a
temporary folder that is removed afterwards.

Stages (logged with seconds, a progress bar over them and DuckDB's own progress bar for long
scans): ``stays`` (cohort stays, labels, split), ``events`` (scan + validation), ``values``
(cleaning, one value per time), ``series`` (rows per stay, phenotyping filter), ``fetch``
(into pandas). Wall times go to ``source["stage_seconds"]`` (CPU seconds of all threads to
``source["stage_cpu_seconds"]``) and the total to ``timings["read"]``.

The Cohort's ``stays`` carry, besides the usual columns, ``hadm_id``, ``icustay_id``, ``intime``
and ``outtime``. Notes, one source at most: ``notes_path`` (a ``stay,text`` table keyed by the
stay names, as for the mimic3 source), or ``noteevents`` (MIMIC-III NOTEEVENTS, each stay's
notes selected by `miracl_grid.data.noteevents` with ``note_rule`` and the stay's own SUBJECT_ID, HADM_ID,
INTIME, OUTTIME — no ICUSTAYS matching needed), or none (every note missing).
Categorical values outside `miracl_grid.data.schema` follow ``unknown_categories`` as in the readers
("error" raises naming stay, column and value; "missing" blanks and counts them); with
``drop_bad_stays`` an unknown category drops the stay with the reason instead of raising.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from miracl_grid.data.cohort import Cohort
from miracl_grid.data.errors import CohortError
from miracl_grid.data.mimic3_raw.series import build_events, build_series, build_values, fetch_series, fetch_stays
from miracl_grid.data.mimic3_raw.stays import build_cohort_stays, build_labels, label_matrix
from miracl_grid.data.mimic3_raw.tables import RawTables, sql_string
from miracl_grid.data.noteevents import DEFAULT_NOTE_RULE, NoteRule, stay_notes_from_noteevents
from miracl_grid.data.readers import MAX_EXAMPLE_VALUES, UNKNOWN_CATEGORY_POLICIES
from miracl_grid.data.readers import _notes_for as notes_for_stays  # the mimic3 source's stay,text notes rule
from miracl_grid.data.readers import _read_notes as read_notes_table
from miracl_grid.data.schema import PHENOTYPE_LABELS, VARIABLES

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("stays", "events", "values", "series", "fetch")
DEFAULT_MEMORY_LIMIT = "4GB"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _connect(*, threads: int, memory_limit: str, temp_dir: str, progress: bool) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(":memory:")
    connection.execute(f"SET threads = {int(threads)}")
    try:
        connection.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    except duckdb.Error as error:
        connection.close()
        raise ValueError(f"memory_limit {memory_limit!r}: expected a size such as '4GB' ({error})") from None
    connection.execute(f"SET temp_directory = {sql_string(temp_dir)}")
    connection.execute("SET preserve_insertion_order = false")
    connection.execute(f"SET enable_progress_bar = {'true' if progress else 'false'}")
    return connection


def period_lengths(los_days: np.ndarray) -> np.ndarray:
    """float64 N: 24 * LOS hours as create_phenotyping prints them ('{:.6f}'), read back."""
    hours = 24.0 * np.asarray(los_days, dtype=np.float64)
    return np.char.mod("%.6f", hours).astype(np.float64)


def _check_categories(events: pd.DataFrame, stay_names: np.ndarray, policy: str,
                      drop_bad_stays: bool) -> tuple[dict, list[dict]]:
    """Unknown categorical values: raise, blank-and-count, or (drop_bad_stays) report their stays."""
    unknown_counts: dict[str, dict] = {}
    bad_rows: dict[int, str] = {}
    for variable in VARIABLES:
        if variable.categories is None:
            continue
        column = events[variable.name]
        unknown = (column.notna() & ~column.isin(variable.categories)).to_numpy()
        if not unknown.any():
            continue
        if policy == "missing":
            found = column[unknown].value_counts()
            unknown_counts[variable.name] = {"count": int(unknown.sum()), "values": {
                str(k): int(v) for k, v in found.head(MAX_EXAMPLE_VALUES).items()}}
            events.loc[unknown, variable.name] = np.nan
            continue
        index = np.flatnonzero(unknown)
        rows = events["row"].to_numpy()[index]
        values = column.to_numpy(dtype=object)[index]
        for row, value in zip(rows, values):
            bad_rows.setdefault(int(row), f"stay {stay_names[row]}: column '{variable.name}': expected one of "
                                          f"{list(variable.categories)} or an empty cell, found {value!r}")
        if not drop_bad_stays:
            row = int(rows[0])
            raise CohortError(f"{bad_rows[row]} ({int(unknown.sum())} such value(s) in the cohort; pass "
                              "unknown_categories='missing' / --unknown-categories missing to read them as "
                              "missing, or drop_bad_stays=True / --drop-bad-stays to drop such stays)")
    dropped = [{"stay": str(stay_names[row]), "reason": reason} for row, reason in sorted(bad_rows.items())]
    return unknown_counts, dropped


def _drop_rows(stays: pd.DataFrame, labels: np.ndarray, events: pd.DataFrame, drop: np.ndarray):
    keep = np.ones(len(stays), dtype=bool)
    keep[drop] = False
    new_row = np.cumsum(keep) - 1
    events = events[keep[events["row"].to_numpy()]].reset_index(drop=True)
    events["row"] = new_row[events["row"].to_numpy()]
    return stays[keep].reset_index(drop=True), labels[keep], events


def read_mimic3_raw(root: str | os.PathLike, notes_path: str | os.PathLike | None = None, *,
                    noteevents: str | os.PathLike | None = None, note_rule: NoteRule | None = None,
                    unknown_categories: str = "error", drop_bad_stays: bool = False,
                    memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int | None = None,
                    temp_dir: str | os.PathLike | None = None, progress: bool = False) -> Cohort:
    """MIMIC-III v1.4 CSV folder -> phenotyping Cohort (N stays, benchmark split; events E rows)."""
    if unknown_categories not in UNKNOWN_CATEGORY_POLICIES:
        raise ValueError(f"unknown_categories must be one of {UNKNOWN_CATEGORY_POLICIES}, got {unknown_categories!r}")
    cpus = available_cpus()
    threads = cpus if threads is None else int(threads)
    if not 1 <= threads <= cpus:
        raise ValueError(f"threads must be in 1..{cpus} (the CPUs this process may use), got {threads}")
    if notes_path is not None and noteevents is not None:
        raise CohortError(f"{root}: notes from --notes {notes_path} and --noteevents {noteevents}; "
                          "expected one notes source")
    if note_rule is not None and noteevents is None:
        raise CohortError("--note-window-hours/--max-notes apply with --noteevents only")
    started = time.perf_counter()
    tables = RawTables(root)
    notes_table = read_notes_table(Path(notes_path)) if notes_path is not None else None
    stage_seconds: dict[str, float] = {}
    stage_cpu_seconds: dict[str, float] = {}
    rules: dict = {}
    bar = tqdm(total=len(STAGES), desc="mimic3-raw", unit="stage", disable=not progress)
    cpu_since = time.process_time()

    def finish(stage: str, since: float) -> float:
        nonlocal cpu_since
        stage_seconds[stage] = time.perf_counter() - since
        stage_cpu_seconds[stage] = time.process_time() - cpu_since  # all threads of this process
        cpu_since = time.process_time()
        logger.info("mimic3-raw stage %s: %.2f s (%.2f CPU s)", stage, stage_seconds[stage], stage_cpu_seconds[stage])
        bar.update(1)
        bar.set_postfix_str(stage)
        return time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="mimic3-raw-", dir=temp_dir) as spill:
        connection = _connect(threads=threads, memory_limit=memory_limit, temp_dir=spill, progress=progress)
        try:
            since = time.perf_counter()
            bar.set_postfix_str("stays")
            rules.update(build_cohort_stays(connection, tables))
            rules.update(build_labels(connection, tables))
            since = finish("stays", since)
            rules.update(build_events(connection, tables))
            since = finish("events", since)
            rules.update(build_values(connection))
            since = finish("values", since)
            rules.update(build_series(connection))
            since = finish("series", since)
            stays_table = fetch_stays(connection)
            labels = label_matrix(connection, stays_table["ICUSTAY_ID"].to_numpy())
            series = fetch_series(connection)
        finally:
            connection.close()
    events = series.to_pandas()
    events["row"] = events["row"].astype(np.int64)
    events["Hours"] = events["Hours"].astype(np.float64)
    finish("fetch", since)
    bar.close()

    stays = pd.DataFrame({
        "stay": stays_table["STAY"].astype(str).to_numpy(dtype=object),
        "patient_id": stays_table["SUBJECT_ID"].to_numpy(np.int64),
        "split": stays_table["SPLIT"].astype(str).to_numpy(dtype=object),
        "period_length": period_lengths(stays_table["LOS"].to_numpy(np.float64)),
        "hadm_id": stays_table["HADM_ID"].to_numpy(np.int64),
        "icustay_id": stays_table["ICUSTAY_ID"].to_numpy(np.int64),
        "intime": stays_table["INTIME"].to_numpy(),
        "outtime": stays_table["OUTTIME"].to_numpy(),
    })
    unknown_counts, dropped = _check_categories(events, stays["stay"].to_numpy(dtype=object),
                                                unknown_categories, drop_bad_stays)
    if dropped:
        names = pd.Index(stays["stay"])
        stays, labels, events = _drop_rows(stays, labels, events, names.get_indexer([d["stay"] for d in dropped]))
        logger.warning("dropped %d stay(s) with bad input, e.g. %s", len(dropped), dropped[0]["reason"])
    notes_source = None
    if noteevents is not None:
        rule = note_rule or DEFAULT_NOTE_RULE
        times = pd.DataFrame({"stay": stays["stay"], "SUBJECT_ID": stays["patient_id"], "HADM_ID": stays["hadm_id"],
                              "INTIME": stays["intime"], "OUTTIME": stays["outtime"]})
        notes_table, note_stats = stay_notes_from_noteevents(noteevents, times, rule=rule, progress=progress)
        notes_source = {"noteevents": str(Path(noteevents).resolve()), "rule": rule.to_json_dict(), **note_stats}
    notes, unmatched = notes_for_stays(stays["stay"].to_numpy(dtype=object), notes_table)
    if unmatched and noteevents is None:
        logger.warning("%s: %d note(s) belong to no cohort stay (ignored, counted)", notes_path, unmatched)
    source = {
        "format": "mimic3-raw",
        "root": str(Path(root).resolve()),
        "tables": tables.paths(),
        "rules": rules,
        "stage_seconds": stage_seconds,
        "stage_cpu_seconds": stage_cpu_seconds,
        "engine": {"name": "duckdb", "version": duckdb.__version__, "threads": threads, "memory_limit": memory_limit},
        "notes_path": str(notes_path) if notes_path is not None else None,
        "notes_from_noteevents": notes_source,
        "notes_without_listed_stay": unmatched,
        "label_columns_match_schema": True,
        "split": "mimic3-benchmarks testset.csv (subject-wise)",
        "stays_read": int(rules["phenotyping_stays"]),
        "stays_kept": int(len(stays)),
        "events_read": int(len(events)),
        "unknown_category_policy": unknown_categories,
        "unknown_categories": unknown_counts,
        "drop_bad_stays": bool(drop_bad_stays),
    }
    logger.info("mimic3-raw: %d stays (%d train, %d test) of %d patients, %d series rows", len(stays),
                int((stays["split"] == "train").sum()), int((stays["split"] == "test").sum()),
                stays["patient_id"].nunique(), len(events))
    return Cohort(stays=stays, labels=labels, label_names=PHENOTYPE_LABELS, events=events, notes=notes,
                  source=source, dropped=dropped, timings={"read": time.perf_counter() - started})
