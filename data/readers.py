"""MIMIC-III extracts -> an in-memory `miracl_grid.data.cohort.Cohort`, and the pieces every reader shares (METHOD §1, §9, §10).

`read_mimic3_phenotyping(root)` reads a MIMIC-III phenotyping extract (`MIMIC3_LAYOUTS`)::

    ROOT/{train,test}/listfile.csv        stay,period_length,<25 phenotypes>   (mimic3-benchmarks)
    ROOT/{train,test}_listfile.csv        patient_id,stay_id,stay,period_length,<25>  (MIRACL)
    ROOT/{train,test}_multimodal_listfile.csv   ... period_length,notes,<25>    (MIRACL, with notes)
    ROOT/{train,test}/<subject>_episode<k>_timeseries.csv   Hours,<17 variables>
    ROOT/notes.csv | ROOT/notes.parquet   stay,text   (optional; or notes_path=, or noteevents=)

keeping the source's train/test split; the patient id is the ``<subject>`` of the stay file name.

The shared pieces (listfile reading and cell checks, series files, `assemble_cohort`) serve the
MIMIC-IV reader of `miracl_grid.data.mimic4` as well.

Every numeric cell goes through the one grammar of `miracl_grid.data.numbers`.

Series files are read one by one with pandas (``dtype=str``; only an EMPTY cell is missing —
pandas' default NA strings are switched off because "None" is a GCS eye-opening category);
all per-cell checks run vectorised over the concatenated events of all stays.

What is an error and what is counted (every error is a `miracl_grid.data.errors.CohortError` naming the
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
continuous cell outside miracl_grid.data.numbers' grammar, overflow  stay error [1] (a cell is a number or empty)
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

from miracl_grid.data.cohort import Cohort, SPLITS, empty_events
from miracl_grid.data.errors import CohortError
from miracl_grid.data.noteevents import DEFAULT_NOTE_RULE, NoteRule, stay_notes_from_noteevents, stay_times
from miracl_grid.data.numbers import parse_integers, parse_numbers
from miracl_grid.data.schema import PHENOTYPE_LABELS, TIMESERIES_HEADER, VARIABLES
from miracl_grid.data.split import assert_no_patient_crosses

logger = logging.getLogger(__name__)

STAY_FILE_PATTERN = re.compile(r"^(?P<subject>\d+)_episode(?P<episode>\d+)_timeseries\.csv$")
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


def read_listfile(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CohortError(f"{path}: listfile not found (expected a CSV with a header line)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CohortError(f"{path}: cannot parse listfile as CSV: {error}") from None


def require_columns(table: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CohortError(f"{path}: line 1 (header): missing column(s) {missing}; found {list(table.columns)}")


def parse_label_columns(table: pd.DataFrame, columns: Sequence[str], path: Path,
                  allowed: tuple[int, ...], *, origin_line: np.ndarray | None = None) -> np.ndarray:
    """Label columns -> float64 N×L with values in ``allowed`` (`miracl_grid.data.numbers` grammar; '1.0' is 1);
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


def parse_period_length(table: pd.DataFrame, path: Path, column: str = "period_length", *,
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


def parse_id_column(table: pd.DataFrame, column: str, path: Path, what: str, *,
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


def check_unique_stays(stay: np.ndarray, origin_file: np.ndarray, origin_line: np.ndarray) -> None:
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
    require_columns(table, ("stay", "text"), path)
    stay = table["stay"].astype(str).str.strip().to_numpy(dtype=object)
    check_unique_stays(stay, np.full(len(stay), str(path), dtype=object), np.arange(len(stay)) + 2)
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
def assemble_cohort(stays: pd.DataFrame, labels: np.ndarray, label_names: Sequence[str], notes: np.ndarray,
              origin_file: np.ndarray, origin_line: np.ndarray, source: dict, *,
              unknown_categories: str, drop_bad_stays: bool, progress: bool, started: float) -> Cohort:
    """Shared tail of both readers: read and check series files, drop or raise, build the Cohort."""
    if unknown_categories not in UNKNOWN_CATEGORY_POLICIES:
        raise ValueError(f"unknown_categories must be one of {UNKNOWN_CATEGORY_POLICIES}, got {unknown_categories!r}")
    stay_ids = stays["stay"].to_numpy(dtype=object)
    check_unique_stays(stay_ids, origin_file, origin_line)
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


def unknown_column_error(path: Path, unknown: Sequence[str], expected: str) -> CohortError:
    return CohortError(f"{path}: line 1 (header): unknown column(s) {list(unknown)}; expected {expected} "
                       "(a column that is neither metadata nor a label of the task is not read as a label)")


def read_mimic3_phenotyping(root: str | os.PathLike, notes_path: str | os.PathLike | None = None, *,
                            noteevents: str | os.PathLike | None = None,
                            icustays: str | os.PathLike | None = None, note_rule: NoteRule | None = None,
                            unknown_categories: str = "error", drop_bad_stays: bool = False,
                            progress: bool = False) -> Cohort:
    """Read a MIMIC-III phenotyping extract (train and test, split kept) -> Cohort (N stays).

    Layouts (`MIMIC3_LAYOUTS`, first found): mimic3-benchmarks' ``ROOT/{train,test}/listfile.csv``
    (``stay,period_length,<25>``), or MIRACL's ``ROOT/{train,test}_multimodal_listfile.csv``
    (``patient_id,stay_id,stay,period_length,notes,<25>``, written by its ``mimic3note.merge_note``)
    or ``ROOT/{train,test}_listfile.csv`` (same without ``notes``, its ``create_new_phenotyping``);
    series files ``ROOT/{train,test}/<stay>`` in all three. The label columns must be the 25
    phenotypes of `miracl_grid.data.schema` (any order; read into schema order); any other column is an error.

    Notes, one source at most: ``notes_path`` (a stay,text table), or ``noteevents`` (NOTEEVENTS,
    selected per stay by `miracl_grid.data.noteevents` with ``note_rule``, stay times from ``icustays``), or
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
        table = read_listfile(listfile)
        require_columns(table, ("stay", "period_length"), listfile)
        columns = [c for c in table.columns if c not in MIMIC3_METADATA_COLUMNS]
        unknown = [c for c in columns if c not in PHENOTYPE_LABELS]
        missing = [c for c in PHENOTYPE_LABELS if c not in columns]
        if unknown or missing:
            if unknown:
                raise unknown_column_error(listfile, unknown, f"the metadata columns {list(MIMIC3_METADATA_COLUMNS)} "
                                            "and the 25 phenotype labels of miracl_grid.data.schema.PHENOTYPE_LABELS")
            raise CohortError(f"{listfile}: line 1 (header): missing label column(s) {missing}; expected the 25 "
                              "phenotypes of miracl_grid.data.schema.PHENOTYPE_LABELS")
        labels = parse_label_columns(table, PHENOTYPE_LABELS, listfile, (0, 1))
        period = parse_period_length(table, listfile)
        stay = table["stay"].fillna("").str.strip()
        parsed = stay.str.extract(STAY_FILE_PATTERN)
        bad = parsed["subject"].isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CohortError(f"{listfile}: line {_line(row)}, column 'stay': expected a file name "
                              f"'<subject>_episode<k>_timeseries.csv', found {table['stay'].iat[row]!r}")
        subject = parsed["subject"].astype(np.int64).to_numpy()
        if "patient_id" in table.columns:
            patient = parse_id_column(table, "patient_id", listfile, "patient id")
            differs = patient != subject
            if differs.any():
                row = int(np.flatnonzero(differs)[0])
                raise CohortError(f"{listfile}: line {_line(row)}, column 'patient_id': {patient[row]} differs "
                                  f"from the subject {subject[row]} of stay {stay.iat[row]!r}")
        icustay = (parse_id_column(table, "stay_id", listfile, "ICU stay id (ICUSTAY_ID)")
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

    check_unique_stays(stays["stay"].to_numpy(dtype=object), origin_file, origin_line)
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
    return assemble_cohort(stays, labels, PHENOTYPE_LABELS, notes, origin_file, origin_line, source,
                     unknown_categories=unknown_categories, drop_bad_stays=drop_bad_stays,
                     progress=progress, started=started)
