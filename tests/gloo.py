"""Run a worker on a real 2-process gloo group (CPU) and collect what each rank puts on a queue."""
from __future__ import annotations

import os
import tempfile

import torch.multiprocessing as multiprocessing


def run_on_gloo(worker, world: int = 2, timeout: float = 60) -> list:
    """Spawn `world` processes calling `worker(rank, world, init_file, queue)`; one result per rank.

    The worker initialises the group itself with
    `init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)`.
    """
    queue = multiprocessing.get_context("spawn").Queue()
    with tempfile.TemporaryDirectory() as directory:
        multiprocessing.start_processes(worker, args=(world, os.path.join(directory, "init"), queue),
                                        nprocs=world, start_method="spawn")
        return [queue.get(timeout=timeout) for _ in range(world)]
