"""Hand-written time-series CSV lines in the mimic3-benchmarks layout, for reader tests."""
from __future__ import annotations

from miracl_grid.data.schema import TIMESERIES_HEADER


def series_line(hours: str, **cells: str) -> str:
    """One series CSV line: Hours then the 17 variables (named by keyword, spaces as '_')."""
    values = {name: "" for name in TIMESERIES_HEADER[1:]}
    for key, value in cells.items():
        name = key.replace("_", " ")
        assert name in values, name
        values[name] = value
    return ",".join([hours, *values.values()])
