"""Cohort stays, phenotype labels and the benchmark's train/test split, as DuckDB tables (METHOD §10).

The rules of mimic3-benchmarks' ``extract_subjects`` / ``split_train_and_test`` /
``create_phenotyping``, in order (each count is recorded in ``source["rules"]``):

1. ICU stays without a transfer: ``FIRST_WARDID == LAST_WARDID`` and ``FIRST_CAREUNIT ==
   LAST_CAREUNIT`` (a missing ward or unit counts as a transfer, as pandas' NaN != NaN does);
2. inner joins with ADMISSIONS on (SUBJECT_ID, HADM_ID) and PATIENTS on SUBJECT_ID;
3. admissions with exactly one ICU stay left after 1-2 (counted per HADM_ID);
4. age = (INTIME - DOB) in seconds / 3600 / 24 / 365; a negative age (the shifted DOB of
   patients over 89) becomes 90; stays with age >= 18 are kept.

Those are the cohort stays (table ``cohort_stays``). A stay's episode number is its rank
among its subject's cohort stays ordered by INTIME, OUTTIME (then ICUSTAYS ROW_ID, the file
order the benchmark's stable sort keeps on ties). Diagnoses: DIAGNOSES_ICD rows whose
ICD9_CODE is in D_ICD_DIAGNOSES (inner join), on the stay's (SUBJECT_ID, HADM_ID). A stay
with no such row gets no episode label file in the benchmark and is left out of the
phenotyping task. Label k of a stay is 1 when one of its codes belongs to HCUP CCS 2015 group
k with ``use_in_benchmark`` (25 groups, alphabetical = `miracl_grid.data.schema.PHENOTYPE_LABELS`). A code
without a CCS group gives no label and is counted (the benchmark stops with a KeyError there).
Split: a subject listed with flag 1 in the benchmark's ``testset.csv`` is test, every other
subject train.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from miracl_grid.data.mimic3_raw.tables import RawTables, run_query, sql_string
from miracl_grid.data.schema import PHENOTYPE_LABELS

RESOURCES = Path(__file__).resolve().parents[1] / "resources" / "mimic3_benchmarks"  # package data


def resource_path(name: str) -> str:
    return str(RESOURCES / name)


def _count(connection, sql: str) -> int:
    return int(connection.execute(sql).fetchone()[0])


def build_cohort_stays(connection: duckdb.DuckDBPyConnection, tables: RawTables) -> dict:
    """Tables ``cohort_stays`` (one row per stay) and ``testset``; returns the rule counts."""
    scan = tables.scan
    run_query(connection, f"CREATE TEMP TABLE icustays AS SELECT ROW_ID, SUBJECT_ID, HADM_ID, ICUSTAY_ID, "
              f"FIRST_CAREUNIT, LAST_CAREUNIT, FIRST_WARDID, LAST_WARDID, INTIME, OUTTIME, LOS "
              f"FROM {scan('ICUSTAYS')}", tables=tables.select("ICUSTAYS"))
    run_query(connection, f"CREATE TEMP TABLE admissions AS SELECT SUBJECT_ID, HADM_ID FROM {scan('ADMISSIONS')}",
              tables=tables.select("ADMISSIONS"))
    run_query(connection, f"CREATE TEMP TABLE patients AS SELECT SUBJECT_ID, DOB FROM {scan('PATIENTS')}",
              tables=tables.select("PATIENTS"))
    connection.execute("""
        CREATE TEMP TABLE no_transfer AS SELECT * FROM icustays
        WHERE FIRST_WARDID = LAST_WARDID AND FIRST_CAREUNIT = LAST_CAREUNIT""")
    connection.execute("""
        CREATE TEMP TABLE merged AS
        SELECT s.*, p.DOB FROM no_transfer s
        JOIN admissions a ON a.SUBJECT_ID = s.SUBJECT_ID AND a.HADM_ID = s.HADM_ID
        JOIN patients p ON p.SUBJECT_ID = s.SUBJECT_ID""")
    connection.execute("""
        CREATE TEMP TABLE single_stay AS SELECT * FROM merged
        WHERE HADM_ID IN (SELECT HADM_ID FROM merged GROUP BY HADM_ID HAVING count(ICUSTAY_ID) = 1)""")
    connection.execute("""
        CREATE TEMP TABLE aged AS
        SELECT *, (epoch_us(INTIME) - epoch_us(DOB)) / 1e6 / 3600.0::DOUBLE / 24.0::DOUBLE / 365.0::DOUBLE
               AS AGE_RAW FROM single_stay""")
    connection.execute(f"""
        CREATE TEMP TABLE testset AS
        SELECT column0 AS SUBJECT_ID FROM read_csv({sql_string(resource_path('testset.csv'))}, header = false,
             auto_detect = false, columns = {{'column0': 'BIGINT', 'column1': 'BIGINT'}}) WHERE column1 = 1""")
    connection.execute("""
        CREATE TEMP TABLE cohort_stays AS
        SELECT SUBJECT_ID, HADM_ID, ICUSTAY_ID, INTIME, OUTTIME, LOS,
               CASE WHEN AGE_RAW < 0 THEN 90.0 ELSE AGE_RAW END AS AGE,
               row_number() OVER (PARTITION BY SUBJECT_ID ORDER BY INTIME ASC NULLS LAST,
                                  OUTTIME ASC NULLS LAST, ROW_ID) AS EPISODE,
               CASE WHEN SUBJECT_ID IN (SELECT SUBJECT_ID FROM testset) THEN 'test' ELSE 'train' END AS SPLIT
        FROM aged WHERE AGE_RAW >= 18 OR AGE_RAW < 0""")
    return {
        "icu_stays": _count(connection, "SELECT count(*) FROM icustays"),
        "removed_icu_transfers": _count(
            connection, "SELECT (SELECT count(*) FROM icustays) - count(*) FROM no_transfer"),
        "removed_without_admission_or_patient": _count(
            connection, "SELECT (SELECT count(*) FROM no_transfer) - count(*) FROM merged"),
        "removed_admissions_with_several_icu_stays": _count(
            connection, "SELECT (SELECT count(*) FROM merged) - count(*) FROM single_stay"),
        "removed_age_under_18": _count(connection, "SELECT count(*) FROM aged WHERE AGE_RAW >= 0 AND AGE_RAW < 18 "
                                                   "OR AGE_RAW IS NULL"),
        "age_negative_set_to_90": _count(connection, "SELECT count(*) FROM aged WHERE AGE_RAW < 0"),
        "cohort_stays": _count(connection, "SELECT count(*) FROM cohort_stays"),
        "episode_order_ties": _count(connection, "SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n "
                                                 "FROM cohort_stays GROUP BY SUBJECT_ID, INTIME, OUTTIME "
                                                 "HAVING count(*) > 1)"),
        "cohort_subjects": _count(connection, "SELECT count(DISTINCT SUBJECT_ID) FROM cohort_stays"),
    }


def build_labels(connection: duckdb.DuckDBPyConnection, tables: RawTables) -> dict:
    """Tables ``stay_diagnoses`` (stays with >= 1 diagnosis) and ``stay_labels`` (stay, group); rule counts."""
    scan = tables.scan
    run_query(connection, f"""
        CREATE TEMP TABLE diagnoses_all AS SELECT SUBJECT_ID, HADM_ID, ICD9_CODE FROM {scan('DIAGNOSES_ICD')}""",
              tables=tables.select("DIAGNOSES_ICD"))
    run_query(connection, f"""
        CREATE TEMP TABLE diagnoses AS SELECT * FROM diagnoses_all
        WHERE ICD9_CODE IN (SELECT ICD9_CODE FROM {scan('D_ICD_DIAGNOSES')})""",
              tables=tables.select("D_ICD_DIAGNOSES"))
    connection.execute(f"""
        CREATE TEMP TABLE ccs AS SELECT * FROM read_csv({sql_string(resource_path('hcup_ccs_2015_codes.csv'))},
            header = true, auto_detect = false,
            columns = {{'ICD9_CODE': 'VARCHAR', 'HCUP_CCS_2015': 'VARCHAR', 'USE_IN_BENCHMARK': 'INTEGER'}})""")
    connection.execute("""
        CREATE TEMP TABLE stay_codes AS
        SELECT s.ICUSTAY_ID, d.ICD9_CODE FROM cohort_stays s
        JOIN diagnoses d ON d.SUBJECT_ID = s.SUBJECT_ID AND d.HADM_ID = s.HADM_ID""")
    connection.execute("CREATE TEMP TABLE stay_diagnoses AS SELECT DISTINCT ICUSTAY_ID FROM stay_codes")
    connection.execute("""
        CREATE TEMP TABLE stay_labels AS
        SELECT DISTINCT c.ICUSTAY_ID, g.HCUP_CCS_2015 AS GROUP_NAME FROM stay_codes c
        JOIN ccs g ON g.ICD9_CODE = c.ICD9_CODE WHERE g.USE_IN_BENCHMARK = 1""")
    return {
        "diagnoses_rows": _count(connection, "SELECT count(*) FROM diagnoses_all"),
        "diagnoses_without_d_icd_code": _count(
            connection, "SELECT (SELECT count(*) FROM diagnoses_all) - count(*) FROM diagnoses"),
        "cohort_stays_without_diagnoses": _count(
            connection, "SELECT count(*) FROM cohort_stays "
                        "WHERE ICUSTAY_ID NOT IN (SELECT ICUSTAY_ID FROM stay_diagnoses)"),
        "stay_codes_without_ccs_group": _count(
            connection, "SELECT count(*) FROM stay_codes WHERE ICD9_CODE NOT IN (SELECT ICD9_CODE FROM ccs)"),
    }


def label_matrix(connection: duckdb.DuckDBPyConnection, icustay_ids: np.ndarray) -> np.ndarray:
    """uint8 N×25 labels of the stays ``icustay_ids`` (N), columns in `PHENOTYPE_LABELS` order."""
    pairs = connection.execute("SELECT ICUSTAY_ID, GROUP_NAME FROM stay_labels").fetchdf()
    unknown = sorted(set(pairs["GROUP_NAME"]) - set(PHENOTYPE_LABELS))
    if unknown:  # the resource and the schema disagree: a packaging error, not user input
        raise ValueError(f"hcup_ccs_2015_codes.csv benchmark groups {unknown} are not in miracl_grid.data.schema.PHENOTYPE_LABELS")
    row = pd.Index(icustay_ids).get_indexer(pairs["ICUSTAY_ID"].to_numpy())
    column = pd.Index(PHENOTYPE_LABELS).get_indexer(pairs["GROUP_NAME"].to_numpy())
    kept = row >= 0
    labels = np.zeros((len(icustay_ids), len(PHENOTYPE_LABELS)), dtype=np.uint8)
    labels[row[kept], column[kept]] = 1
    return labels
