"""Cost of the cohort integrity checks on the default embedded cohort (issue 11).

    PYTHONPATH=. python bench/bench_integrity.py [--cohort DIR] [--repeats 5]

Without ``--cohort`` it prepares the default embedded cohort (``python -m miracl_grid.data.prepare --source
synthetic`` defaults: 1600 patients, 48 h, MiniLM features at 512 tokens) into
``runs/bench_integrity_cohort`` first (minutes; reused on the next run, after a full check).

Measured in one run, median of ``--repeats`` (page cache warm after the first read):

- ``quick``: `miracl_grid.data.checksums.verify_files(depth="quick")`, what every trial start (every DDP worker)
  runs: sizes, whole sha256 of the small files, sampled sha256 of the large arrays;
- ``full``: ``depth="full"``, what ``prepare`` runs on reuse and ``--verify`` runs: every byte hashed;
- ``open quick`` / ``open full``: `CohortData(DIR, verify=...)` whole, i.e. the file check plus loading,
  the structural and patient-wise checks and the derived-field recomputation;
- ``load checks``: `check_cohort_arrays` + `check_derived` alone on the loaded arrays.

Prints bytes, seconds, MB/s and the ratios quick/full and open quick/open full.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from miracl_grid.data.checksums import SAMPLE_BLOCK_BYTES, SAMPLE_BLOCKS, SMALL_FILE_BYTES, verify_files
from miracl_grid.data.dataset import CohortData
from miracl_grid.data.materialise import MANIFEST, check_cohort_arrays, check_derived, derived_fields, load_manifest


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, default=None, help="materialised cohort (default: prepare one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cohort = args.cohort
    if cohort is None:
        from miracl_grid.data.prepare import prepare_cohort

        cohort = prepare_cohort("synthetic", Path("runs/bench_integrity_cohort"), progress=False)
    manifest = load_manifest(cohort)
    records = manifest["files"]
    total = sum(record["size"] for record in records.values())
    large = {name: record for name, record in records.items() if record["size"] > SMALL_FILE_BYTES}
    small_bytes = total - sum(record["size"] for record in large.values())
    quick_bytes = small_bytes + len(large) * SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES
    verify_files(cohort, records, depth="full")          # warm the page cache once

    quick = median_seconds(lambda: verify_files(cohort, records, depth="quick"), args.repeats)
    full = median_seconds(lambda: verify_files(cohort, records, depth="full"), args.repeats)
    open_quick = median_seconds(lambda: CohortData(cohort, verify="quick"), args.repeats)
    open_full = median_seconds(lambda: CohortData(cohort, verify="full"), args.repeats)
    data = CohortData(cohort)

    def load_checks() -> None:
        check_cohort_arrays(cohort, data.stays, data.labels, data.series_offsets)
        check_derived(manifest, derived_fields(data.stays, data.labels, data.label_names, data.series_offsets),
                      cohort / MANIFEST)

    checks = median_seconds(load_checks, args.repeats)
    print(f"cohort {cohort}: {data.num_stays} stays, {len(records)} files, {total / 1e6:.1f} MB "
          f"({len(large)} large files > {SMALL_FILE_BYTES / 2**20:.0f} MiB: "
          f"{', '.join(sorted(large))}); repeats {args.repeats}, median")
    print(f"quick check : {quick * 1e3:8.1f} ms  ({quick_bytes / 1e6:.1f} MB read)")
    print(f"full check  : {full * 1e3:8.1f} ms  ({total / 1e6:.1f} MB read, {total / 1e6 / full:.0f} MB/s)")
    print(f"open quick  : {open_quick * 1e3:8.1f} ms  (CohortData, verify='quick': every trial start)")
    print(f"open full   : {open_full * 1e3:8.1f} ms  (CohortData, verify='full': --verify)")
    print(f"load checks : {checks * 1e3:8.1f} ms  (split, structure, derived fields)")
    print(f"ratio quick/full = {quick / full:.3f}; open quick/open full = {open_quick / open_full:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
