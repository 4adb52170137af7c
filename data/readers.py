"""Readers of the benchmark extracts into an in-memory `data.cohort.Cohort` (METHOD §1, §9, §10).

`read_mimic3_phenotyping(root)` reads a MIMIC-III phenotyping extract (`MIMIC3_LAYOUTS`)::

    ROOT/{train,test}/listfile.csv        stay,period_length,<25 phenotypes>   (mimic3-benchmarks)
    ROOT/{train,test}_listfile.csv        patient_id,stay_id,stay,period_length,<25>  (MIRACL)
    ROOT/{train,test}_multimodal_listfile.csv   ... period_length,notes,<25>    (MIRACL, with notes)
    ROOT/{train,test}/<subject>_episode<k>_timeseries.csv   Hours,<17 variables>
    ROOT/notes.csv | ROOT/notes.parquet   stay,text   (optional; or notes_path=, or noteevents=)

keeping the source's train/test split; the patient id is the ``<subject>`` of the stay file name.

`read_mimic4_multimodal(source, timeseries_dir)` reads FlexCare/MIRACL MIMIC-IV listfiles — a
task folder with their train/val/test split (kept; val -> train) or one listfile (no split:
`data.split.assign_split` assigns one by patient) — of phenotyping (25 labels) or diagnosis
(14 CheXpert labels, where -1 "uncertain" and -2 "not mentioned" are read as 0 and counted).

Every numeric cell goes through the one grammar of `data.numbers`.

Series files are read one by one with pandas (``dtype=str``; only an EMPTY cell is missing —
pandas' default NA strings are switched off because "None" is a GCS eye-opening category);
all per-cell checks run vectorised over the concatenated events of all stays.

What is an error and what is counted (every error is a `data.errors.CohortError` naming the
file, the line and/or column, and what was expected):

========================================================  ==========================================
problem                                                   policy
========================================================  ==========================================
listfile (or a given notes file) missing                  error
listfile without the required columns                    error
listfile column neither metadata nor a label of the task  error (MIMIC-IV: or give ``label_columns``)
label not in {0, 1} (MIMIC-IV: {-2, -1, 0, 1}; < 0 -> 0)  error (-1 and -2 counted in the manifest)
period_length non-numeric, infinite or negative           error (empty = unknown: bins from max Hours)
duplicate stay id (also across train/test listfiles)      error (MIMIC-IV: rows that differ only in the
                                                          note are one stay; see _merge_duplicate_rows)
MIMIC-IV ``time_series`` outside the series folder        error (``../``, absolute, symlink out)
mimic3 stay name not ``<subject>_episode<k>_timeseries.csv``  error
a patient in both the train and test listfile             error
notes table: missing stay/text column, duplicate stay     error; notes of unknown stays are counted
listfile stay whose series file does not exist            stay error [1]
series file with a wrong header (expected vs found)       stay error [1]
Hours empty, non-numeric, negative or not ascending       stay error [1] (equal times are allowed)
continuous cell outside data.numbers' grammar, overflow  stay error [1] (a cell is a number or empty)
categorical cell not in the schema's value list           stay error [1], or with
                                                          ``unknown_categories="missing"`` read as
                                                          missing and counted per variable
empty ``time_series`` cell (MIMIC-IV)                     allowed: the stay has no series (counted)
series file with a header but no rows                     allowed: the stay has no series
========================================================  ==========================================

[1] With ``drop_bad_stays=True`` a stay error drops that stay instead, recording
``{"stay", "reason"}`` (the same message) in ``Cohort.dropped`` and the manifest; by default it
raises. Nothing is dropped silently. Values outside physiological ranges are not touched here
(the benchmark extracts are already cleaned); the discretiser counts values that a later value
in the same hour overwrites and events after ``period_length``.
"""
from __future__ import annotations

import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data.cohort import Cohort, SPLITS, empty_events
from data.numbers import parse_integers, parse_numbers
from data.errors import CohortError
from data.schema import DIAGNOSIS_LABELS, PHENOTYPE_LABELS, TIMESERIES_HEADER, VARIABLES
from data.split import assert_no_patient_crosses

logger = logging.getLogger(__name__)

STAY_FILE_PATTERN = re.compile(r"^(?P<subject>\d+)_episode(?P<episode>\d+)_timeseries\.csv$")
MIMIC4_NOTE_COLUMNS: tuple[str, ...] = ("past_medical_history", "note", "text")
MIMIC4_METADATA_COLUMNS: frozenset[str] = frozenset({  # read or knowingly ignored (demographics, times)
    "subject_id", "hadm_id", "time_series", "dicom_id",
    *MIMIC4_NOTE_COLUMNS, "race", "marital_status", "insurance", "gender", "anchor_age", "age",
    "intime", "outtime", "endtime", "StudyDateTime",
})
UNKNOWN_CATEGORY_POLICIES: tuple[str, ...] = ("error", "missing")
MAX_EXAMPLE_VALUES = 5


# --------------------------------------------------------------------------- small helpers
def _line(row: int) -> int:
    """File line of 0-based data row ``row`` of a CSV with one header line."""
    return int(row) + 2


def _show(value) -> str:
    """A cell for an error message: repr, or 'an empty cell' for a missing one."""
    return "an empty cell" if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA \
        else repr(value)


def _read_listfile(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CohortError(f"{path}: listfile not found (expected a CSV with a header line)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CohortError(f"{path}: cannot parse listfile as CSV: {error}") from None


def _require_columns(table: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CohortError(f"{path}: line 1 (header): missing column(s) {missing}; found {list(table.columns)}")


def _parse_labels(table: pd.DataFrame, columns: Sequence[str], path: Path,
                  allowed: tuple[int, ...], *, origin_line: np.ndarray | None = None) -> np.ndarray:
    """Label columns -> float64 N×L with values in ``allowed`` (`data.numbers` grammar; '1.0' is 1);
    the error names the line and column."""
    raw = table[list(columns)]
    numeric = np.empty(raw.shape, dtype=np.float64)
    for index, column in enumerate(columns):
        numeric[:, index], bad_grammar = parse_numbers(raw[column])
        numeric[bad_grammar, index] = np.nan
    bad = ~np.isin(numeric, np.asarray(allowed, dtype=np.float64))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        line = origin_line[row] if origin_line is not None else _line(row)
        raise CohortError(
            f"{path}: line {line}, column '{columns[column]}': expected a label in "
            f"{{{', '.join(map(str, allowed))}}}, found {_show(raw.iat[row, column])} "
            f"({int(bad.sum())} bad label cell(s) in this file)")
    return numeric


def _parse_period_length(table: pd.DataFrame, path: Path, column: str = "period_length", *,
                         origin_line: np.ndarray | None = None) -> np.ndarray:
    """``column`` -> float64 hours; empty = NaN (unknown), anything else a finite number >= 0."""
    raw = table[column]
    value, bad_grammar = parse_numbers(raw)
    bad = bad_grammar | (raw.notna().to_numpy() & ~(np.isfinite(value) & (value >= 0)))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        line = origin_line[row] if origin_line is not None else _line(row)
        raise CohortError(f"{path}: line {line}, column '{column}': expected a finite "
                          f"number of hours >= 0, found {_show(raw.iat[row])}")
    return value


def _parse_ids(table: pd.DataFrame, column: str, path: Path, what: str, *,
               origin_line: np.ndarray | None = None) -> np.ndarray:
    """Integer id column (every cell present) -> int64 N; the error names line and column."""
    raw = table[column]
    value, bad = parse_integers(raw)
    bad |= ~np.isfinite(value)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        line = origin_line[row] if origin_line is not None else _line(row)
        raise CohortError(f"{path}: line {line}, column '{column}': expected an integer {what}, "
                          f"found {_show(raw.iat[row])}")
    return value.astype(np.int64)


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


def _check_unique_stays(stay: np.ndarray, origin_file: np.ndarray, origin_line: np.ndarray) -> None:
    duplicated = pd.Series(stay).duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = stay[duplicated][0]
        where = np.flatnonzero(stay == first)
        places = ", ".join(f"{origin_file[i]} line {origin_line[i]}" for i in where)
        raise CohortError(f"duplicate stay id {first!r} at {places}; expected each stay once "
                          f"({int(duplicated.sum())} rows share a stay id)")


def _read_notes(path: Path) -> pd.Series:
    """stay -> text (str) from a CSV or parquet table with columns stay,text."""
    if not path.is_file():
        raise CohortError(f"{path}: notes file not found (expected CSV or parquet with columns stay,text)")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as error:  # pyarrow/pandas raise many types for unreadable files
        raise CohortError(f"{path}: cannot read notes table: {error}") from None
    _require_columns(table, ("stay", "text"), path)
    stay = table["stay"].astype(str).str.strip().to_numpy(dtype=object)
    _check_unique_stays(stay, np.full(len(stay), str(path), dtype=object), np.arange(len(stay)) + 2)
    text = table["text"].astype(object).where(table["text"].notna(), "").astype(str)
    text = text.where(text.str.strip().str.len() > 0, "")
    return pd.Series(text.to_numpy(dtype=object), index=stay, dtype=object)


# --------------------------------------------------------------------------- series files
@dataclass
class _Problems:
    """Stay-level problems: (row, message), first one per stay wins."""

    rows: list[np.ndarray] = field(default_factory=list)
    messages: list[np.ndarray] = field(default_factory=list)

    def add(self, rows: np.ndarray, messages: Sequence[str]) -> None:
        if len(rows):
            self.rows.append(np.asarray(rows, dtype=np.int64))
            self.messages.append(np.asarray(messages, dtype=object))

    def table(self) -> pd.DataFrame:
        if not self.rows:
            return pd.DataFrame({"row": np.zeros(0, np.int64), "message": np.zeros(0, object)})
        frame = pd.DataFrame({"row": np.concatenate(self.rows), "message": np.concatenate(self.messages)})
        return frame


def _header_message(path: str, found: Sequence[str]) -> str:
    expected = list(TIMESERIES_HEADER)
    found = list(found)
    missing = [c for c in expected if c not in found]
    unexpected = [c for c in found if c not in expected]
    detail = []
    if missing:
        detail.append(f"missing {missing}")
    if unexpected:
        detail.append(f"unexpected {unexpected}")
    if not missing and not unexpected:
        detail.append("same names in a different order")
    return (f"{path}: line 1 (header): expected columns {expected}, found {found} "
            f"({'; '.join(detail)})")


NUM_FIELDS = len(TIMESERIES_HEADER)
CHUNK_BYTES = 32 * 2**20  # series bodies parsed per pandas call


def _read_csv_cells(source, header) -> pd.DataFrame:
    """pandas CSV read with every cell a str and ONLY the empty cell missing ("None" is a category)."""
    return pd.read_csv(source, header=header, names=None if header == 0 else list(TIMESERIES_HEADER),
                       dtype=str, keep_default_na=False, na_values=[""], skip_blank_lines=False)


def _read_one_series_file(row: int, path: str, problems: _Problems) -> pd.DataFrame | None:
    """Slow path for one file (quoted cells, or a chunk pandas could not parse): pandas reads it alone."""
    try:
        frame = _read_csv_cells(path, 0)
    except pd.errors.EmptyDataError:
        problems.add([row], [_header_message(path, [])])
        return None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        problems.add([row], [f"{path}: cannot parse series CSV: {error}"])
        return None
    if tuple(frame.columns) != TIMESERIES_HEADER:
        problems.add([row], [_header_message(path, frame.columns)])
        return None
    frame.insert(0, "line", np.arange(len(frame), dtype=np.int64) + 2)
    frame.insert(0, "row", np.full(len(frame), row, dtype=np.int64))
    return frame


class _SeriesChunk:
    """Bodies (bytes after the header line) of consecutive files, parsed by ONE pandas call."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.paths: list[str] = []
        self.bodies: list[bytes] = []
        self.size = 0

    def add(self, row: int, path: str, body: bytes) -> None:
        self.rows.append(row)
        self.paths.append(path)
        self.bodies.append(body)
        self.size += len(body)

    def parse(self, problems: _Problems) -> list[pd.DataFrame]:
        """-> event frames with row and line; files with a line of the wrong field count become problems."""
        if not self.bodies:
            return []
        counts = np.fromiter((b.count(b"\n") for b in self.bodies), dtype=np.int64, count=len(self.bodies))
        buffer = b"".join(self.bodies)
        data = np.frombuffer(buffer, dtype=np.uint8)
        newline = np.flatnonzero(data == ord("\n"))
        commas_before = np.searchsorted(np.flatnonzero(data == ord(",")), newline)
        fields = np.diff(np.r_[0, commas_before]) + 1
        owner = np.repeat(np.arange(len(counts)), counts)
        local_line = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts) + 2
        bad = fields != NUM_FIELDS
        keep = np.ones(len(counts), dtype=bool)
        if bad.any():
            bad_lines = np.flatnonzero(bad)
            first = bad_lines[np.r_[True, owner[bad_lines][1:] != owner[bad_lines][:-1]]]
            problems.add(np.asarray(self.rows)[owner[first]], [
                f"{self.paths[owner[i]]}: line {local_line[i]}: expected {NUM_FIELDS} comma-separated "
                f"fields (as in the header), found {fields[i]}" for i in first])
            keep[owner[first]] = False
            buffer = b"".join(b for b, k in zip(self.bodies, keep) if k)
        parts = [(r, p) for r, p, k in zip(self.rows, self.paths, keep) if k]
        kept_counts = counts[keep]
        if not buffer:
            return []
        try:
            frame = _read_csv_cells(io.BytesIO(buffer), None)
        except (pd.errors.ParserError, UnicodeDecodeError):
            frame = None
        if frame is None or len(frame) != int(kept_counts.sum()):
            # something the fast path cannot place (e.g. bad encoding): read the files one by one
            return [single for row, path in parts
                    if (single := _read_one_series_file(row, path, problems)) is not None]
        frame.insert(0, "line", local_line[keep[owner]])
        frame.insert(0, "row", np.asarray(self.rows)[owner[keep[owner]]])
        return [frame]


def _read_series_files(files: Sequence[str | None], problems: _Problems, progress: bool) -> pd.DataFrame:
    """Read every existing series file into one events frame (row, line, Hours, 17 variables; str cells).

    Each file's header line is checked against `TIMESERIES_HEADER`; the bodies of ~32 MiB of
    consecutive files are concatenated and parsed by one `pandas.read_csv` call (the per-file
    cost of pandas dominates otherwise), after a vectorised check that every line has 18
    fields. Files with quoted cells take the per-file pandas path.
    """
    parsed: list[pd.DataFrame] = []
    chunk = _SeriesChunk()
    expected = list(TIMESERIES_HEADER)
    for row, path in enumerate(tqdm(files, desc="reading series", unit="file", disable=not progress,
                                    mininterval=1.0)):
        if path is None:
            continue
        try:
            with open(path, "rb") as handle:
                content = handle.read()
        except FileNotFoundError:
            problems.add([row], [f"{path}: series file not found"])
            continue
        except OSError as error:
            problems.add([row], [f"{path}: cannot read series file: {error}"])
            continue
        head, _, body = content.partition(b"\n")
        header = head.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r").split(",")
        if header != expected:
            problems.add([row], [_header_message(path, header if head.strip() else [])])
            continue
        if b'"' in body:
            single = _read_one_series_file(row, path, problems)
            if single is not None:
                parsed.append(single)
            continue
        body = body.rstrip(b"\r\n")
        if body:
            chunk.add(row, path, body + b"\n")
        if chunk.size >= CHUNK_BYTES:
            parsed.extend(chunk.parse(problems))
            chunk = _SeriesChunk()
    parsed.extend(chunk.parse(problems))
    parsed = [frame for frame in parsed if len(frame)]
    if not parsed:
        return empty_events()
    events = pd.concat(parsed, ignore_index=True)
    row = events["row"].to_numpy()
    if np.any(row[1:] < row[:-1]):  # per-file slow-path frames interleave with chunks
        events = events.iloc[np.argsort(row, kind="stable")].reset_index(drop=True)
    events["row"] = events["row"].astype(np.int64)
    events["line"] = events["line"].astype(np.int64)
    return events


def _cell_problems(events: pd.DataFrame, bad: np.ndarray, column: str, expectation: str,
                   files: np.ndarray, problems: _Problems) -> None:
    """Record the first bad cell of each stay: 'FILE: line N, column 'C': expected E, found V'."""
    if not bad.any():
        return
    index = np.flatnonzero(bad)
    rows = events["row"].to_numpy()[index]
    first = np.r_[True, rows[1:] != rows[:-1]]  # events are grouped by row
    index, rows = index[first], rows[first]
    counts = np.bincount(np.searchsorted(index, np.flatnonzero(bad), side="right") - 1,
                         minlength=len(index))
    lines = events["line"].to_numpy()[index]
    values = events[column].to_numpy(dtype=object)[index]
    messages = [
        f"{files[r]}: line {ln}, column '{column}': expected {expectation}, found {_show(v)}"
        + (f" ({c} such cells in this file)" if c > 1 else "")
        for r, ln, v, c in zip(rows, lines, values, counts)
    ]
    problems.add(rows, messages)


def _validate_events(events: pd.DataFrame, files: np.ndarray, problems: _Problems,
                     unknown_categories: str) -> tuple[pd.DataFrame, dict]:
    """Vectorised checks of every cell; returns events with Hours as float64 and unknown-category counts."""
    raw_hours = events["Hours"]
    hours, _ = parse_numbers(raw_hours)
    finite = np.isfinite(hours)
    _cell_problems(events, ~finite, "Hours", "a finite number of hours", files, problems)
    negative = finite & (hours < 0)
    _cell_problems(events, negative, "Hours", "Hours >= 0", files, problems)
    rows = events["row"].to_numpy()
    same_stay = np.r_[False, rows[1:] == rows[:-1]]
    previous = np.r_[np.nan, hours[:-1]]
    unsorted = same_stay & finite & np.isfinite(previous) & (hours < previous)
    _cell_problems(events, unsorted, "Hours", "Hours in ascending order (a later row has an "
                   "earlier time than the row above)", files, problems)

    unknown_counts: dict[str, dict] = {}
    for variable in VARIABLES:
        column = events[variable.name]
        present = column.notna().to_numpy()
        if variable.categories is None:
            value, _ = parse_numbers(column)
            bad = present & ~np.isfinite(value)
            _cell_problems(events, bad, variable.name, "a finite number or an empty cell", files, problems)
            continue
        known = column.isin(variable.categories).to_numpy()
        unknown = present & ~known
        if not unknown.any():
            continue
        if unknown_categories == "error":
            _cell_problems(events, unknown, variable.name,
                           f"one of {list(variable.categories)} or an empty cell", files, problems)
        else:
            found = column[unknown].value_counts()
            unknown_counts[variable.name] = {
                "count": int(unknown.sum()),
                "values": {str(k): int(v) for k, v in found.head(MAX_EXAMPLE_VALUES).items()},
            }
            events.loc[unknown, variable.name] = np.nan
    events["Hours"] = hours
    return events, unknown_counts


# --------------------------------------------------------------------------- assembly
def _assemble(stays: pd.DataFrame, labels: np.ndarray, label_names: Sequence[str], notes: np.ndarray,
              origin_file: np.ndarray, origin_line: np.ndarray, source: dict, *,
              unknown_categories: str, drop_bad_stays: bool, progress: bool, started: float) -> Cohort:
    """Shared tail of both readers: read and check series files, drop or raise, build the Cohort."""
    if unknown_categories not in UNKNOWN_CATEGORY_POLICIES:
        raise ValueError(f"unknown_categories must be one of {UNKNOWN_CATEGORY_POLICIES}, got {unknown_categories!r}")
    stay_ids = stays["stay"].to_numpy(dtype=object)
    _check_unique_stays(stay_ids, origin_file, origin_line)
    files = stays["series_file"].to_numpy(dtype=object)
    problems = _Problems()
    has_file = pd.notna(stays["series_file"]).to_numpy()
    exists = np.zeros(len(files), dtype=bool)
    exists[has_file] = [os.path.isfile(p) for p in files[has_file]]
    missing = np.flatnonzero(has_file & ~exists)
    if len(missing) and not drop_bad_stays:
        row = missing[0]
        raise CohortError(f"{origin_file[row]}: line {origin_line[row]}: stay {stay_ids[row]!r}: series "
                          f"file {files[row]} not found ({len(missing)} stay(s) without their series file)")
    problems.add(missing, [f"{origin_file[r]}: line {origin_line[r]}: series file {files[r]} not found"
                           for r in missing])
    to_read = np.where(exists, files, None)
    events = _read_series_files(list(to_read), problems, progress)
    events, unknown_counts = _validate_events(events, files, problems, unknown_categories)

    table = problems.table()
    if len(table):
        table = table.sort_values("row", kind="stable").drop_duplicates("row", keep="first")
        if not drop_bad_stays:
            first = table.iloc[0]
            more = len(table) - 1
            raise CohortError(str(first["message"]) + (
                f" (and problems in {more} more stay(s); pass drop_bad_stays=True / --drop-bad-stays "
                "to drop such stays with a recorded reason)" if more else ""))
    dropped = [{"stay": str(stay_ids[r]), "reason": str(m)} for r, m in zip(table["row"], table["message"])]
    if dropped:
        keep = np.ones(len(stays), dtype=bool)
        keep[table["row"].to_numpy()] = False
        new_row = np.cumsum(keep) - 1
        events = events[keep[events["row"].to_numpy()]].reset_index(drop=True)
        events["row"] = new_row[events["row"].to_numpy()]
        stays = stays[keep].reset_index(drop=True)
        labels = labels[keep]
        notes = notes[keep]
        logger.warning("dropped %d stay(s) with bad input, e.g. %s", len(dropped), dropped[0]["reason"])
    source = dict(source)
    source.update({
        "stays_read": int(len(stay_ids)),
        "stays_kept": int(len(stays)),
        "events_read": int(len(events)),
        "unknown_category_policy": unknown_categories,
        "unknown_categories": unknown_counts,
        "drop_bad_stays": bool(drop_bad_stays),
    })
    if unknown_counts:
        logger.warning("read %d unknown categorical value(s) as missing: %s",
                       sum(v["count"] for v in unknown_counts.values()), unknown_counts)
    stays = stays.reset_index(drop=True)
    return Cohort(stays=stays, labels=labels.astype(np.uint8), label_names=tuple(label_names),
                  events=events, notes=notes, source=source, dropped=dropped,
                  timings={"read": time.perf_counter() - started})


def _notes_for(stays: np.ndarray, notes: pd.Series | None) -> tuple[np.ndarray, int]:
    """Notes aligned to ``stays`` ("" = none) and the number of notes whose stay is not listed."""
    if notes is None:
        return np.full(len(stays), "", dtype=object), 0
    aligned = notes.reindex(stays).fillna("").to_numpy(dtype=object)
    unmatched = int((~notes.index.isin(stays)).sum())
    return aligned, unmatched


# --------------------------------------------------------------------------- public readers
MIMIC3_LAYOUTS: tuple[tuple[str, str], ...] = (
    # (listfile of split {split}, series folder of split {split}) relative to ROOT
    ("{split}/listfile.csv", "{split}"),                        # mimic3-benchmarks create_phenotyping
    ("{split}_multimodal_listfile.csv", "{split}"),             # MIRACL mimic3note.merge_note (has notes)
    ("{split}_listfile.csv", "{split}"),                        # MIRACL create_new_phenotyping
)
MIMIC3_METADATA_COLUMNS: tuple[str, ...] = ("patient_id", "stay_id", "stay", "period_length", "notes")


def _mimic3_layout(root: Path) -> tuple[str, str]:
    for listfile, series in MIMIC3_LAYOUTS:
        if any((root / listfile.format(split=split)).is_file() for split in SPLITS):  # a missing one: not found
            return listfile, series
    expected = "; ".join(" + ".join(listfile.format(split=s) for s in SPLITS) for listfile, _ in MIMIC3_LAYOUTS)
    raise CohortError(f"{root}: no MIMIC-III phenotyping listfiles found; expected one of: {expected}")


def _unknown_column_error(path: Path, unknown: Sequence[str], expected: str) -> CohortError:
    return CohortError(f"{path}: line 1 (header): unknown column(s) {list(unknown)}; expected {expected} "
                       "(a column that is neither metadata nor a label of the task is not read as a label)")


def read_mimic3_phenotyping(root: str | os.PathLike, notes_path: str | os.PathLike | None = None, *,
                            noteevents: str | os.PathLike | None = None,
                            icustays: str | os.PathLike | None = None, note_rule=None,
                            unknown_categories: str = "error", drop_bad_stays: bool = False,
                            progress: bool = False) -> Cohort:
    """Read a MIMIC-III phenotyping extract (train and test, split kept) -> Cohort (N stays).

    Layouts (`MIMIC3_LAYOUTS`, first found): mimic3-benchmarks' ``ROOT/{train,test}/listfile.csv``
    (``stay,period_length,<25>``), or MIRACL's ``ROOT/{train,test}_multimodal_listfile.csv``
    (``patient_id,stay_id,stay,period_length,notes,<25>``, written by its ``mimic3note.merge_note``)
    or ``ROOT/{train,test}_listfile.csv`` (same without ``notes``, its ``create_new_phenotyping``);
    series files ``ROOT/{train,test}/<stay>`` in all three. The label columns must be the 25
    phenotypes of `data.schema` (any order; read into schema order); any other column is an error.

    Notes, one source at most: ``notes_path`` (a stay,text table), or ``noteevents`` (NOTEEVENTS,
    selected per stay by `data.noteevents` with ``note_rule``, stay times from ``icustays``), or
    MIRACL's ``notes`` column. ``notes_path`` None looks for ROOT/notes.csv then
    ROOT/notes.parquet; with no source every note is missing (logged).
    """
    started = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"{root}: not a directory (expected a mimic3-benchmarks phenotyping root "
                          "with train/listfile.csv and test/listfile.csv)")
    listfile_pattern, series_pattern = _mimic3_layout(root)
    parts = []
    for split in SPLITS:
        listfile = root / listfile_pattern.format(split=split)
        table = _read_listfile(listfile)
        _require_columns(table, ("stay", "period_length"), listfile)
        columns = [c for c in table.columns if c not in MIMIC3_METADATA_COLUMNS]
        unknown = [c for c in columns if c not in PHENOTYPE_LABELS]
        missing = [c for c in PHENOTYPE_LABELS if c not in columns]
        if unknown or missing:
            if unknown:
                raise _unknown_column_error(listfile, unknown, f"the metadata columns {list(MIMIC3_METADATA_COLUMNS)} "
                                            "and the 25 phenotype labels of data.schema.PHENOTYPE_LABELS")
            raise CohortError(f"{listfile}: line 1 (header): missing label column(s) {missing}; expected the 25 "
                              "phenotypes of data.schema.PHENOTYPE_LABELS")
        labels = _parse_labels(table, PHENOTYPE_LABELS, listfile, (0, 1))
        period = _parse_period_length(table, listfile)
        stay = table["stay"].fillna("").str.strip()
        parsed = stay.str.extract(STAY_FILE_PATTERN)
        bad = parsed["subject"].isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CohortError(f"{listfile}: line {_line(row)}, column 'stay': expected a file name "
                              f"'<subject>_episode<k>_timeseries.csv', found {table['stay'].iat[row]!r}")
        subject = parsed["subject"].astype(np.int64).to_numpy()
        if "patient_id" in table.columns:
            patient = _parse_ids(table, "patient_id", listfile, "patient id")
            differs = patient != subject
            if differs.any():
                row = int(np.flatnonzero(differs)[0])
                raise CohortError(f"{listfile}: line {_line(row)}, column 'patient_id': {patient[row]} differs "
                                  f"from the subject {subject[row]} of stay {stay.iat[row]!r}")
        icustay = (_parse_ids(table, "stay_id", listfile, "ICU stay id (ICUSTAY_ID)")
                   if "stay_id" in table.columns else np.full(len(table), -1, dtype=np.int64))
        listed_notes = None
        if "notes" in table.columns:
            text = table["notes"].fillna("").astype(str)
            listed_notes = text.where(text.str.strip().str.len() > 0, "").to_numpy(dtype=object)
        stay_values = stay.to_numpy(dtype=object)
        series_folder = root / series_pattern.format(split=split)
        parts.append(dict(
            stays=pd.DataFrame({
                "stay": stay_values,
                "patient_id": subject,
                "split": np.full(len(table), split, dtype=object),
                "period_length": period,
                "series_file": np.asarray([str(series_folder / s) for s in stay_values], dtype=object),
            }),
            labels=labels,
            episode=parsed["episode"].astype(np.int64).to_numpy(),
            icustay=icustay,
            notes=listed_notes,
            origin_file=np.full(len(table), str(listfile), dtype=object),
            origin_line=np.arange(len(table)) + 2,
        ))
    stays = pd.concat([p["stays"] for p in parts], ignore_index=True)
    stays["split"] = stays["split"].astype(object)
    stays["series_file"] = stays["series_file"].astype(object)
    labels = np.concatenate([p["labels"] for p in parts])
    origin_file = np.concatenate([p["origin_file"] for p in parts])
    origin_line = np.concatenate([p["origin_line"] for p in parts])

    _check_unique_stays(stays["stay"].to_numpy(dtype=object), origin_file, origin_line)
    # a patient on both sides of the source split would leak between train and test (METHOD §1)
    assert_no_patient_crosses(stays, where=f"{root} (train vs test listfile)")

    stay_ids = stays["stay"].to_numpy(dtype=object)
    listed = [p["notes"] for p in parts]
    given = [name for name, value in (("--notes", notes_path), ("--noteevents", noteevents)) if value is not None]
    if any(n is not None for n in listed):
        given.append(f"the 'notes' column of {listfile_pattern.format(split='{train,test}')}")
    if len(given) > 1:
        raise CohortError(f"{root}: notes from {' and '.join(given)}; expected one notes source")
    source: dict = {}
    if noteevents is not None:
        from data.noteevents import DEFAULT_NOTE_RULE, stay_notes_from_noteevents, stay_times
        rule = note_rule or DEFAULT_NOTE_RULE
        if icustays is None:
            raise CohortError("--noteevents needs the ICU stay times: pass --icustays ICUSTAYS.csv[.gz] "
                              "(the MIMIC-III table)")
        times = stay_times(stays.assign(episode=np.concatenate([p["episode"] for p in parts]),
                                        icustay_id=np.concatenate([p["icustay"] for p in parts])),
                           icustays)
        selected, note_stats = stay_notes_from_noteevents(noteevents, times, rule=rule, progress=progress)
        notes, unmatched = _notes_for(stay_ids, selected)
        notes_source = {"noteevents": str(Path(noteevents).resolve()), "icustays": str(Path(icustays).resolve()),
                        "rule": rule.to_json_dict(), **note_stats}
        source["notes_from_noteevents"] = notes_source
        notes_file = None
    elif icustays is not None:
        raise CohortError("--icustays is only used with --noteevents (stay times for the note window)")
    elif any(n is not None for n in listed):
        notes = np.concatenate(listed).astype(object)
        notes_file, unmatched = None, 0
        source["notes_column"] = "notes"
    else:
        if notes_path is None:
            candidates = [root / "notes.csv", root / "notes.parquet"]
            found = [c for c in candidates if c.is_file()]
            notes_file = found[0] if found else None
            if notes_file is None:
                logger.warning("%s: no notes.csv or notes.parquet; every note is missing", root)
        else:
            notes_file = Path(notes_path)
        notes_table = _read_notes(notes_file) if notes_file is not None else None
        notes, unmatched = _notes_for(stay_ids, notes_table)
    if unmatched:
        logger.warning("%d note(s) belong to no listed stay (ignored, counted)", unmatched)
    source = {
        "format": "mimic3-benchmarks-phenotyping",
        "layout": listfile_pattern,
        "root": str(root.resolve()),
        "listfiles": [str(root / listfile_pattern.format(split=s)) for s in SPLITS],
        "notes_path": str(notes_file) if notes_file is not None else None,
        "notes_without_listed_stay": unmatched,
        "split": "source (train and test listfiles)",
        **source,
    }
    return _assemble(stays, labels, PHENOTYPE_LABELS, notes, origin_file, origin_line, source,
                     unknown_categories=unknown_categories, drop_bad_stays=drop_bad_stays,
                     progress=progress, started=started)


# --------------------------------------------------------------------------- MIMIC-IV (FlexCare / MIRACL)
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
            raise _unknown_column_error(path, unknown, f"metadata columns {sorted(metadata)} and the given labels")
        return "custom", list(label_columns)
    for task, names in MIMIC4_TASKS.items():
        if set(rest) == set(names):
            return task, list(names)
    best = max(MIMIC4_TASKS, key=lambda t: len(set(rest) & set(MIMIC4_TASKS[t])))
    unknown = [c for c in rest if c not in MIMIC4_TASKS[best]]
    missing = [c for c in MIMIC4_TASKS[best] if c not in rest]
    if unknown:
        raise _unknown_column_error(path, unknown, f"metadata columns {sorted(metadata)} and the labels of one task "
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
    (`data.split.assign_split` then draws one by patient). ``timeseries_dir`` defaults to
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
        table = _read_listfile(listfile)
        _require_columns(table, ("subject_id", "time_series"), listfile)
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
        labels_raw[rows] = _parse_labels(part, columns, Path(name), MIMIC4_LABEL_VALUES, origin_line=origin_line[rows])
        period[rows] = _parse_period_length(part, Path(name), period_column, origin_line=origin_line[rows])
        subject[rows] = _parse_ids(part, "subject_id", Path(name), "patient id", origin_line=origin_line[rows])
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
    _check_unique_stays(stays["stay"].to_numpy(dtype=object), origin_file, origin_line)
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
    return _assemble(stays, labels, columns, notes, origin_file, origin_line, source,
                     unknown_categories=unknown_categories, drop_bad_stays=drop_bad_stays,
                     progress=progress, started=started)
