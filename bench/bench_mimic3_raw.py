"""Benchmark: raw MIMIC-III -> phenotyping cohort (miracl_grid.data.mimic3_raw, DuckDB), at simulated full scale.

Generates raw tables in the MIMIC-III v1.4 layout with the ROW COUNTS of the full database times
``--fraction`` (full: 46,520 patients, 58,976 admissions, 61,532 ICU stays, 651,047 diagnoses,
330,712,483 CHARTEVENTS, 27,854,055 LABEVENTS, 4,349,218 OUTPUTEVENTS rows). The content is
simulated, not clinical: chart times fall on the hour or half hour (several variables per
CHARTTIME, as vitals are charted in rounds), each 4M-row block of an event table is ordered by
subject and time (MIMIC-III's files hold a stay's rows together), ~18 % of CHARTEVENTS and ~7 % of LABEVENTS rows carry a mapped ITEMID
(the benchmark map's COUNT shares), times fall inside the stays, transfers (12 %), admissions
with two ICU stays, neonates (8 %) and > 89-year-olds exist so every stay rule has work to do.
Event tables are gzip-compressed as PhysioNet ships them (``--compress none`` for plain CSV).

Then, in a fresh child process (so peak RSS is the reader's own), it times
`miracl_grid.data.mimic3_raw.read_mimic3_raw` stage by stage and the discretisation that
`miracl_grid.data.prepare` runs next, printing seconds per stage and the peak RSS after each, and the
linear extrapolation to full scale (every stage is a scan, a hash join or a hash aggregate:
O(rows)). For the benchmark side it times the per-row work its step 1 does on CHARTEVENTS
(`baseline_rows_per_second`: csv.DictReader dict, subject test, per-subject csv.DictWriter
appends) on the first ``--baseline-rows`` rows, extrapolated linearly to 330.7M rows: a LOWER
bound of mimic3-benchmarks' extract_subjects (its README: "around an hour"), before
validate_events and extract_episodes (per-subject pandas work) even start. Both sides print
wall and CPU seconds: on a machine shared with other jobs the CPU seconds are the fair
comparison (wall = CPU on an idle machine for the single-threaded gzip scan). ``--demo DIR`` also times the route on the real demo tables.

Usage: python bench/bench_mimic3_raw.py [--fraction 0.0333] [--work-dir /tmp/bench_mimic3_raw]
       [--threads 2] [--memory-limit 4GB] [--compress gzip|none] [--keep] [--demo RAW_DIR]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

FULL = {"patients": 46_520, "admissions": 58_976, "icustays": 61_532, "diagnoses": 651_047,
        "chartevents": 330_712_483, "labevents": 27_854_055, "outputevents": 4_349_218}
CHUNK_ROWS = 4_000_000
RESOURCES = Path(__file__).resolve().parents[1] / "data" / "resources" / "mimic3_benchmarks"
EPOCH_2100 = np.datetime64("2100-01-01T00:00:00", "s")


def _times(seconds: np.ndarray) -> pl.Series:
    return pl.Series((EPOCH_2100 + seconds.astype("timedelta64[s]")).astype("datetime64[us]")).dt.strftime(
        "%Y-%m-%d %H:%M:%S")


def _write(frame: pl.DataFrame, path: Path, header: bool) -> None:
    with open(path, "ab") as handle:
        frame.write_csv(handle, include_header=header, null_value="")


def _event_values(rng, items: np.ndarray, categorical: dict[int, list[str]]) -> np.ndarray:
    values = np.char.mod("%d", rng.integers(40, 160, len(items))).astype(object)
    for item, choices in categorical.items():
        hit = items == item
        values[hit] = np.asarray(choices, dtype=object)[rng.integers(0, len(choices), int(hit.sum()))]
    return values


def generate(root: Path, fraction: float, seed: int = 0, compress: str = "gzip") -> dict:
    """Write the simulated raw tables into ``root``; returns the row counts."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n = {k: max(int(round(v * fraction)), 10) for k, v in FULL.items()}
    item_map = pl.read_csv(RESOURCES / "itemid_to_variable.csv")
    ccs = pl.read_csv(RESOURCES / "hcup_ccs_2015_codes.csv", schema_overrides={"ICD9_CODE": pl.String})

    # admissions and ICU stays
    subject_of_admission = np.r_[np.arange(n["patients"]), rng.integers(0, n["patients"], n["admissions"] - n["patients"])]
    admit = rng.integers(0, 100 * 365 * 86400, n["admissions"])
    admission_of_stay = np.r_[np.arange(n["admissions"]), rng.integers(0, n["admissions"], n["icustays"] - n["admissions"])]
    intime = admit[admission_of_stay] + rng.integers(0, 2 * 86400, n["icustays"])
    los_days = np.round(rng.lognormal(1.0, 0.9, n["icustays"]).clip(0.05, 60), 4)
    outtime = intime + (los_days * 86400).astype(np.int64)
    first_ward = rng.integers(1, 60, n["icustays"])
    last_ward = np.where(rng.random(n["icustays"]) < 0.12, first_ward + 1, first_ward)
    subject_ids, hadm_ids, icustay_ids = np.arange(n["patients"]) + 1, np.arange(n["admissions"]) + 100_000, \
        np.arange(n["icustays"]) + 200_000
    stay_subject = subject_of_admission[admission_of_stay]

    first_in = np.full(n["patients"], np.iinfo(np.int64).max)
    np.minimum.at(first_in, stay_subject, intime)
    age_years = np.where(rng.random(n["patients"]) < 0.08, 0.0, rng.uniform(18, 89, n["patients"]))
    dob = first_in - (age_years * 365.25 * 86400).astype(np.int64)
    dob = np.where(rng.random(n["patients"]) < 0.02, dob - 300 * 365 * 86400, dob)  # > 89: shifted DOB
    pl.DataFrame({"ROW_ID": np.arange(n["patients"]), "SUBJECT_ID": subject_ids, "GENDER": "F",
                  "DOB": _times(dob), "DOD": None}).write_csv(root / "PATIENTS.csv")
    pl.DataFrame({"ROW_ID": np.arange(n["admissions"]), "SUBJECT_ID": subject_ids[subject_of_admission],
                  "HADM_ID": hadm_ids, "ADMITTIME": _times(admit),
                  "DISCHTIME": _times(admit + 10 * 86400)}).write_csv(root / "ADMISSIONS.csv")
    pl.DataFrame({"ROW_ID": np.arange(n["icustays"]), "SUBJECT_ID": subject_ids[stay_subject],
                  "HADM_ID": hadm_ids[admission_of_stay], "ICUSTAY_ID": icustay_ids, "DBSOURCE": "carevue",
                  "FIRST_CAREUNIT": "MICU", "LAST_CAREUNIT": "MICU", "FIRST_WARDID": first_ward,
                  "LAST_WARDID": last_ward, "INTIME": _times(intime), "OUTTIME": _times(outtime),
                  "LOS": los_days}).write_csv(root / "ICUSTAYS.csv")
    codes = ccs["ICD9_CODE"].to_numpy()
    admission = rng.integers(0, n["admissions"], n["diagnoses"])
    pl.DataFrame({"ROW_ID": np.arange(n["diagnoses"]), "SUBJECT_ID": subject_ids[subject_of_admission[admission]],
                  "HADM_ID": hadm_ids[admission], "SEQ_NUM": rng.integers(1, 20, n["diagnoses"]),
                  "ICD9_CODE": codes[rng.integers(0, len(codes), n["diagnoses"])]}).write_csv(root / "DIAGNOSES_ICD.csv")
    pl.DataFrame({"ROW_ID": np.arange(len(codes)), "ICD9_CODE": codes, "SHORT_TITLE": "short",
                  "LONG_TITLE": "long title"}).write_csv(root / "D_ICD_DIAGNOSES.csv")

    chart_items = item_map.filter(pl.col("LINKSTO") == "chartevents")
    lab_items = item_map.filter(pl.col("LINKSTO") == "labevents")
    categorical = {198: [str(v) for v in range(3, 16)], 184: ["To Speech", "Spontaneously", "None"],
                   220739: ["4 Spontaneously", "3 To speech"], 454: ["Obeys Commands", "Localizes Pain"],
                   223901: ["6 Obeys Commands"], 723: ["Oriented", "Confused"], 223900: ["5 Oriented"],
                   3348: ["Brisk", "Delayed"], 115: ["Normal <3 secs"], 8377: ["Abnormal >3 secs"]}
    stay_weight = los_days / los_days.sum()

    def events(name: str, rows: int, items: pl.DataFrame, mapped_share: float, unmapped: np.ndarray,
               by_admission: bool) -> None:
        path = root / f"{name}.csv"
        path.unlink(missing_ok=True)
        probability = (items["COUNT"] / items["COUNT"].sum()).to_numpy()
        item_ids = items["ITEMID"].to_numpy()
        for start in range(0, rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            mapped = rng.random(count) < mapped_share
            item = np.where(mapped, item_ids[rng.choice(len(item_ids), count, p=probability)],
                            unmapped[rng.integers(0, len(unmapped), count)])
            if by_admission:
                admission = rng.integers(0, n["admissions"], count)
                time = admit[admission] + rng.integers(-86400, 10 * 86400, count)
                hadm = np.where(rng.random(count) < 0.25, -1, hadm_ids[admission])
                frame = {"ROW_ID": np.arange(start, start + count), "SUBJECT_ID": subject_ids[subject_of_admission[admission]],
                         "HADM_ID": hadm, "ITEMID": item}
            else:
                stay = rng.choice(n["icustays"], count, p=stay_weight)
                # charted in rounds: on the hour or half hour, several variables per CHARTTIME
                time = intime[stay] // 3600 * 3600 + (rng.random(count) * los_days[stay] * 48).astype(np.int64) * 1800
                frame = {"ROW_ID": np.arange(start, start + count), "SUBJECT_ID": subject_ids[stay_subject[stay]],
                         "HADM_ID": hadm_ids[admission_of_stay[stay]],
                         "ICUSTAY_ID": np.where(rng.random(count) < 0.01, -1, icustay_ids[stay]), "ITEMID": item}
            values = _event_values(rng, item, categorical)
            stamp = _times(time)
            frame.update({"CHARTTIME": stamp, "STORETIME": stamp, "CGID": rng.integers(14000, 22000, count),
                          "VALUE": values, "VALUENUM": pl.Series(values, dtype=pl.String).cast(pl.Float64, strict=False),
                          "VALUEUOM": np.where(mapped, "mmHg", "mL"), "WARNING": 0, "ERROR": 0})
            table = pl.DataFrame(frame).with_columns(
                [pl.when(pl.col(c) < 0).then(None).otherwise(pl.col(c)).alias(c)
                 for c in ("HADM_ID", "ICUSTAY_ID") if c in frame]).sort(["SUBJECT_ID", "CHARTTIME"])
            table = table.with_columns(pl.Series("ROW_ID", np.arange(start, start + count)))
            _write(table, path, header=start == 0)
        if compress == "gzip":
            subprocess.run(["gzip", "-1", "-f", str(path)], check=True)

    events("CHARTEVENTS", n["chartevents"], chart_items, 59_072_525 / FULL["chartevents"],
           np.arange(1000, 3000), by_admission=False)
    events("LABEVENTS", n["labevents"], lab_items, 1_869_896 / FULL["labevents"],
           np.arange(50900, 50930), by_admission=True)
    events("OUTPUTEVENTS", n["outputevents"], chart_items, 0.0, np.arange(40050, 40060), by_admission=False)
    return n


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def measure(root: str, threads: int, memory_limit: str) -> dict:
    """Child process: time read_mimic3_raw's stages and the discretisation; peak RSS after each."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from miracl_grid.data.discretise import discretise
    from miracl_grid.data.mimic3_raw import read_mimic3_raw

    started, cpu = time.perf_counter(), time.process_time()
    cohort = read_mimic3_raw(root, threads=threads, memory_limit=memory_limit)
    read_seconds, read_cpu = time.perf_counter() - started, time.process_time() - cpu
    rss_read = _peak_rss_gib()
    started = time.perf_counter()
    series = discretise(cohort.events, cohort.stays["period_length"].to_numpy(), max_bins=512)
    return {"stage_seconds": cohort.source["stage_seconds"], "stage_cpu_seconds": cohort.source["stage_cpu_seconds"],
            "read_seconds": read_seconds, "read_cpu_seconds": read_cpu,
            "peak_rss_gib_after_read": rss_read, "discretise_seconds": time.perf_counter() - started,
            "peak_rss_gib_after_discretise": _peak_rss_gib(), "stays": cohort.num_stays,
            "series_rows": int(len(cohort.events)), "bins": int(series.offsets[-1]),
            "rules": {k: cohort.source["rules"][k] for k in ("cohort_stays", "phenotyping_stays")}}


def baseline_rows_per_second(path: Path, rows: int, subjects: set[str], out_dir: Path) -> tuple[float, float]:
    """Rows per wall and per CPU second of the per-row work mimic3-benchmarks' step 1 does on an event
    table, over the first ``rows`` lines of ``path``: one ``csv.DictReader`` dict per line, the
    subject test, a 7-field output dict, and ``csv.DictWriter`` appends to one ``events.csv`` per
    subject whenever the subject changes. Its later steps (validate_events, extract_episodes,
    create_phenotyping) are not timed: the number is a lower bound of the benchmark's cost."""
    fields = ["SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "CHARTTIME", "ITEMID", "VALUE", "VALUEUOM"]
    out_dir.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open

    def flush(subject: str, buffered: list[dict]) -> None:
        target = out_dir / f"{subject}.csv"
        new = not target.exists()
        with open(target, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerows(buffered)

    with opener(path, "rt", newline="") as handle:
        started, cpu = time.perf_counter(), time.process_time()
        current, buffered, done = "", [], 0
        for done, row in enumerate(csv.DictReader(handle), start=1):
            if row["SUBJECT_ID"] in subjects:
                if current and row["SUBJECT_ID"] != current:
                    flush(current, buffered)
                    buffered = []
                buffered.append({name: row.get(name, "") for name in fields})
                current = row["SUBJECT_ID"]
            if done >= rows:
                break
        if buffered:
            flush(current, buffered)
        result = done / (time.perf_counter() - started), done / (time.process_time() - cpu)
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def _run_child(root: Path, threads: int, memory_limit: str) -> dict:
    command = [sys.executable, __file__, "--measure", str(root), "--threads", str(threads),
               "--memory-limit", memory_limit]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _print_measurement(title: str, result: dict, scale: float | None) -> None:
    print(f"\n{title}: {result['stays']} stays, {result['series_rows']:,} series rows, {result['bins']:,} bins")
    print(f"  {'':<16} {'wall s':>8} {'CPU s':>8}" + (f"   x{scale:.0f}: wall min, CPU min" if scale else ""))
    for stage, seconds in result["stage_seconds"].items():
        cpu = result["stage_cpu_seconds"][stage]
        extra = f"   {seconds * scale / 60:8.2f} {cpu * scale / 60:8.2f}" if scale else ""
        print(f"  stage {stage:<10} {seconds:8.2f} {cpu:8.2f}{extra}")
    wall, cpu = result["read_seconds"], result["read_cpu_seconds"]
    extra = f"   {wall * scale / 60:8.2f} {cpu * scale / 60:8.2f}" if scale else ""
    print(f"  read total       {wall:8.2f} {cpu:8.2f}{extra}")
    print(f"  discretise       {result['discretise_seconds']:8.2f} s")
    print(f"  peak RSS after read {result['peak_rss_gib_after_read']:.2f} GiB, after discretise "
          f"{result['peak_rss_gib_after_discretise']:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=1 / 30, help="share of MIMIC-III's row counts (1/30)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_mimic3_raw"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--compress", choices=("gzip", "none"), default="gzip")
    parser.add_argument("--baseline-rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the generated tables")
    parser.add_argument("--demo", type=Path, default=None, help="also time the real MIMIC-III demo raw folder")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child mode
    arguments = parser.parse_args(argv)
    if arguments.measure:
        print(json.dumps(measure(arguments.measure, arguments.threads, arguments.memory_limit)))
        return 0

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; DuckDB threads "
          f"{arguments.threads}, memory_limit {arguments.memory_limit}")
    if arguments.demo is not None:
        _print_measurement(f"MIMIC-III demo ({arguments.demo})", _run_child(arguments.demo, arguments.threads,
                                                                              arguments.memory_limit), None)
    root = arguments.work_dir / f"raw_{arguments.fraction:.4f}"
    started = time.perf_counter()
    counts = generate(root, arguments.fraction, compress=arguments.compress)
    size = sum(p.stat().st_size for p in root.iterdir()) / 2**30
    print(f"\ngenerated fraction {arguments.fraction:.4f} of MIMIC-III row counts in {time.perf_counter() - started:.0f} s "
          f"({size:.2f} GiB on disk, {arguments.compress}): " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    try:
        scale = 1 / arguments.fraction
        result = _run_child(root, arguments.threads, arguments.memory_limit)
        _print_measurement(f"simulated MIMIC-III x{arguments.fraction:.4f}", result, scale)
        chart = next(root.glob("CHARTEVENTS.csv*"))
        subjects = set(pl.read_csv(root / "ICUSTAYS.csv")["SUBJECT_ID"].cast(pl.String).to_list())
        rate, cpu_rate = baseline_rows_per_second(chart, arguments.baseline_rows, subjects, root / "per_subject")
        full_read, full_cpu = result["read_seconds"] * scale, result["read_cpu_seconds"] * scale
        baseline, baseline_cpu = FULL["chartevents"] / rate, FULL["chartevents"] / cpu_rate
        print(f"\nfull scale (linear extrapolation x{scale:.0f}): mimic3-raw read {full_read / 60:.1f} min wall, "
              f"{full_cpu / 60:.1f} CPU min")
        print(f"mimic3-benchmarks step 1's per-row work on CHARTEVENTS (csv.DictReader, subject test, per-subject "
              f"csv.DictWriter; first {arguments.baseline_rows:,} rows): {rate:,.0f} rows/s wall, {cpu_rate:,.0f} "
              f"rows per CPU s -> {baseline / 3600:.2f} h wall, {baseline_cpu / 3600:.2f} CPU h for 330.7M rows "
              f"(a lower bound: LABEVENTS/OUTPUTEVENTS and its steps 2-5 not counted; its README: extract_subjects "
              f"'around an hour')")
        print(f"ratio benchmark lower bound / mimic3-raw: {baseline / full_read:.1f}x wall, "
              f"{baseline_cpu / full_cpu:.1f}x CPU")
    finally:
        if not arguments.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
