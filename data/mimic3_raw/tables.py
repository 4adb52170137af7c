"""The raw MIMIC-III v1.4 tables the cohort needs: where each one is, its columns, and its DuckDB scan.

A table ``NAME`` is ``ROOT/NAME.csv`` or ``ROOT/NAME.csv.gz`` (PhysioNet ships gzip; DuckDB
decompresses while it streams). `RawTables.locate` reads each header line first and raises a
`miracl_grid.data.errors.CohortError` naming the table, the file and the missing column(s); column names
match case-insensitively. `RawTables.scan` is a ``read_csv(...)`` expression with every column
named from that header: the columns in `REQUIRED_COLUMNS` get their SQL type (a cell that does
not parse makes DuckDB stop, and `run_query` turns its message into one naming the table,
file, line, column, expected type and found value), all others stay VARCHAR and are never
parsed. CSV dialect: comma, double quote, doubled-quote escape, empty cell (quoted or not) =
NULL — as the MIMIC-III release writes it.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from miracl_grid.data.errors import CohortError

TIMESTAMP, BIGINT, DOUBLE, VARCHAR = "TIMESTAMP", "BIGINT", "DOUBLE", "VARCHAR"

REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    "PATIENTS": {"SUBJECT_ID": BIGINT, "DOB": TIMESTAMP},
    "ADMISSIONS": {"SUBJECT_ID": BIGINT, "HADM_ID": BIGINT},
    "ICUSTAYS": {"ROW_ID": BIGINT, "SUBJECT_ID": BIGINT, "HADM_ID": BIGINT, "ICUSTAY_ID": BIGINT,
                 "FIRST_CAREUNIT": VARCHAR, "LAST_CAREUNIT": VARCHAR, "FIRST_WARDID": BIGINT,
                 "LAST_WARDID": BIGINT, "INTIME": TIMESTAMP, "OUTTIME": TIMESTAMP, "LOS": DOUBLE},
    "DIAGNOSES_ICD": {"SUBJECT_ID": BIGINT, "HADM_ID": BIGINT, "ICD9_CODE": VARCHAR},
    "D_ICD_DIAGNOSES": {"ICD9_CODE": VARCHAR},
    "CHARTEVENTS": {"SUBJECT_ID": BIGINT, "HADM_ID": BIGINT, "ICUSTAY_ID": BIGINT, "ITEMID": BIGINT,
                    "CHARTTIME": TIMESTAMP, "VALUE": VARCHAR, "VALUEUOM": VARCHAR},
    "LABEVENTS": {"SUBJECT_ID": BIGINT, "HADM_ID": BIGINT, "ITEMID": BIGINT, "CHARTTIME": TIMESTAMP,
                  "VALUE": VARCHAR, "VALUEUOM": VARCHAR},
    "OUTPUTEVENTS": {"SUBJECT_ID": BIGINT, "HADM_ID": BIGINT, "ICUSTAY_ID": BIGINT, "ITEMID": BIGINT,
                     "CHARTTIME": TIMESTAMP, "VALUE": VARCHAR, "VALUEUOM": VARCHAR},
}
EVENT_TABLES: tuple[str, ...] = ("CHARTEVENTS", "LABEVENTS", "OUTPUTEVENTS")  # the benchmark's order


def sql_string(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _read_header(path: Path) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            line = handle.readline()
    except (OSError, EOFError) as error:
        raise CohortError(f"{path}: cannot read the header line: {error}") from None
    text = line.decode("utf-8", errors="replace").lstrip("\ufeff")
    return next(csv.reader(io.StringIO(text)), [])


@dataclass(frozen=True)
class RawTable:
    name: str
    path: Path
    header: tuple[str, ...]  # as in the file

    @property
    def header_upper(self) -> tuple[str, ...]:
        return tuple(c.upper() for c in self.header)

    def scan(self) -> str:
        """``read_csv(...)`` of the whole file, columns renamed to upper case, required ones typed."""
        types = REQUIRED_COLUMNS[self.name]
        columns = ", ".join(f"{sql_string(c.upper())}: {sql_string(types.get(c.upper(), VARCHAR))}"
                            for c in self.header)
        return (f"read_csv({sql_string(self.path)}, header = true, auto_detect = false, delim = ',', "
                f"quote = '\"', escape = '\"', nullstr = '', columns = {{{columns}}})")


class RawTables:
    """The located tables of one MIMIC-III root folder."""

    def __init__(self, root: str | Path, names=tuple(REQUIRED_COLUMNS)) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CohortError(f"{self.root}: not a directory (expected the MIMIC-III v1.4 CSV folder with "
                              f"{', '.join(n + '.csv[.gz]' for n in REQUIRED_COLUMNS)})")
        self.tables = {name: self.locate(name) for name in names}

    def locate(self, name: str) -> RawTable:
        candidates = [self.root / f"{name}.csv", self.root / f"{name}.csv.gz"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise CohortError(f"raw table {name}: neither {candidates[0]} nor {candidates[1]} exists")
        path = found[0]
        header = _read_header(path)
        upper = [c.strip().upper() for c in header]
        duplicated = sorted({c for c in upper if upper.count(c) > 1})
        if duplicated:
            raise CohortError(f"raw table {name} ({path}): line 1 (header): column(s) {duplicated} appear twice")
        missing = [c for c in REQUIRED_COLUMNS[name] if c not in upper]
        if missing:
            raise CohortError(f"raw table {name} ({path}): line 1 (header): missing column(s) {missing}; "
                              f"found {header}")
        return RawTable(name, path, tuple(c.strip() for c in header))

    def scan(self, name: str) -> str:
        return self.tables[name].scan()

    def paths(self) -> dict[str, str]:
        return {name: str(table.path) for name, table in self.tables.items()}

    def select(self, *names: str) -> dict[str, str]:
        """name -> path of the tables ``names`` (what `run_query` names in an error)."""
        return {name: str(self.tables[name].path) for name in names}


CONVERSION = re.compile(r'Error when converting column "(?P<column>[^"]+)"\. Could not convert string '
                        r'"(?P<value>.*?)" to \'(?P<type>[^\']+)\'')
LINE = re.compile(r"CSV Error on Line: (?P<line>\d+)")
FILE = re.compile(r"^\s*file = (?P<path>.+)$", re.MULTILINE)


def describe_error(message: str, tables: dict[str, str]) -> str:
    """DuckDB CSV error text -> 'raw table T (FILE): line N, column 'C': expected TYPE, found 'V''."""
    path = FILE.search(message)
    name = next((n for n, p in tables.items() if path and p == path.group("path").strip()), None)
    conversion, line = CONVERSION.search(message), LINE.search(message)
    where = f"raw table {name} ({path.group('path').strip()})" if name else f"raw table(s) {', '.join(tables)}"
    if conversion:
        place = f"line {line.group('line')}, " if line else ""
        return (f"{where}: {place}column '{conversion.group('column')}': expected a {conversion.group('type')} "
                f"value or an empty cell, found {conversion.group('value')!r}")
    return f"{where}: {message.splitlines()[0] if message else 'unreadable CSV'}"


def run_query(connection: duckdb.DuckDBPyConnection, sql: str, *, tables: dict[str, str]):
    """Execute ``sql`` over the raw ``tables`` (name -> path); a DuckDB error -> CohortError naming
    the table, line and column."""
    try:
        return connection.execute(sql)
    except duckdb.Error as error:
        raise CohortError(describe_error(str(error).strip(), tables)) from None
