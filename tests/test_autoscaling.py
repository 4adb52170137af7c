"""`cluster-local.yaml`: Ray's own autoscaler (fake multi-node provider) starts worker nodes for
pending trials of a sweep and removes them when idle. `slow`.

Isolation from other Ray sessions on the machine: the head gets its own --temp-dir, GCS port,
and agent ports; the config's provider.gcs_address is rewritten to that port (so
new nodes join this head only); the test stops only the PIDs it started (the head's
`ray start --block` and that process's descendants) and never calls `ray stop`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parent.parent
TINY = dict(epochs=2, warmup_epochs=1, batch_size=32, hidden_size=32, fusion_layers=1, num_experts=4,
            top_k_experts=2, max_note_tokens=32, max_series_bins=24, cosine_t_max=2)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid` (from /proc: parent links)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _alive_nodes(address: str) -> dict[str, dict]:
    from ray._private.state import GlobalState
    from ray._raylet import GcsClientOptions

    state = GlobalState()
    state._initialize_global_state(GcsClientOptions.create(address, None, allow_cluster_id_nil=True,
                                                           fetch_cluster_id_if_nil=False))
    try:
        return {node["NodeID"]: node["Resources"] for node in state.node_table() if node["Alive"]}
    finally:
        state.disconnect()


def _wait(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")


def test_autoscaler_starts_worker_nodes_for_pending_trials(tiny_cohort, tmp_path):
    from ray._private.services import get_node_ip_address
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    root = Path(tempfile.mkdtemp(prefix="ra"))
    host, port = get_node_ip_address(), _free_port()
    address = f"{host}:{port}"
    config = yaml.safe_load((REPOSITORY / "cluster-local.yaml").read_text())
    config["provider"]["gcs_address"] = address
    config_path = tmp_path / "cluster-local.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # RAY_AUTH_MODE=disabled: this test process reads the node table with a plain GCS client
    environment = {**os.environ, "RAY_TMPDIR": str(root), "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "disabled",
                   "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PYTHONPATH": str(REPOSITORY)}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--num-cpus=0", f"--node-ip-address={host}", f"--port={port}",
         f"--temp-dir={root / 'ray'}", "--include-dashboard=false", f"--dashboard-agent-listen-port={_free_port()}",
         f"--autoscaling-config={config_path}"],
        env=environment, stdout=head_log, stderr=subprocess.STDOUT)
    started = time.perf_counter()
    try:
        def head_up() -> bool:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            return (root / "ray" / "ray_current_cluster").exists()

        _wait(head_up, 120, "the head to start")
        assert set(_alive_nodes(address)) == {FAKE_HEAD_NODE_ID}      # no worker node yet
        settings = [item for key, value in TINY.items() for item in ("--set", f"{key}={value}")]
        driver = subprocess.run(
            [sys.executable, str(REPOSITORY / "grid" / "run.py"), "--sweep", "lambda_cons", "--data", str(tiny_cohort),
             "--preset", "quick", "--seeds", "30", "--noise", "symmetric:0.2,0.2", "--set", "lambda_cons=0,0.1",
             *settings, "--workers-per-trial", "1", "--max-concurrent", "2", "--storage", str(tmp_path / "runs"),
             "--no-report", "--address", address],
            env=environment, capture_output=True, text=True, timeout=900)
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
        sweep_seconds = time.perf_counter() - started
        frame = pd.read_parquet(tmp_path / "runs" / "lambda_cons" / "results.parquet")
        assert set(frame["status"]) == {"TERMINATED"} and frame["trial_id"].nunique() == 2
        trained_on = set(frame["placement/node_ids"])
        # every rank trained on a worker node the autoscaler launched (the head has no CPU)
        assert trained_on and all(node.startswith("fffff") and node != FAKE_HEAD_NODE_ID for node in trained_on)
        # ... and the autoscaler removes them again once idle (idle_timeout_minutes: 0.1)
        _wait(lambda: set(_alive_nodes(address)) == {FAKE_HEAD_NODE_ID}, 180, "idle worker nodes to be removed")
        print(f"\nsweep on autoscaled nodes {sorted(n[-5:] for n in trained_on)} in {sweep_seconds:.0f} s; "
              f"scaled back to the head after {time.perf_counter() - started - sweep_seconds:.0f} s")
    finally:
        ours = _descendants(head.pid)
        head.send_signal(signal.SIGTERM)           # `ray start --block` stops its own node's processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for pid in ours:                           # anything of ours still alive (e.g. a worker node)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head_log.close()
        shutil.rmtree(root, ignore_errors=True)
