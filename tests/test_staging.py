"""Node-local cohort copies: byte-identical, copied once per node, never half-used, reused."""
from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from miracl_grid.data.dataset import CohortData, CohortDataset
from miracl_grid.data.errors import CohortError
from miracl_grid.data.staging import STAGED, stage_cohort


def _key(cohort: Path) -> str:
    return CohortData(cohort).text_key


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != STAGED}


def test_staged_copy_is_byte_identical_and_reads_the_same(tiny_cohort, tmp_path):
    key = _key(tiny_cohort)
    staged = stage_cohort(tiny_cohort, tmp_path / "local", text_keys=[key])
    read_by_trials = {"manifest.json", "stays.parquet", "labels.npy", "series_values.npy", "series_offsets.npy"}
    expected = {name: data for name, data in _files(tiny_cohort).items()
                if name in read_by_trials or name.startswith(f"text/{key}/")}
    assert _files(staged) == expected     # and nothing else (not the raw source/ copy)
    original, copy = CohortData(tiny_cohort), CohortData(staged)
    rows = original.rows("train")[:5]
    for a, b in zip(CohortDataset(original, rows), CohortDataset(copy, rows)):
        assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def test_second_stage_reuses_the_copy(tiny_cohort, tmp_path):
    key = _key(tiny_cohort)
    staged = stage_cohort(tiny_cohort, tmp_path / "local", text_keys=[key])
    features = staged / "text" / key / "token_features.npy"
    before = features.stat().st_mtime_ns
    assert stage_cohort(tiny_cohort, tmp_path / "local", text_keys=[key]) == staged
    assert features.stat().st_mtime_ns == before


def test_an_interrupted_copy_is_replaced(tiny_cohort, tmp_path):
    key = _key(tiny_cohort)
    staged = stage_cohort(tiny_cohort, tmp_path / "local", text_keys=[key])
    features = staged / "text" / key / "token_features.npy"
    features.write_bytes(features.read_bytes()[:100])           # truncated, marker still there
    stage_cohort(tiny_cohort, tmp_path / "local", text_keys=[key])
    assert features.read_bytes() == (tiny_cohort / "text" / key / "token_features.npy").read_bytes()


def test_unknown_text_key_is_an_error(tiny_cohort, tmp_path):
    with pytest.raises(CohortError, match="'nope'"):
        stage_cohort(tiny_cohort, tmp_path / "local", text_keys=["nope"])


def _stage_and_report(cohort: str, root: str, key: str, queue) -> None:
    calls = []
    original = shutil.copyfile

    def counting(source, target, *args, **kwargs):
        calls.append(str(source))
        return original(source, target, *args, **kwargs)

    shutil.copyfile = counting
    stage_cohort(cohort, root, text_keys=[key])
    queue.put(len(calls))


def test_concurrent_workers_on_one_node_copy_once(tiny_cohort, tmp_path):
    key = _key(tiny_cohort)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_stage_and_report, args=(str(tiny_cohort), str(tmp_path / "local"), key, queue))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    copies = sorted(queue.get(timeout=5) for _ in workers)
    files = 4 + 1 + len(os.listdir(tiny_cohort / "text" / key))    # arrays, manifest, the key's files
    assert copies == [0, files]
