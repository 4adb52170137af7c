"""FlexCare/MIRACL MIMIC-IV multimodal listfiles -> `miracl_grid.data.cohort.Cohort` (METHOD §1, §10).

`read_mimic4_multimodal(source, timeseries_dir)` reads a task folder with the split the pipeline
wrote (`MIMIC4_SPLIT_FILES`; kept, validation -> train) or one listfile (no split:
`miracl_grid.data.split.assign_split` assigns one by patient), of phenotyping (25 labels) or diagnosis (14
CheXpert labels; -1 "uncertain" and -2 "not mentioned" read as 0 and counted). Series files are
confined to their folder (`confined_paths`); everything else (cell grammar, series checks, the
error/count policy) is `miracl_grid.data.readers`'.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from miracl_grid.data.cohort import Cohort
from miracl_grid.data.errors import CohortError
from miracl_grid.data.readers import (assemble_cohort, check_unique_stays, parse_id_column, parse_label_columns,
                          parse_period_length, read_listfile, require_columns, unknown_column_error)
from miracl_grid.data.schema import DIAGNOSIS_LABELS, PHENOTYPE_LABELS
from miracl_grid.data.split import assert_no_patient_crosses

logger = logging.getLogger(__name__)

MIMIC4_NOTE_COLUMNS: tuple[str, ...] = ("past_medical_history", "note", "text")
MIMIC4_METADATA_COLUMNS: frozenset[str] = frozenset({  # read or knowingly ignored (demographics, times)
    "subject_id", "hadm_id", "time_series", "dicom_id",
    *MIMIC4_NOTE_COLUMNS, "race", "marital_status", "insurance", "gender", "anchor_age", "age",
    "intime", "outtime", "endtime", "StudyDateTime",
})
MIMIC4_SPLIT_FILES: dict[str, str] = {
    # FlexCare's and MIRACL's create_train_val_test_set write train/val/test; MIRACL's loader reads
    # train_val (train and val concatenated) + test
    "train": "train_multimodal_listfile.csv",
    "val": "val_multimodal_listfile.csv",
    "train_val": "train_val_multimodal_listfile.csv",
    "test": "test_multimodal_listfile.csv",
}
MIMIC4_TASKS: dict[str, tuple[str, ...]] = {"phenotyping": PHENOTYPE_LABELS, "diagnosis": DIAGNOSIS_LABELS}
MIMIC4_STAY_COLUMNS: tuple[str, ...] = ("stay_id", "study_id")          # phenotyping | diagnosis
MIMIC4_PERIOD_COLUMNS: tuple[str, ...] = ("period_length", "period_len")  # phenotyping | diagnosis
MIMIC4_LABEL_VALUES: tuple[int, ...] = (-2, -1, 0, 1)
DUPLICATE_STAY_POLICIES: tuple[str, ...] = ("join-notes", "last")
NOTE_SEPARATOR = "\n\n"


def confined_paths(folder: Path, names: pd.Series, *, listfile: Path, column: str,
                   origin_line: np.ndarray) -> np.ndarray:
    """Data-derived file names -> str paths inside ``folder`` (None where the cell is empty).

    A name must be relative, without '..' components, and resolve (symlinks followed) to a
    path inside ``folder``'s resolved path; anything else is a `CohortError` naming the listfile,
    line and column. Shapes: names N -> object N.
    """
    stripped = names.str.strip()
    present = stripped.notna().to_numpy() & (stripped.str.len() > 0).to_numpy()
    text = stripped.fillna("")
    escapes = (text.str.match(r"^(?:[/\\~]|[A-Za-z]:)") | text.str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)")
               ).to_numpy(dtype=bool) & present
    root = os.path.realpath(folder)
    paths = np.full(len(names), None, dtype=object)
    for row in np.flatnonzero(present & ~escapes):
        candidate = os.path.join(root, text.iat[row])
        if os.path.commonpath([root, os.path.realpath(candidate)]) != root:
            escapes[row] = True
        else:
            paths[row] = candidate
    if escapes.any():
        row = int(np.flatnonzero(escapes)[0])
        raise CohortError(f"{listfile}: line {origin_line[row]}, column '{column}': file name "
                          f"{names.iat[row]!r} points outside the series folder {folder}; expected a "
                          f"relative name inside it ({int(escapes.sum())} such cell(s))")
    return paths


def _first_present(table: pd.DataFrame, names: Sequence[str], path: Path, what: str) -> str:
    found = [c for c in names if c in table.columns]
    if len(found) != 1:
        raise CohortError(f"{path}: line 1 (header): expected exactly one {what} column of {list(names)}, "
                          f"found {found or 'none'}")
    return found[0]


def _mimic4_listfiles(source: Path) -> list[tuple[str | None, Path]]:
    """(split, listfile) pairs of a FlexCare/MIRACL task folder, or [(None, file)] for one listfile."""
    if source.is_file():
        return [(None, source)]
    if not source.is_dir():
        raise CohortError(f"{source}: listfile or task folder not found (expected a folder with "
                          f"{MIMIC4_SPLIT_FILES['train']}, {MIMIC4_SPLIT_FILES['val']}, {MIMIC4_SPLIT_FILES['test']}, "
                          "or one multimodal listfile)")
    present = {split: source / name for split, name in MIMIC4_SPLIT_FILES.items() if (source / name).is_file()}
    if "test" not in present or not ({"train", "train_val"} & set(present)):
        raise CohortError(f"{source}: expected {MIMIC4_SPLIT_FILES['test']} and {MIMIC4_SPLIT_FILES['train']} "
                          f"(+ {MIMIC4_SPLIT_FILES['val']}) or {MIMIC4_SPLIT_FILES['train_val']}; found "
                          f"{sorted(p.name for p in present.values()) or 'none of them'}")
    order = ("train_val", "test") if "train_val" in present else ("train", "val", "test")
    return [(split, present[split]) for split in order if split in present]


def _mimic4_labels(columns: Sequence[str], label_columns: Sequence[str] | None, path: Path) -> tuple[str, list[str]]:
    """(task, label column names) of a listfile header; unknown columns are an error."""
    metadata = set(MIMIC4_METADATA_COLUMNS) | set(MIMIC4_STAY_COLUMNS) | set(MIMIC4_PERIOD_COLUMNS)
    rest = [c for c in columns if c not in metadata]
    if label_columns is not None:
        missing = [c for c in label_columns if c not in columns]
        if missing:
            raise CohortError(f"{path}: line 1 (header): missing label column(s) {missing}; found {list(columns)}")
        unknown = [c for c in rest if c not in label_columns]
        if unknown:
            raise unknown_column_error(path, unknown, f"metadata columns {sorted(metadata)} and the given labels")
        return "custom", list(label_columns)
    for task, names in MIMIC4_TASKS.items():
        if set(rest) == set(names):
            return task, list(names)
    best = max(MIMIC4_TASKS, key=lambda t: len(set(rest) & set(MIMIC4_TASKS[t])))
    unknown = [c for c in rest if c not in MIMIC4_TASKS[best]]
    missing = [c for c in MIMIC4_TASKS[best] if c not in rest]
    if unknown:
        raise unknown_column_error(path, unknown, f"metadata columns {sorted(metadata)} and the labels of one task "
                                    f"({', '.join(f'{t}: {len(n)}' for t, n in MIMIC4_TASKS.items())})")
    raise CohortError(f"{path}: line 1 (header): missing {best} label column(s) {missing}")


def _merge_duplicate_rows(table: pd.DataFrame, stay_column: str, note_column: str | None, policy: str,
                          origin_file: np.ndarray, origin_line: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows of one stay (the admission has several notes) -> one row.

    Every column but the note must be equal across the rows (else a `CohortError` naming both
    lines); the note is the distinct non-empty notes joined in listfile order by `NOTE_SEPARATOR`
    (``join-notes``) or the last row's note (``last``: what MIRACL's loader keeps, its dict keyed
    by stay and period overwrites earlier rows). Returns (kept row indices K, notes K, counts).
    """
    stay = table[stay_column].to_numpy(dtype=object)
    notes = (table[note_column].fillna("").astype(str).str.strip().to_numpy(dtype=object) if note_column
             else np.full(len(table), "", dtype=object))
    groups = pd.Series(np.arange(len(table))).groupby(pd.Series(stay), sort=False)
    first = groups.transform("first").to_numpy()
    repeated = np.flatnonzero(first != np.arange(len(table)))
    others = [c for c in table.columns if c != note_column]
    if len(repeated):
        left = table[others].iloc[first[repeated]].fillna("").to_numpy(dtype=object)
        right = table[others].iloc[repeated].fillna("").to_numpy(dtype=object)
        other_file = origin_file[first[repeated]] != origin_file[repeated]
        if other_file.any():
            a, b = first[repeated[other_file]][0], repeated[other_file][0]
            raise CohortError(f"stay {stay[b]!r} is in two listfiles: {origin_file[a]} line {origin_line[a]} and "
                              f"{origin_file[b]} line {origin_line[b]}; expected each stay in one split")
        differs = left != right
        if differs.any():
            index, column = np.argwhere(differs)[0]
            a, b = first[repeated[index]], repeated[index]
            raise CohortError(f"stay {stay[b]!r} listed twice with different content: {origin_file[a]} line "
                              f"{origin_line[a]} and {origin_file[b]} line {origin_line[b]} (column "
                              f"'{others[column]}'); expected rows of one stay to differ only in the note")
    keep = np.flatnonzero(first == np.arange(len(table)))
    if policy == "last":
        last = groups.transform("last").to_numpy()
        merged = notes[last[keep]]
    else:
        frame = pd.DataFrame({"stay": stay, "note": notes})
        frame = frame[frame["note"].str.len() > 0].drop_duplicates()
        joined = frame.groupby("stay", sort=False)["note"].agg(NOTE_SEPARATOR.join)
        merged = joined.reindex(stay[keep]).fillna("").to_numpy(dtype=object)
    counts = {"stays_listed_more_than_once": int(len(np.unique(first[repeated]))),
              "rows_merged": int(len(repeated)), "policy": policy}
    return keep, merged, counts


def read_mimic4_multimodal(source: str | os.PathLike, timeseries_dir: str | os.PathLike | None = None, *,
                           label_columns: Sequence[str] | None = None, duplicate_stays: str = "join-notes",
                           unknown_categories: str = "error", drop_bad_stays: bool = False,
                           progress: bool = False) -> Cohort:
    """Read FlexCare/MIRACL MIMIC-IV multimodal listfiles -> Cohort (N stays).

    ``source``: a task folder (``data/phenotyping`` or ``data/diagnosis`` in FlexCare's layout)
    with the split the pipeline wrote (`MIMIC4_SPLIT_FILES`), kept as it is: train (+ val) ->
    "train", test -> "test" — validation stays train, as in MIRACL, which trains on train+val and
    uses no validation set (paper A.5: no early stopping). A single listfile has no split
    (`miracl_grid.data.split.assign_split` then draws one by patient). ``timeseries_dir`` defaults to
    ``<task folder>/../ehr`` (FlexCare's ``data/ehr``), or the listfile's folder for one listfile.

    Columns: ``subject_id``, ``stay_id`` (phenotyping) or ``study_id`` (diagnosis: one CXR study),
    ``time_series`` (a file name in ``timeseries_dir``, confined to it; empty = no series),
    ``period_length`` or ``period_len``, optional ``dicom_id``, the note (first present of
    past_medical_history, note, text), demographics, then the labels of one task of
    `MIMIC4_TASKS` (or ``label_columns``); any other column is an error. Label values
    (MIRACL/FlexCare): 1, 0, -1 (CheXpert "uncertain") and -2 (FlexCare's fill for a finding the
    report does not mention); -1 and -2 are read as 0, as MIRACL's training and test do
    (``y[y <= -1] = 0``), and counted in the manifest. A stay listed on several rows (its
    admission has several notes) becomes one stay: see `_merge_duplicate_rows`.
    """
    started = time.perf_counter()
    if duplicate_stays not in DUPLICATE_STAY_POLICIES:
        raise ValueError(f"duplicate_stays must be one of {DUPLICATE_STAY_POLICIES}, got {duplicate_stays!r}")
    path = Path(source)
    listfiles = _mimic4_listfiles(path)
    if timeseries_dir is not None:
        series_dir = Path(timeseries_dir)
    else:
        series_dir = path.parent if path.is_file() else path.parent / "ehr"
    if not series_dir.is_dir():
        raise CohortError(f"{series_dir}: time-series folder not found (listfiles {path}); pass it as "
                          "mimic4:TASKDIR|LISTFILE,TSDIR")
    tables, origin_files, origin_lines, splits = [], [], [], []
    task = columns = None
    for split, listfile in listfiles:
        table = read_listfile(listfile)
        require_columns(table, ("subject_id", "time_series"), listfile)
        file_task, file_columns = _mimic4_labels(table.columns, label_columns, listfile)
        if columns is None:
            task, columns = file_task, file_columns
            header = list(table.columns)
        elif list(table.columns) != header:
            raise CohortError(f"{listfile}: line 1 (header): columns {list(table.columns)} differ from "
                              f"{listfiles[0][1]}: {header}")
        tables.append(table)
        origin_files.append(np.full(len(table), str(listfile), dtype=object))
        origin_lines.append(np.arange(len(table)) + 2)
        splits.append(np.full(len(table), split, dtype=object))
    table = pd.concat(tables, ignore_index=True)
    origin_file, origin_line = np.concatenate(origin_files), np.concatenate(origin_lines)
    split_of_row = np.concatenate(splits)
    first_file = listfiles[0][1]
    stay_column = _first_present(table, MIMIC4_STAY_COLUMNS, first_file, "stay id")
    period_column = _first_present(table, MIMIC4_PERIOD_COLUMNS, first_file, "period length")
    note_column = next((c for c in MIMIC4_NOTE_COLUMNS if c in table.columns), None)

    table[stay_column] = table[stay_column].fillna("").str.strip()
    empty = (table[stay_column].str.len() == 0).to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise CohortError(f"{origin_file[row]}: line {origin_line[row]}, column '{stay_column}': expected a stay "
                          "id, found an empty cell")
    keep, notes, duplicates = _merge_duplicate_rows(table, stay_column, note_column, duplicate_stays,
                                                    origin_file, origin_line)
    table = table.iloc[keep].reset_index(drop=True)
    origin_file, origin_line, split_of_row = origin_file[keep], origin_line[keep], split_of_row[keep]
    if duplicates["rows_merged"]:
        logger.info("%d stay(s) listed on several rows (several notes of the admission): one stay each, "
                    "notes %s", duplicates["stays_listed_more_than_once"],
                    "joined in listfile order" if duplicate_stays == "join-notes" else "of the last row")

    by_file = {}
    for name in np.unique(origin_file):
        rows = origin_file == name
        by_file[name] = rows
    labels_raw = np.empty((len(table), len(columns)), dtype=np.float64)
    period = np.empty(len(table), dtype=np.float64)
    subject = np.empty(len(table), dtype=np.int64)
    for name, rows in by_file.items():
        part = table[rows].reset_index(drop=True)
        labels_raw[rows] = parse_label_columns(part, columns, Path(name), MIMIC4_LABEL_VALUES, origin_line=origin_line[rows])
        period[rows] = parse_period_length(part, Path(name), period_column, origin_line=origin_line[rows])
        subject[rows] = parse_id_column(part, "subject_id", Path(name), "patient id", origin_line=origin_line[rows])
    uncertain, unmentioned = labels_raw == -1, labels_raw == -2
    labels = np.where(labels_raw < 0, 0, labels_raw).astype(np.uint8)

    series_file = np.full(len(table), None, dtype=object)
    for name, rows in by_file.items():
        series_file[rows] = confined_paths(series_dir, table.loc[rows, "time_series"].reset_index(drop=True),
                                           listfile=Path(name), column="time_series", origin_line=origin_line[rows])
    split_values = (np.where(split_of_row == "test", "test", "train").astype(object)
                    if listfiles[0][0] is not None else np.full(len(table), None, dtype=object))
    stays = pd.DataFrame({
        "stay": table[stay_column].to_numpy(dtype=object),
        "patient_id": subject,
        "split": split_values,
        "period_length": period,
        "series_file": series_file,
    })
    stays["split"] = stays["split"].astype(object)
    stays["series_file"] = stays["series_file"].astype(object)
    check_unique_stays(stays["stay"].to_numpy(dtype=object), origin_file, origin_line)
    if listfiles[0][0] is not None:
        assert_no_patient_crosses(stays, where=f"{path} (train/val vs test listfile)")
    if note_column is None:
        logger.warning("%s: no note column (%s); every note is missing", path, "/".join(MIMIC4_NOTE_COLUMNS))
    split_source = None
    if listfiles[0][0] is not None:
        split_source = {"method": "source listfiles (validation stays -> train, as MIRACL)",
                        "files": {split: str(f) for split, f in listfiles},
                        "stays_per_file": {split: int((split_of_row == split).sum()) for split, _ in listfiles}}
    source = {
        "format": "mimic4-multimodal-listfile",
        "task": task,
        "listfiles": [str(f.resolve()) for _, f in listfiles],
        "timeseries_dir": str(series_dir.resolve()),
        "stay_column": stay_column,
        "period_column": period_column,
        "note_column": note_column,
        "label_columns_match_schema": tuple(columns) == PHENOTYPE_LABELS,
        "uncertain_labels_read_as_zero": int(uncertain.sum()),
        "uncertain_labels_per_label": {name: int(n) for name, n in zip(columns, uncertain.sum(axis=0))},
        "unmentioned_labels_read_as_zero": int(unmentioned.sum()),
        "unmentioned_labels_per_label": {name: int(n) for name, n in zip(columns, unmentioned.sum(axis=0))},
        "duplicate_stay_rows": duplicates,
        "stays_without_series_file": int(sum(f is None for f in series_file)),
        "has_dicom_id": "dicom_id" in table.columns,
        "split": split_source,
    }
    if uncertain.any() or unmentioned.any():
        logger.info("%s: read %d label(s) of -1 (uncertain) and %d of -2 (not mentioned) as 0", path,
                    int(uncertain.sum()), int(unmentioned.sum()))
    return assemble_cohort(stays, labels, columns, notes, origin_file, origin_line, source,
                     unknown_categories=unknown_categories, drop_bad_stays=drop_bad_stays,
                     progress=progress, started=started)
