"""A real multi-node Ray cluster on this machine for tests (`ray.cluster_utils.Cluster`).

Every node is a separate raylet (own resources, own node id) joined to one GCS; all of them
live in a private temp dir and on OS-assigned ports, so the cluster never touches another
Ray session on the machine: `RAY_TMPDIR` points Ray's "current cluster" address file into the
private dir while the cluster exists (Ray writes it on head start and deletes it on shutdown),
and nothing here calls `ray stop` or kills by name — only the PIDs these nodes started.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

# GCS declares a node dead after failure_threshold missed health checks of period_ms (Ray's
# defaults: 5 x 3 s); a killed raylet is then noticed in ~1.5 s instead of ~15 s.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                   "health_check_failure_threshold": 3}


@contextlib.contextmanager
def local_cluster(*, head_cpus: float, worker_cpus: tuple[float, ...] = ()) -> Iterator["LocalCluster"]:
    root = Path(tempfile.mkdtemp(prefix="rc"))      # short: Ray's unix socket paths must stay < 108 chars
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(root)
    cluster = None
    try:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
            "num_cpus": head_cpus, "temp_dir": str(root / "ray"), "include_dashboard": False,
            "_system_config": FAST_NODE_DEATH})
        local = LocalCluster(cluster, root)
        for cpus in worker_cpus:
            local.add_node(cpus)
        cluster.wait_for_nodes()
        yield local
    finally:
        if cluster is not None:
            for node in list(cluster.worker_nodes) + ([cluster.head_node] if cluster.head_node else []):
                cluster.remove_node(node, allow_graceful=False)
        import ray._common.utils

        ray._common.utils.reset_ray_address(str(root))   # the address file inside our own dir only
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(root, ignore_errors=True)


class LocalCluster:
    def __init__(self, cluster, root: Path):
        self.cluster = cluster
        self.root = root

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_node_id(self) -> str:
        return self.cluster.head_node.node_id

    def add_node(self, cpus: float):
        return self.cluster.add_node(num_cpus=cpus)

    def worker_node(self, node_id: str):
        return next(node for node in self.cluster.worker_nodes if node.node_id == node_id)

    def kill_raylet(self, node) -> int:
        """SIGKILL the raylet this node started (its PID); the node's workers then die with it.
        Returns the PID. The node's other processes are reaped by `remove_node` later."""
        from ray._private import ray_constants

        process = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        return process.pid

    def environment(self) -> dict[str, str]:
        """Environment for a driver subprocess of this cluster."""
        return {**os.environ, "RAY_TMPDIR": str(self.root)}
