"""cluster.yaml passes Ray 2.60's own cluster-launcher checks (no cloud calls, no credentials).

`ray up` runs `prepare_config` (merge with the provider's defaults.yaml, docker checks, per-type
min/max workers) and then `validate_config` (jsonschema against ray-schema.json plus head-type
and worker-count checks) before it contacts the cloud; this test runs the same two functions.
"""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def raw_config() -> dict:
    with open(CLUSTER_YAML) as handle:
        return yaml.safe_load(handle)


def check(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_validation(raw_config):
    prepared = check(raw_config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-west-2"
    assert prepared["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"


def test_head_is_cpu_only_and_gpu_workers_autoscale_from_zero(raw_config):
    prepared = check(raw_config)
    node_types = prepared["available_node_types"]
    head = node_types[prepared["head_node_type"]]
    assert head["resources"].get("CPU", 0) > 0
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: spec for name, spec in node_types.items() if name != prepared["head_node_type"]}
    assert workers
    for name, spec in workers.items():
        assert spec["resources"].get("GPU", 0) >= 1, name
        assert spec["min_workers"] == 0, name
        assert 0 < spec["max_workers"] <= prepared["max_workers"], name


def test_repo_is_synced_without_local_venv_and_runs(raw_config):
    assert raw_config["file_mounts"] == {"~/miracl-grid": "."}
    assert {".venv", "runs"} <= set(raw_config["rsync_exclude"])
    assert any("pip install" in command and "-e ~/miracl-grid" in command
               for command in raw_config["setup_commands"])
    assert any("ray start --head" in command for command in raw_config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in command for command in raw_config["worker_start_ray_commands"])


def test_unknown_top_level_key_fails_validation(raw_config):
    broken = copy.deepcopy(raw_config)
    broken["worker_type"] = "gpu"
    with pytest.raises(jsonschema.ValidationError, match="worker_type"):
        check(broken)


def test_fractional_gpu_resource_fails_validation(raw_config):
    broken = copy.deepcopy(raw_config)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        check(broken)


def test_head_node_type_must_exist(raw_config):
    broken = copy.deepcopy(raw_config)
    broken["head_node_type"] = "missing_head"
    with pytest.raises(ValueError, match="head_node_type"):
        check(broken)


def test_min_workers_above_max_workers_fails(raw_config):
    broken = copy.deepcopy(raw_config)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        check(broken)


# --- cluster-local.yaml: the autoscaler's fake multi-node provider on one machine ------------
LOCAL_YAML = CLUSTER_YAML.with_name("cluster-local.yaml")


def test_local_cluster_yaml_passes_ray_validation_and_loads_the_fake_provider():
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
    from ray.autoscaler._private.providers import _get_node_provider_cls

    prepared = check(yaml.safe_load(LOCAL_YAML.read_text()))
    assert _get_node_provider_cls(prepared["provider"]) is FakeMultiNodeProvider
    assert prepared["provider"]["gcs_address"]          # new nodes must join this head, not :6379
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}              # training needs autoscaled worker nodes
    workers = prepared["available_node_types"]["cpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 2


def test_fake_multinode_type_has_no_defaults_in_this_ray():
    """Why cluster-local.yaml uses `type: external`: Ray 2.60's wheel lacks fake_multinode's defaults."""
    config = yaml.safe_load(LOCAL_YAML.read_text())
    config["provider"] = {"type": "fake_multinode"}
    with pytest.raises(FileNotFoundError, match="fake_multi_node/example.yaml"):
        prepare_config(config)
