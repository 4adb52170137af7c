"""GPU placement decided by the reserved resources, checked without a GPU: device choice,
pinned-memory loading, process-group backend, the resource requests of trials and workers."""
from __future__ import annotations

import argparse

import pytest
import torch

from miracl_grid.trainables.devices import DeviceError, choose_device, loader_options, worker_device
from miracl_grid.trainables.train import build_trainer, process_group_backend


def test_cpu_trial_stays_on_cpu_even_where_a_gpu_is_visible():
    assert choose_device(use_gpu=False, assigned=torch.device("cuda", 1), cuda_available=True) == torch.device("cpu")


def test_gpu_trial_uses_the_gpu_ray_assigned():
    assert choose_device(use_gpu=True, assigned=torch.device("cuda", 1), cuda_available=True) == torch.device("cuda", 1)
    # outside Ray (plain process): the first visible GPU
    assert choose_device(use_gpu=True, assigned=None, cuda_available=True) == torch.device("cuda", 0)


@pytest.mark.parametrize("assigned, available", [(None, False), (torch.device("cpu"), True)])
def test_gpu_trial_without_a_usable_gpu_fails_loudly(assigned, available):
    with pytest.raises(DeviceError, match="reserved GPUs"):
        choose_device(use_gpu=True, assigned=assigned, cuda_available=available)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_worker_device_on_a_machine_without_cuda():
    assert worker_device(use_gpu=False) == torch.device("cpu")
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES"):
        worker_device(use_gpu=True)


def test_batches_for_a_gpu_are_loaded_into_pinned_memory():
    assert loader_options(torch.device("cuda", 0)) == {"pin_memory": True}
    assert loader_options(torch.device("cpu")) == {"pin_memory": False}


@pytest.mark.parametrize("workers, gpus, backend", [
    (1, 0.0, "gloo"), (2, 0.0, "gloo"),
    (2, 0.5, "gloo"),     # two ranks of one trial may share one GPU: NCCL refuses duplicate GPUs
    (1, 0.5, "gloo"), (2, 1.0, "nccl"), (4, 2.0, "nccl")])
def test_process_group_backend(workers, gpus, backend):
    assert process_group_backend(workers, gpus) == backend


def test_process_group_backend_rejects_bad_counts():
    with pytest.raises(ValueError, match="workers"):
        process_group_backend(0, 1.0)


@pytest.mark.parametrize("gpus, backend", [(0.0, "gloo"), (0.5, "gloo"), (1.0, "nccl")])
def test_trainer_requests_what_it_trains_on(tmp_path, gpus, backend):
    trainer = build_trainer({"trial": {}, "cohort_dir": "x"}, workers=2, cpus_per_worker=2, gpus_per_worker=gpus,
                            storage_path=str(tmp_path), name="t")
    scaling = trainer.scaling_config
    assert scaling.num_workers == 2
    assert scaling.use_gpu is (gpus > 0)
    assert scaling.resources_per_worker == ({"CPU": 2, "GPU": gpus} if gpus else {"CPU": 2})
    assert trainer.train_loop_config["use_gpu"] is (gpus > 0)
    assert trainer.backend_config.backend == backend


def test_two_half_gpu_trials_fit_one_gpu():
    from miracl_grid.grid.run import fitting_trials
    from miracl_grid.grid.runner import _driver_resources

    args = argparse.Namespace(workers_per_trial=0, cpus_per_worker=1.0, gpus_per_worker=0.5)
    assert fitting_trials({"CPU": 4.0, "GPU": 1.0}, args) == 2
    assert fitting_trials({"CPU": 1.0, "GPU": 1.0}, args) == 1          # CPUs bound it
    runtime = {"workers_per_trial": 0, "cpus_per_worker": 1.0, "gpus_per_worker": 0.5}
    assert _driver_resources({"runtime": runtime}) == {"cpu": 1.0, "gpu": 0.5}
    # worker-group trials: the driver holds nothing, each of 2 workers half a GPU -> one trial per GPU
    args.workers_per_trial = 2
    assert fitting_trials({"CPU": 4.0, "GPU": 1.0}, args) == 1
    assert _driver_resources({"runtime": {**runtime, "workers_per_trial": 2}}) == {"cpu": 0, "memory": 1}
