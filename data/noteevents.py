"""MIMIC-III notes of each ICU stay from NOTEEVENTS (paper A.3: "we adapt Khadanga et al. (2019) to
extract clinical notes and use a maximum length of 512").

`stay_times` gives every listed stay its ICU admission window from the MIMIC-III ``ICUSTAYS``
table; `stay_notes_from_noteevents` streams ``NOTEEVENTS`` (gzip or not, in chunks: bounded
memory) and selects, orders and joins each stay's notes by `NoteRule`:

1. rows used: ``ISERROR`` empty (``1`` marks a note the hospital flagged as an error: excluded
   and counted); ``SUBJECT_ID``, ``HADM_ID``, ``CHARTTIME`` and ``TEXT`` present. Khadanga's
   ``extract_notes.py`` and MIRACL's ``mimic3note`` drop rows without a ``CHARTTIME`` (notes that
   carry only ``CHARTDATE``, e.g. discharge summaries, ECG and echo reports) and so does this rule
   (counted);
2. categories: all (as both), or only ``categories`` (exact ``CATEGORY`` values);
3. a note belongs to a stay when it has the stay's ``SUBJECT_ID`` and ``HADM_ID`` and
   ``INTIME <= CHARTTIME <= min(OUTTIME, INTIME + window_hours)``; ``window_hours`` 48 is the window
   of Khadanga's and MIRACL's text reader (``period_length=48``), None the whole ICU stay;
4. order: ``CHARTTIME``, then ``ROW_ID``; the first ``max_notes`` (5, as MIRACL's ``merge_note``;
   None = all) are kept;
5. text: de-identification placeholders ``[** … **]`` removed, runs of whitespace collapsed to one
   space, the notes joined by a blank line; the text encoder keeps the first 512 tokens
   (`miracl_grid.data.text_features`, ``--max-tokens``);
6. a stay without a selected note gets "" — a missing modality, counted, not an error.

Differences from MIRACL's code, on purpose: its window is not capped at ``OUTTIME`` and it keeps
``ISERROR`` rows; it lower-cases, strips punctuation and re-tokenises with nltk, where this keeps
the text for the encoder's own tokenizer.

Stay times: a listfile with the ICU stay id (MIRACL's ``stay_id`` column) is joined on
``ICUSTAY_ID``. The mimic3-benchmarks listfile names stays only ``<subject>_episode<k>``; its
``period_length`` is ``24 × LOS`` of the stay (``create_phenotyping``), so a stay is matched to the
one ICU stay of that subject whose ``LOS`` gives its period length (±1e-4 h), and the matched stays
of a subject must follow the benchmark's episode numbering (episode k before k+1 in ``INTIME``
order). No match, two matches, or a broken order is an error naming the stay.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from miracl_grid.data.errors import CohortError
from miracl_grid.data.numbers import parse_integers, parse_numbers

logger = logging.getLogger(__name__)

NOTEEVENTS_COLUMNS: tuple[str, ...] = ("ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTTIME", "CATEGORY", "ISERROR", "TEXT")
ICUSTAYS_COLUMNS: tuple[str, ...] = ("SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "INTIME", "OUTTIME", "LOS")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PERIOD_TOLERANCE_HOURS = 1e-4
CHUNK_ROWS = 20_000  # ~40 MB of note text per chunk
NOTE_JOINER = "\n\n"
DEID_PLACEHOLDER = r"\[\*\*.*?\*\*\]"


@dataclass(frozen=True)
class NoteRule:
    """How a stay's notes are chosen (module docstring, steps 2-4)."""

    window_hours: float | None = 48.0
    max_notes: int | None = 5
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.window_hours is not None and not (np.isfinite(self.window_hours) and self.window_hours > 0):
            raise ValueError(f"window_hours must be a finite number > 0 or None, got {self.window_hours!r}")
        if self.max_notes is not None and (isinstance(self.max_notes, bool) or int(self.max_notes) != self.max_notes
                                           or self.max_notes < 1):
            raise ValueError(f"max_notes must be an integer >= 1 or None, got {self.max_notes!r}")
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))

    def to_json_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


DEFAULT_NOTE_RULE = NoteRule()


# --------------------------------------------------------------------------- table helpers
def _upper_columns(path: Path) -> dict[str, str]:
    """Header of a CSV (gzip or not) -> {UPPER-CASE stripped name: name as written}."""
    try:
        header = pd.read_csv(path, nrows=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as error:
        raise CohortError(f"{path}: cannot read the CSV header: {error}") from None
    return {str(c).strip().strip('"').upper(): c for c in header.columns}


def _require(path: Path, names: dict[str, str], needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in names]
    if missing:
        raise CohortError(f"{path}: line 1 (header): missing column(s) {missing}; found {list(names.values())}")


def _ids(frame: pd.DataFrame, column: str, path: Path, first_row: int, *, required: bool) -> np.ndarray:
    """Integer column -> float64 (NaN = empty); a malformed cell is an error naming the data row."""
    value, bad = parse_integers(frame[column])
    if required:
        bad |= ~np.isfinite(value)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CohortError(f"{path}: data row {first_row + row + 1} (header excluded), column '{column}': expected "
                          f"an integer, found {frame[column].iat[row]!r}")
    return value


def _times(frame: pd.DataFrame, column: str, path: Path, first_row: int, *, required: bool) -> pd.Series:
    raw = frame[column]
    parsed = pd.to_datetime(raw, format=TIME_FORMAT, errors="coerce")
    bad = raw.notna().to_numpy() & parsed.isna().to_numpy()
    if required:
        bad |= raw.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CohortError(f"{path}: data row {first_row + row + 1} (header excluded), column '{column}': expected "
                          f"a time 'YYYY-MM-DD HH:MM:SS', found {raw.iat[row]!r}")
    return parsed


def _open(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: {what} not found (expected the MIMIC-III CSV, gzip or not)")
    return path


# --------------------------------------------------------------------------- stay times
def read_icustays(path: str | os.PathLike) -> pd.DataFrame:
    """MIMIC-III ICUSTAYS -> DataFrame (SUBJECT_ID, HADM_ID, ICUSTAY_ID int64; INTIME, OUTTIME; LOS float64)."""
    path = _open(path, "ICUSTAYS table")
    names = _upper_columns(path)
    _require(path, names, ICUSTAYS_COLUMNS)
    table = pd.read_csv(path, usecols=[names[c] for c in ICUSTAYS_COLUMNS], dtype=str, keep_default_na=False,
                        na_values=[""]).rename(columns={names[c]: c for c in ICUSTAYS_COLUMNS})
    out = pd.DataFrame({c: _ids(table, c, path, 0, required=True).astype(np.int64)
                        for c in ("SUBJECT_ID", "HADM_ID", "ICUSTAY_ID")})
    out["INTIME"] = _times(table, "INTIME", path, 0, required=True)
    out["OUTTIME"] = _times(table, "OUTTIME", path, 0, required=False)
    los, bad = parse_numbers(table["LOS"])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CohortError(f"{path}: data row {row + 1} (header excluded), column 'LOS': expected a number of days "
                          f"or an empty cell, found {table['LOS'].iat[row]!r}")
    out["LOS"] = los
    duplicated = out["ICUSTAY_ID"].duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise CohortError(f"{path}: ICUSTAY_ID {out['ICUSTAY_ID'][duplicated].iat[0]} on several rows; expected each "
                          "ICU stay once")
    return out


def stay_times(stays: pd.DataFrame, icustays: str | os.PathLike) -> pd.DataFrame:
    """Listed stays (N: stay, patient_id, period_length, episode, icustay_id (-1 = not listed)) ->
    DataFrame N (stay, SUBJECT_ID, HADM_ID, ICUSTAY_ID, INTIME, OUTTIME) in the same order."""
    table = read_icustays(icustays)
    listed = stays["icustay_id"].to_numpy(np.int64) >= 0
    if listed.any() and not listed.all():
        raise CohortError("the listfiles give ICU stay ids (stay_id) for some stays only; expected all or none")
    if listed.all():
        matched = stays[["stay", "patient_id", "icustay_id"]].merge(
            table, how="left", left_on="icustay_id", right_on="ICUSTAY_ID", validate="many_to_one")
        unknown = matched["SUBJECT_ID"].isna().to_numpy()
        wrong = ~unknown & (matched["SUBJECT_ID"].to_numpy(np.float64) != matched["patient_id"].to_numpy(np.float64))
        if unknown.any() or wrong.any():
            row = int(np.flatnonzero(unknown | wrong)[0])
            problem = "is not in" if unknown[row] else f"belongs to subject {int(matched['SUBJECT_ID'].iat[row])} in"
            raise CohortError(f"stay {matched['stay'].iat[row]!r}: ICU stay id {matched['icustay_id'].iat[row]} "
                              f"{problem} {icustays} ({int(unknown.sum() + wrong.sum())} such stay(s))")
        return matched[["stay", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "INTIME", "OUTTIME"]].astype(
            {"SUBJECT_ID": np.int64, "HADM_ID": np.int64, "ICUSTAY_ID": np.int64})
    return _match_benchmark_episodes(stays, table, icustays)


def _match_benchmark_episodes(stays: pd.DataFrame, table: pd.DataFrame, icustays) -> pd.DataFrame:
    """Benchmark stays ``<subject>_episode<k>`` -> the ICU stay whose 24·LOS equals their period_length."""
    listed = stays[["stay", "patient_id", "episode", "period_length"]].reset_index(drop=True)
    listed["order"] = np.arange(len(listed))
    pairs = listed.merge(table, how="left", left_on="patient_id", right_on="SUBJECT_ID")
    close = np.abs(24.0 * pairs["LOS"].to_numpy(np.float64) - pairs["period_length"].to_numpy(np.float64))
    pairs = pairs[close <= PERIOD_TOLERANCE_HOURS]
    count = np.bincount(pairs["order"].to_numpy(np.int64), minlength=len(listed))
    if (count != 1).any():
        row = int(np.flatnonzero(count != 1)[0])
        candidates = pairs.loc[pairs["order"] == row, "ICUSTAY_ID"].tolist()
        what = "no ICU stay" if count[row] == 0 else f"{count[row]} ICU stays {candidates}"
        raise CohortError(
            f"stay {listed['stay'].iat[row]!r} (period_length {listed['period_length'].iat[row]} h): {what} of subject "
            f"{listed['patient_id'].iat[row]} in {icustays} with 24·LOS = period_length ({int((count == 0).sum())} stay(s) "
            f"without, {int((count > 1).sum())} with several candidates); expected exactly one")
    matched = pairs.sort_values("order").reset_index(drop=True)
    by_episode = matched.sort_values(["patient_id", "episode"], kind="stable")
    same = by_episode["patient_id"].to_numpy()[1:] == by_episode["patient_id"].to_numpy()[:-1]
    earlier = by_episode["INTIME"].to_numpy()[1:] <= by_episode["INTIME"].to_numpy()[:-1]
    if (same & earlier).any():
        index = int(np.flatnonzero(same & earlier)[0])
        a, b = by_episode["stay"].iat[index], by_episode["stay"].iat[index + 1]
        raise CohortError(f"stays {a!r} and {b!r} matched ICU stays {by_episode['ICUSTAY_ID'].iat[index]} and "
                          f"{by_episode['ICUSTAY_ID'].iat[index + 1]} of {icustays} out of episode order (INTIME); "
                          "expected episode k to start before episode k+1")
    return matched[["stay", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "INTIME", "OUTTIME"]]


# --------------------------------------------------------------------------- notes
def _first_notes(notes: pd.DataFrame, max_notes: int | None) -> pd.DataFrame:
    """Notes (stay, CHARTTIME, ROW_ID, TEXT) ordered by stay, CHARTTIME, ROW_ID; the first ``max_notes``
    of each stay (all with None). Keeping the first k of a union equals the first k of the first k of each part."""
    ordered = notes.sort_values(["stay", "CHARTTIME", "ROW_ID"], kind="stable")
    if max_notes is None:
        return ordered
    return ordered[ordered.groupby("stay", sort=False).cumcount().to_numpy() < max_notes]


def clean_note_text(text: pd.Series) -> pd.Series:
    """De-identification placeholders removed, whitespace runs -> one space, stripped (rule step 5)."""
    return (text.str.replace(DEID_PLACEHOLDER, " ", regex=True).str.replace(r"\s+", " ", regex=True).str.strip())


def stay_notes_from_noteevents(noteevents: str | os.PathLike, times: pd.DataFrame, *,
                               rule: NoteRule = DEFAULT_NOTE_RULE, progress: bool = False,
                               chunk_rows: int = CHUNK_ROWS) -> tuple[pd.Series, dict]:
    """NOTEEVENTS + stay windows (N: stay, SUBJECT_ID, HADM_ID, INTIME, OUTTIME) -> (stay -> note text
    for stays with a selected note, counts). See the module docstring for the rule."""
    path = _open(noteevents, "NOTEEVENTS table")
    names = _upper_columns(path)
    _require(path, names, NOTEEVENTS_COLUMNS)
    window_end = times["OUTTIME"]
    if rule.window_hours is not None:
        window_end = pd.concat([window_end, times["INTIME"] + pd.Timedelta(hours=rule.window_hours)], axis=1).min(axis=1)
    windows = pd.DataFrame({"stay": times["stay"].to_numpy(dtype=object),
                            "SUBJECT_ID": times["SUBJECT_ID"].to_numpy(np.int64),
                            "HADM_ID": times["HADM_ID"].to_numpy(np.int64),
                            "start": times["INTIME"].to_numpy(), "end": window_end.to_numpy()})
    counts = {"rows_read": 0, "error_rows_excluded": 0, "rows_without_hadm_id": 0, "rows_without_charttime": 0,
              "rows_without_text": 0, "rows_of_other_categories": 0, "notes_in_a_stay_window": 0,
              "notes_beyond_max_notes": 0}
    kept: list[pd.DataFrame] = []
    reader = pd.read_csv(path, usecols=[names[c] for c in NOTEEVENTS_COLUMNS], dtype=str, keep_default_na=False,
                         na_values=[""], chunksize=chunk_rows)
    first_row = 0
    try:
        for chunk in tqdm(reader, desc="NOTEEVENTS", unit="chunk", disable=not progress):
            chunk = chunk.rename(columns={names[c]: c for c in NOTEEVENTS_COLUMNS}).reset_index(drop=True)
            counts["rows_read"] += len(chunk)
            error_flag = _ids(chunk, "ISERROR", path, first_row, required=False)
            subject = _ids(chunk, "SUBJECT_ID", path, first_row, required=True)
            hadm = _ids(chunk, "HADM_ID", path, first_row, required=False)
            row_id = _ids(chunk, "ROW_ID", path, first_row, required=True)
            charttime = _times(chunk, "CHARTTIME", path, first_row, required=False)
            is_error = error_flag == 1
            no_hadm = ~is_error & np.isnan(hadm)
            no_time = ~is_error & ~no_hadm & charttime.isna().to_numpy()
            text = chunk["TEXT"].fillna("")
            no_text = ~is_error & ~no_hadm & ~no_time & (text.str.strip().str.len() == 0).to_numpy()
            usable = ~(is_error | no_hadm | no_time | no_text)
            counts["error_rows_excluded"] += int(is_error.sum())
            counts["rows_without_hadm_id"] += int(no_hadm.sum())
            counts["rows_without_charttime"] += int(no_time.sum())
            counts["rows_without_text"] += int(no_text.sum())
            if rule.categories is not None:
                other = usable & ~chunk["CATEGORY"].isin(rule.categories).to_numpy()
                counts["rows_of_other_categories"] += int(other.sum())
                usable &= ~other
            notes = pd.DataFrame({"SUBJECT_ID": subject[usable].astype(np.int64),
                                  "HADM_ID": hadm[usable].astype(np.int64),
                                  "CHARTTIME": charttime[usable].to_numpy(),
                                  "ROW_ID": row_id[usable].astype(np.int64),
                                  "TEXT": text[usable].to_numpy(dtype=object)})
            joined = notes.merge(windows, on=["SUBJECT_ID", "HADM_ID"], how="inner")
            inside = (joined["CHARTTIME"] >= joined["start"]) & (joined["CHARTTIME"] <= joined["end"])
            counts["notes_in_a_stay_window"] += int(inside.sum())
            kept = [_first_notes(pd.concat(kept + [joined.loc[inside, ["stay", "CHARTTIME", "ROW_ID", "TEXT"]]],
                                           ignore_index=True), rule.max_notes)]  # memory: stays × max_notes
            first_row += len(chunk)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as error:
        raise CohortError(f"{path}: cannot parse NOTEEVENTS after data row {first_row}: {error}") from None
    selected = kept[0] if kept else pd.DataFrame(columns=["stay", "CHARTTIME", "ROW_ID", "TEXT"])
    counts["notes_beyond_max_notes"] = counts["notes_in_a_stay_window"] - int(len(selected))
    selected = selected.assign(TEXT=clean_note_text(selected["TEXT"].astype(str)))
    selected = selected[selected["TEXT"].str.len() > 0]
    text = selected.groupby("stay", sort=False)["TEXT"].agg(NOTE_JOINER.join)
    counts["stays_with_a_note"] = int(len(text))
    counts["stays_without_a_note"] = int(len(times) - len(text))
    logger.info("NOTEEVENTS %s: %d rows, %d notes in a stay window, %d of %d stays with a note (%d error rows "
                "excluded)", path, counts["rows_read"], counts["notes_in_a_stay_window"], counts["stays_with_a_note"],
                len(times), counts["error_rows_excluded"])
    return text, counts
