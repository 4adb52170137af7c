"""Session-wide fixtures: one tiny materialised cohort and one local Ray session.

Starting Ray and a Train worker group costs tens of seconds here, so every test that needs
Ray shares `ray_session`, and every end-to-end test shares `tiny_cohort`.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """A ~200-stay embedded cohort (24 h, notes cut at 32 tokens), materialised once."""
    from miracl_grid.data.prepare import prepare_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    return prepare_cohort("synthetic", out, patients=120, hours=24, seed=7, max_tokens=32,
                          max_bins=24, progress=False)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from miracl_grid.grid.run import RAY_WORKER_ENVIRONMENT

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**RAY_WORKER_ENVIRONMENT, "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()
