"""The one grammar of a numeric cell in every source file (listfiles, series, MIMIC tables).

A cell is either EMPTY (missing) or matches `NUMBER_GRAMMAR` in full::

    [+-]? ( digits [. digits?] | . digits ) ( [eE] [+-]? digits )?      digits = [0-9]+

i.e. a plain decimal or scientific number in ASCII digits. Everything Python's ``float()`` or
pandas would also take is rejected: surrounding or inner whitespace (``' 1'``), digit
separators (``'1_000'``), ``'nan'``, ``'inf'``/``'infinity'``, hexadecimal (``'0x10'``),
non-ASCII digits, a trailing ``'e'``. The check is one vectorised RE2 match over the column
(pyarrow), so a cell is accepted or rejected on its own text, never depending on the other
cells of its column (as a cast-then-fallback parse does). A cell that matches but overflows
float64 (``'1e999'``) parses to ``inf``; callers that need finite values check for it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NUMBER_GRAMMAR = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_ANCHORED = f"^(?:{NUMBER_GRAMMAR})$"
INTEGER_GRAMMAR = r"[+-]?[0-9]+(?:\.0*)?"
_INTEGER_ANCHORED = f"^(?:{INTEGER_GRAMMAR})$"


def _as_strings(column: pd.Series) -> pa.Array:
    """Column of str cells (NaN/None/NA = missing) -> pyarrow string array with nulls for missing."""
    array = pa.array(column.to_numpy(dtype=object), type=pa.large_string(), from_pandas=True)
    # an empty string is a missing cell too (readers already map "" to NA; in-memory frames may not)
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.large_string()), array)


def _parse_matching(column: pd.Series, anchored: str) -> tuple[np.ndarray, np.ndarray]:
    """Cells (E) -> (float64 E values, bool E ``bad``): cells matching the anchored RE2 pattern
    are cast, present cells that do not match are ``bad``, missing cells are NaN and not bad."""
    strings = _as_strings(column)
    matches = pc.fill_null(pc.match_substring_regex(strings, anchored), False)
    bad = pc.and_(pc.is_valid(strings), pc.invert(matches))
    kept = pc.if_else(matches, strings, pa.scalar(None, pa.large_string()))
    values = pc.cast(kept, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64), np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


def parse_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Cells (E) -> (float64 E values, bool E ``bad``): NaN where missing or bad; ``bad`` = present
    but not matching `NUMBER_GRAMMAR`."""
    return _parse_matching(column, _ANCHORED)


def parse_integers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Cells (E) -> (float64 E values, bool E ``bad``) for integer ids: digits with an optional
    ``.0`` tail (ids written by pandas from a float column, ``'10006.0'``); anything else present
    is bad. Values are exact for ids below 2**53."""
    return _parse_matching(column, _INTEGER_ANCHORED)
