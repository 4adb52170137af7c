"""Exceptions raised by the data layer on bad input.

Every message names the offending file, the row (line) and/or column, and what was expected,
so that a user can fix a real MIMIC extract without reading the code.
"""
from __future__ import annotations


class CohortError(ValueError):
    """Bad cohort input (listfile, series file, notes table, materialised directory).

    The CLI (`python -m miracl_grid.data.prepare`) turns it into exit code 2 with this message and no
    traceback.
    """
