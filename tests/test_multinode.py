"""The grid on a real multi-node Ray cluster (one machine, separate raylets): DDP ranks on
different nodes, a node killed mid-trial, metrics equal to a single-node run.

Layout: a head with 0 CPUs (GCS, the sweep driver, Tune, Train controllers) and 1-CPU worker
nodes, so a 2-worker trial's ranks must sit on two different nodes. `slow`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.local_cluster import local_cluster

REPOSITORY = Path(__file__).resolve().parent.parent
EPOCHS = 4
HOLD_EPOCH = 3
TINY = dict(epochs=EPOCHS, warmup_epochs=1, batch_size=32, hidden_size=32, fusion_layers=1, num_experts=4,
            top_k_experts=2, max_note_tokens=32, max_series_bins=24, cosine_t_max=EPOCHS)
TRIALS = ("miracl_sym20-20_lam0_s30", "miracl_sym20-20_lam0.1_s30")
COMPARED = ("test/", "train/", "correction/", "noise/")

pytestmark = pytest.mark.slow


def _driver(cohort: Path, storage: Path, address: str, environment: dict, *extra: str) -> subprocess.Popen:
    settings = [item for key, value in TINY.items() for item in ("--set", f"{key}={value}")]
    command = [sys.executable, str(REPOSITORY / "grid" / "run.py"), "--sweep", "lambda_cons",
               "--data", str(cohort), "--preset", "quick", "--seeds", "30", "--noise", "symmetric:0.2,0.2",
               "--set", "lambda_cons=0,0.1", "--set", "dropout=0.0", "--set", "noisy_gating=false",
               *settings, "--workers-per-trial", "2", "--max-concurrent", "1", "--storage", str(storage),
               "--no-report", "--address", address, *extra]
    log = open(storage.parent / f"{storage.name}.log", "w")
    return subprocess.Popen(command, env={**environment, "PYTHONPATH": str(REPOSITORY)},
                            stdout=log, stderr=subprocess.STDOUT)


def _reports(storage: Path, trial: str) -> list[dict]:
    path = storage / "lambda_cons" / trial / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _finish(driver: subprocess.Popen, storage: Path, timeout: float = 2400) -> pd.DataFrame:
    try:
        assert driver.wait(timeout=timeout) == 0, (storage.parent / f"{storage.name}.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return pd.read_parquet(storage / "lambda_cons" / "results.parquet")


def _compared(frame: pd.DataFrame) -> pd.DataFrame:
    columns = sorted(c for c in frame.columns if c.startswith(COMPARED))
    return frame.sort_values(["trial_id", "epoch"]).set_index(["trial_id", "epoch"])[columns]


def test_sweep_spans_nodes_survives_a_lost_node_and_matches_one_node(tiny_cohort, tmp_path):
    started = time.perf_counter()
    with local_cluster(head_cpus=2) as single:
        reference = _finish(_driver(tiny_cohort, tmp_path / "single", single.address, single.environment()),
                            tmp_path / "single")
        head = single.head_node_id
    single_seconds = time.perf_counter() - started
    assert set(reference["placement/node_ids"]) == {f"{head},{head}"}

    started = time.perf_counter()
    storage = tmp_path / "multi"
    marker = storage / "lambda_cons" / f"fail_once_{TRIALS[1]}.marker"
    with local_cluster(head_cpus=0, worker_cpus=(1, 1)) as cluster:
        first_nodes = {node.node_id for node in cluster.cluster.worker_nodes}
        # rank 1 of the second trial stops at the start of epoch HOLD_EPOCH (the first trial
        # has finished, epochs 1..HOLD_EPOCH-1 are checkpointed); then its node is killed
        environment = {**cluster.environment(), "MIRACL_FAIL_ONCE": f"{TRIALS[1]}:{HOLD_EPOCH}:1:hold"}
        # and every node reads a node-local copy of the cohort (one machine here: one copy)
        driver = _driver(tiny_cohort, storage, cluster.address, environment,
                         "--node-local-cache", str(tmp_path / "node_local"))
        deadline = time.time() + 2400
        while time.time() < deadline and not marker.exists():
            assert driver.poll() is None, (tmp_path / "multi.log").read_text()[-4000:]
            time.sleep(0.2)
        held = json.loads(marker.read_text())
        finished_before = (storage / "lambda_cons" / TRIALS[0] / "result.json").read_text()
        assert held["node_id"] in first_nodes
        pid = cluster.kill_raylet(cluster.worker_node(held["node_id"]))
        replacement = cluster.add_node(1)              # "a node started again"
        frame = _finish(driver, storage)
        recovered_seconds = time.perf_counter() - started

    # nothing finished was rerun: the first trial's reports are untouched, every epoch reported once
    assert (storage / "lambda_cons" / TRIALS[0] / "result.json").read_text() == finished_before
    for trial in TRIALS:
        assert [r["epoch"] for r in _reports(storage, trial)] == list(range(1, EPOCHS + 1)), trial
    # the first trial's ranks spanned both worker nodes; the second resumed on the survivor + new node
    placements = frame.set_index(["trial_id", "epoch"])["placement/node_ids"].str.split(",")
    assert all(set(nodes) == first_nodes for nodes in placements[TRIALS[0]])
    assert all(set(nodes) == first_nodes for nodes in placements[TRIALS[1]].loc[:HOLD_EPOCH - 1])
    survivor = (first_nodes - {held["node_id"]}).pop()
    after = placements[TRIALS[1]].loc[HOLD_EPOCH:]
    assert all(set(nodes) == {survivor, replacement.node_id} for nodes in after), after.tolist()
    assert set(frame["status"]) == {"TERMINATED"}
    assert [p.name for p in (tmp_path / "node_local").iterdir() if not p.name.startswith(".")] == \
        [json.loads((tiny_cohort / "manifest.json").read_text())["cohort_hash"]]
    # same batches, same gloo sums: every metric of every epoch equals the single-node run
    pd.testing.assert_frame_equal(_compared(frame), _compared(reference), check_exact=True)
    print(f"\nsingle node {single_seconds:.0f} s; multi-node with a lost node {recovered_seconds:.0f} s; "
          f"killed raylet pid {pid} of node {held['node_id'][:8]} (rank 1) at epoch {HOLD_EPOCH}; "
          f"ranks {[n[:8] for n in placements[TRIALS[1]].iloc[0]]} -> {[n[:8] for n in after.iloc[0]]}")
