"""Events of the cohort stays -> per-stay hourly-ready series, as mimic3-benchmarks builds them (METHOD §9).

The rules of ``extract_subjects`` / ``validate_events`` / ``extract_episodes_from_subjects`` /
``create_phenotyping``, as DuckDB queries over the raw event tables (counts in ``source["rules"]``):

1. events: the rows of CHARTEVENTS, LABEVENTS and OUTPUTEVENTS (LABEVENTS has no ICUSTAY_ID)
   of the cohort's subjects whose ITEMID is in the benchmark's ITEMID -> variable map
   (``itemid_to_variable.csv``: 114 ITEMIDs of 17 variables; filtering by ITEMID first is
   equivalent, every later rule is per row);
2. validation (``validate_events``): an event without HADM_ID is dropped; one whose
   (SUBJECT_ID, HADM_ID) is no cohort stay's is dropped; a missing ICUSTAY_ID is repaired with
   that stay's; an ICUSTAY_ID that differs from that stay's is dropped;
3. VALUE missing — empty, or one of pandas 1.5's default NA strings (`PANDAS_NA_STRINGS`; the
   benchmark re-reads its CSVs with pandas, so e.g. "NA" or "NULL" is missing, "None" is not) ->
   dropped;
4. cleaning (``preprocessing.clean_fns``), on the text VALUE, lower-cased VALUEUOM and
   lower-cased MIMIC label: capillary refill "Normal <3 secs"/"Brisk" -> 0, "Abnormal >3
   secs"/"Delayed" -> 1, other text dropped; systolic/diastolic "d/d" -> first/second number;
   FiO2 / 100 unless the unit contains "torr" (as the benchmark runs under Python 3: its
   ``is_str`` test is always true there); O2 saturation, glucose, pH: only plain decimals
   ``\\d+(\\.\\d*)?|\\.\\d+`` are kept, O2 saturation <= 1 -> x 100; temperature >= 79 -> (x -
   32) * 5 / 9 (the benchmark's "F" tests compare against a lower-cased string and never hold);
   weight: unit or label containing "oz" -> / 16, then "oz" or "lb" -> * 0.453592; height:
   unit or label containing "in" -> round-half-even(x * 2.54). Variables without a rule (heart
   rate, mean blood pressure, respiratory rate, the four GCS) keep their text. No outlier
   ranges are applied (the benchmark never applies ``variable_ranges.csv``);
5. several values of one variable at one CHARTTIME of a subject: the largest one is kept
   (numeric order for the cleaned variables, text order for the others — the benchmark's
   sort then ``drop_duplicates(keep="last")``);
6. one row per (subject, CHARTTIME, ICUSTAY_ID) of the kept events, with every variable's value
   at that CHARTTIME; a stay takes the rows with its ICUSTAY_ID or a CHARTTIME in
   [INTIME, OUTTIME]; Hours = (CHARTTIME - INTIME) seconds / 60 / 60;
7. phenotyping (``create_phenotyping``): stays with a diagnosis and a LOS, rows with
   -1e-6 < Hours < 24 * LOS + 1e-6, period_length = 24 * LOS printed with 6 decimals; a stay
   without such rows is left out.

Documented differences (the benchmark stops or depends on pandas' chunked type inference
there; counted in ``source["rules"]``): a value the benchmark converts with ``float()`` that
is not a finite number (systolic/diastolic/FiO2/temperature/weight/height, or "d/d" text that
is not two integers) and a heart rate / mean blood pressure / respiratory rate text that is not
a finite number are dropped (``values_not_a_number``); the benchmark stops on the former and
writes the latter into a series that its discretiser cannot read. Not reproduced, and not
countable without running the benchmark: pandas infers the VALUE type per 131,072-row chunk of
a subject's ``events.csv``, so a chunk of numbers only becomes floats there ("98" -> "98.0",
numeric instead of text order between same-time values, the plain-decimal test skipped); here
VALUE is always text. A number is a VALUE that matches the project's one number grammar
(`miracl_grid.data.numbers.NUMBER_GRAMMAR`, which the discretiser also demands), where the benchmark uses
Python's ``float()`` (which also takes " 12", "1_000" or non-ASCII digits): such text counts in
``values_not_a_number``. None of these changes a stay of the MIMIC-III demo
(tests/test_mimic3_raw_demo.py).
"""
from __future__ import annotations

import duckdb

from miracl_grid.data.mimic3_raw.stays import resource_path
from miracl_grid.data.mimic3_raw.tables import EVENT_TABLES, RawTables, run_query, sql_string
from miracl_grid.data.numbers import NUMBER_GRAMMAR
from miracl_grid.data.schema import VARIABLE_NAMES

EPSILON = 1e-6  # create_phenotyping's eps
PANDAS_NA_STRINGS: tuple[str, ...] = (
    "-1.#IND", "1.#QNAN", "1.#IND", "-1.#QNAN", "#N/A N/A", "#N/A", "N/A", "n/a", "NA", "<NA>", "#NA",
    "NULL", "null", "NaN", "-NaN", "nan", "-nan")
PLAIN_DECIMAL = r"\d+(\.\d*)?|\.\d+"
CLEANED_BY_CAST = ("Diastolic blood pressure", "Systolic blood pressure", "Fraction inspired oxygen",
                   "Temperature", "Weight", "Height")        # float() in the benchmark: stops on text
CLEANED_BY_RULE = ("Capillary refill rate", "Oxygen saturation", "Glucose", "pH")  # text -> NaN -> dropped
KEPT_AS_NUMBER_TEXT = ("Heart Rate", "Mean blood pressure", "Respiratory rate")
KEPT_AS_CATEGORY = ("Glascow coma scale eye opening", "Glascow coma scale motor response",
                    "Glascow coma scale total", "Glascow coma scale verbal response")
assert sorted(CLEANED_BY_CAST + CLEANED_BY_RULE + KEPT_AS_NUMBER_TEXT + KEPT_AS_CATEGORY) == sorted(VARIABLE_NAMES)


def _in(names) -> str:
    return "(" + ", ".join(sql_string(n) for n in names) + ")"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def cleaned_number_sql() -> str:
    """SQL expression: the cleaned number of a row (columns VARIABLE, VALUE, X = VALUE as a number of
    `NUMBER_GRAMMAR` or NULL, PLAIN, UOM, LABEL)."""
    v = "VARIABLE"
    return f"""CASE
        WHEN {v} = 'Capillary refill rate' THEN CASE WHEN VALUE IN ('Normal <3 secs', 'Brisk') THEN 0.0::DOUBLE
                                                   WHEN VALUE IN ('Abnormal >3 secs', 'Delayed') THEN 1.0::DOUBLE END
        WHEN {v} = 'Diastolic blood pressure' THEN CASE WHEN contains(VALUE, '/')
             THEN TRY_CAST(regexp_extract(VALUE, '^(\\d+)/(\\d+)$', 2) AS DOUBLE) ELSE X END
        WHEN {v} = 'Systolic blood pressure' THEN CASE WHEN contains(VALUE, '/')
             THEN TRY_CAST(regexp_extract(VALUE, '^(\\d+)/(\\d+)$', 1) AS DOUBLE) ELSE X END
        WHEN {v} = 'Fraction inspired oxygen' THEN CASE WHEN contains(UOM, 'torr') THEN X ELSE X / 100.0::DOUBLE END
        WHEN {v} = 'Oxygen saturation' THEN CASE WHEN PLAIN THEN
             CASE WHEN X <= 1 THEN X * 100.0::DOUBLE ELSE X END END
        WHEN {v} IN ('Glucose', 'pH') THEN CASE WHEN PLAIN THEN X END
        WHEN {v} = 'Temperature' THEN CASE WHEN X >= 79 THEN (X - 32.0::DOUBLE) * 5.0::DOUBLE / 9.0::DOUBLE ELSE X END
        WHEN {v} = 'Weight' THEN CASE
             WHEN contains(UOM, 'oz') OR contains(LABEL, 'oz') THEN X / 16.0::DOUBLE * 0.453592::DOUBLE
             WHEN contains(UOM, 'lb') OR contains(LABEL, 'lb') THEN X * 0.453592::DOUBLE ELSE X END
        WHEN {v} = 'Height' THEN CASE WHEN contains(UOM, 'in') OR contains(LABEL, 'in')
             THEN round_even(X * 2.54::DOUBLE, 0) ELSE X END
    END"""


def build_events(connection: duckdb.DuckDBPyConnection, tables: RawTables) -> dict:
    """Table ``events`` (rules 1-2, with a STATUS column per row); returns the counts."""
    connection.execute(f"""
        CREATE TEMP TABLE item_map AS SELECT ITEMID, VARIABLE, lower(MIMIC_LABEL) AS LABEL
        FROM read_csv({sql_string(resource_path('itemid_to_variable.csv'))}, header = true, auto_detect = false,
            columns = {{'ITEMID': 'BIGINT', 'VARIABLE': 'VARCHAR', 'MIMIC_LABEL': 'VARCHAR', 'LINKSTO': 'VARCHAR',
                        'COUNT': 'BIGINT'}})""")
    connection.execute("CREATE TEMP TABLE cohort_subjects AS SELECT DISTINCT SUBJECT_ID FROM cohort_stays")
    parts = []
    for number, name in enumerate(EVENT_TABLES):
        icustay = "ICUSTAY_ID" if "ICUSTAY_ID" in tables.tables[name].header_upper else "NULL::BIGINT"
        parts.append(f"""SELECT {number} AS SOURCE, SUBJECT_ID, HADM_ID, {icustay} AS ICUSTAY_ID, CHARTTIME, ITEMID,
                 VALUE, VALUEUOM FROM {tables.scan(name)}
            WHERE ITEMID IN (SELECT ITEMID FROM item_map) AND SUBJECT_ID IN (SELECT SUBJECT_ID FROM cohort_subjects)""")
    run_query(connection, f"""
        CREATE TEMP TABLE events AS
        WITH raw AS ({' UNION ALL '.join(parts)})
        SELECT r.SOURCE, r.SUBJECT_ID, coalesce(r.ICUSTAY_ID, s.ICUSTAY_ID) AS ICUSTAY_ID, r.CHARTTIME, r.ITEMID,
               r.VALUE, r.VALUEUOM,
               CASE WHEN r.HADM_ID IS NULL THEN 'empty_hadm'
                    WHEN s.HADM_ID IS NULL THEN 'no_hadm_in_stay'
                    WHEN r.ICUSTAY_ID IS NULL THEN 'icustay_recovered'
                    WHEN r.ICUSTAY_ID <> s.ICUSTAY_ID THEN 'icustay_missing_in_stays'
                    ELSE 'kept' END AS STATUS
        FROM raw r LEFT JOIN cohort_stays s ON s.SUBJECT_ID = r.SUBJECT_ID AND s.HADM_ID = r.HADM_ID""",
              tables=tables.select(*EVENT_TABLES))
    counts = dict(connection.execute("SELECT STATUS, count(*) FROM events GROUP BY STATUS").fetchall())
    per_table = dict(connection.execute("SELECT SOURCE, count(*) FROM events GROUP BY SOURCE").fetchall())
    return {
        "mapped_events_of_cohort_subjects": {name: int(per_table.get(i, 0)) for i, name in enumerate(EVENT_TABLES)},
        "events_dropped_empty_hadm": int(counts.get("empty_hadm", 0)),
        "events_dropped_hadm_not_in_stays": int(counts.get("no_hadm_in_stay", 0)),
        "events_icustay_recovered": int(counts.get("icustay_recovered", 0)),
        "events_dropped_icustay_not_in_stays": int(counts.get("icustay_missing_in_stays", 0)),
    }


def build_values(connection: duckdb.DuckDBPyConnection) -> dict:
    """Tables ``values_long`` (rules 3-5: one value per subject, CHARTTIME, variable) and ``row_keys`` (6)."""
    connection.execute(f"""
        CREATE TEMP TABLE cleaned AS
        WITH kept AS (
            SELECT e.SUBJECT_ID, e.ICUSTAY_ID, e.CHARTTIME, m.VARIABLE, m.LABEL, e.VALUE,
                   lower(coalesce(e.VALUEUOM, '')) AS UOM,
                   CASE WHEN regexp_full_match(e.VALUE, {sql_string(NUMBER_GRAMMAR)})
                        THEN TRY_CAST(e.VALUE AS DOUBLE) END AS X,
                   regexp_full_match(e.VALUE, {sql_string(PLAIN_DECIMAL)}) AS PLAIN
            FROM events e JOIN item_map m ON m.ITEMID = e.ITEMID
            WHERE e.STATUS IN ('kept', 'icustay_recovered') AND e.VALUE IS NOT NULL
              AND e.VALUE NOT IN {_in(PANDAS_NA_STRINGS)}),
        numbered AS (SELECT *, CASE WHEN VARIABLE IN {_in(KEPT_AS_NUMBER_TEXT + KEPT_AS_CATEGORY)} THEN NULL
                                    ELSE {cleaned_number_sql()} END AS NUM FROM kept)
        SELECT SUBJECT_ID, ICUSTAY_ID, CHARTTIME, VARIABLE,
               CASE WHEN isfinite(NUM) THEN NUM END AS NUM,
               CASE WHEN VARIABLE IN {_in(KEPT_AS_CATEGORY)} OR (VARIABLE IN {_in(KEPT_AS_NUMBER_TEXT)} AND isfinite(X))
                    THEN VALUE END AS TXT,
               CASE WHEN VARIABLE IN {_in(CLEANED_BY_RULE)} AND NUM IS NULL THEN 'dropped_by_rule'
                    WHEN VARIABLE IN {_in(CLEANED_BY_CAST)} AND (NUM IS NULL OR NOT isfinite(NUM)) THEN 'not_a_number'
                    WHEN VARIABLE IN {_in(CLEANED_BY_RULE)} AND NOT isfinite(NUM) THEN 'not_a_number'
                    WHEN VARIABLE IN {_in(KEPT_AS_NUMBER_TEXT)} AND (X IS NULL OR NOT isfinite(X)) THEN 'not_a_number'
               END AS FAIL
        FROM numbered""")
    missing = connection.execute(f"""
        SELECT count(*) FROM events e WHERE e.STATUS IN ('kept', 'icustay_recovered')
        AND (e.VALUE IS NULL OR e.VALUE IN {_in(PANDAS_NA_STRINGS)})""").fetchone()[0]
    fails = dict(connection.execute("SELECT FAIL, count(*) FROM cleaned GROUP BY FAIL").fetchall())
    not_a_number = dict(connection.execute(
        "SELECT VARIABLE, count(*) FROM cleaned WHERE FAIL = 'not_a_number' GROUP BY VARIABLE").fetchall())
    connection.execute("""
        CREATE TEMP TABLE values_long AS
        SELECT SUBJECT_ID, CHARTTIME, VARIABLE, coalesce(CAST(max(NUM) AS VARCHAR), max(TXT)) AS V, count(*) AS N
        FROM cleaned WHERE FAIL IS NULL GROUP BY SUBJECT_ID, CHARTTIME, VARIABLE""")
    connection.execute("""
        CREATE TEMP TABLE row_keys AS
        SELECT DISTINCT SUBJECT_ID, CHARTTIME, ICUSTAY_ID FROM cleaned WHERE FAIL IS NULL""")
    overwritten = connection.execute("SELECT coalesce(sum(N - 1), 0) FROM values_long").fetchone()[0]
    return {
        "values_missing": int(missing),
        "values_dropped_by_cleaning_rule": int(fails.get("dropped_by_rule", 0)),
        "values_not_a_number": {k: int(v) for k, v in sorted(not_a_number.items())},
        "values_kept": int(fails.get(None, 0)),
        "values_same_time_not_largest": int(overwritten),
    }


def build_series(connection: duckdb.DuckDBPyConnection) -> dict:
    """Tables ``episode_rows`` (rule 6), ``phenotyping_stays`` (rule 7, with ROW order) and ``wide``."""
    columns = ",\n".join(f"max(V) FILTER (WHERE VARIABLE = {sql_string(n)}) AS {_identifier(n)}"
                         for n in VARIABLE_NAMES)
    connection.execute(f"CREATE TEMP TABLE wide AS SELECT SUBJECT_ID, CHARTTIME, {columns} FROM values_long "
                       "GROUP BY SUBJECT_ID, CHARTTIME")
    connection.execute(f"""
        CREATE TEMP TABLE episode_rows AS
        SELECT s.ICUSTAY_ID AS STAY, s.SUBJECT_ID, k.CHARTTIME, k.ICUSTAY_ID AS ROW_ICUSTAY_ID,
               (epoch_us(k.CHARTTIME) - epoch_us(s.INTIME)) / 1e6 / 60.0::DOUBLE / 60.0::DOUBLE AS HOURS,
               s.LOS * 24.0::DOUBLE AS LOS_HOURS
        FROM row_keys k JOIN cohort_stays s ON s.SUBJECT_ID = k.SUBJECT_ID
         AND (k.ICUSTAY_ID = s.ICUSTAY_ID OR (k.CHARTTIME >= s.INTIME AND k.CHARTTIME <= s.OUTTIME))""")
    connection.execute(f"""
        CREATE TEMP TABLE stay_rows AS
        SELECT s.ICUSTAY_ID, count(r.STAY) AS ROWS,
               count(r.STAY) FILTER (WHERE r.HOURS > -{EPSILON!r} AND r.HOURS < r.LOS_HOURS + {EPSILON!r}) AS IN_ICU
        FROM cohort_stays s LEFT JOIN episode_rows r ON r.STAY = s.ICUSTAY_ID GROUP BY s.ICUSTAY_ID""")
    connection.execute("""
        CREATE TEMP TABLE phenotyping_stays AS
        SELECT row_number() OVER (ORDER BY CASE s.SPLIT WHEN 'train' THEN 0 ELSE 1 END, STAY) - 1 AS ROW, *
        FROM (SELECT s.*, s.SUBJECT_ID || '_episode' || s.EPISODE || '_timeseries.csv' AS STAY
              FROM cohort_stays s JOIN stay_rows c USING (ICUSTAY_ID)
              WHERE c.IN_ICU > 0 AND s.LOS IS NOT NULL
                AND s.ICUSTAY_ID IN (SELECT ICUSTAY_ID FROM stay_diagnoses)) s""")
    reasons = connection.execute("""
        SELECT count(*) FILTER (WHERE c.ROWS = 0),
               count(*) FILTER (WHERE c.ROWS > 0 AND d.ICUSTAY_ID IS NULL),
               count(*) FILTER (WHERE c.ROWS > 0 AND d.ICUSTAY_ID IS NOT NULL AND s.LOS IS NULL),
               count(*) FILTER (WHERE c.ROWS > 0 AND d.ICUSTAY_ID IS NOT NULL AND s.LOS IS NOT NULL AND c.IN_ICU = 0)
        FROM cohort_stays s JOIN stay_rows c USING (ICUSTAY_ID)
        LEFT JOIN stay_diagnoses d USING (ICUSTAY_ID)""").fetchone()
    return {
        "stays_without_events": int(reasons[0]),
        "stays_without_diagnoses": int(reasons[1]),
        "stays_without_los": int(reasons[2]),
        "stays_without_events_in_icu": int(reasons[3]),
        "phenotyping_stays": int(connection.execute("SELECT count(*) FROM phenotyping_stays").fetchone()[0]),
    }


def fetch_stays(connection: duckdb.DuckDBPyConnection):
    """The phenotyping stays in ROW order -> pandas DataFrame."""
    return connection.execute("""
        SELECT ROW, STAY, SUBJECT_ID, HADM_ID, ICUSTAY_ID, INTIME, OUTTIME, LOS, SPLIT FROM phenotyping_stays
        ORDER BY ROW""").fetchdf()


def fetch_series(connection: duckdb.DuckDBPyConnection):
    """Series rows of the phenotyping stays (row, Hours, 17 variables as text) -> pyarrow Table."""
    columns = ", ".join(f"w.{_identifier(n)}" for n in VARIABLE_NAMES)
    return connection.sql(f"""
        SELECT p.ROW AS "row", r.HOURS AS "Hours", {columns}
        FROM episode_rows r JOIN phenotyping_stays p ON p.ICUSTAY_ID = r.STAY
        JOIN wide w ON w.SUBJECT_ID = r.SUBJECT_ID AND w.CHARTTIME = r.CHARTTIME
        WHERE r.HOURS > -{EPSILON!r} AND r.HOURS < r.LOS_HOURS + {EPSILON!r}
        ORDER BY p.ROW, r.HOURS, r.ROW_ICUSTAY_ID""").to_arrow_table()
