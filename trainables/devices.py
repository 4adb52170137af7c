"""Where a trial's tensors live: the device of this worker and how batches reach it.

The rule is *the resources the trial reserved decide the device*, never what the machine
happens to have: a CPU trial on a GPU node stays on the CPU (it reserved no GPU share), and a
trial that reserved GPUs fails loudly if its process sees none instead of training on the CPU.

Inside a Ray worker (Ray Train worker or Tune trial process) Ray sets CUDA_VISIBLE_DEVICES
to the GPUs it assigned and `ray.train.torch.get_device()` maps them to a torch device; with
fractional requests (``--gpus-per-worker 0.5``) two processes get the same physical GPU.
"""
from __future__ import annotations

import os

import torch


class DeviceError(RuntimeError):
    """A trial reserved GPUs but its process cannot use one (message says what it saw)."""


def choose_device(*, use_gpu: bool, assigned: torch.device | None, cuda_available: bool) -> torch.device:
    """The torch device of one training process.

    use_gpu: the trial reserved GPUs (``gpus_per_worker > 0``).
    assigned: the device Ray assigned this process (None outside Ray).
    cuda_available: ``torch.cuda.is_available()`` in this process.
    """
    if not use_gpu:
        return torch.device("cpu")
    if not cuda_available:
        raise DeviceError("the trial reserved GPUs (gpus_per_worker > 0) but this process sees no CUDA "
                          f"device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                          f"torch {torch.__version__}); install a CUDA build of torch on the GPU nodes")
    if assigned is None:
        return torch.device("cuda", 0)
    if assigned.type != "cuda":
        raise DeviceError(f"the trial reserved GPUs but Ray assigned this process {assigned}; "
                          "expected a CUDA device")
    return assigned


def worker_device(*, use_gpu: bool) -> torch.device:
    """`choose_device` for the calling process (Ray's assignment when it runs under Ray)."""
    assigned = None
    try:
        import ray

        if ray.is_initialized() and use_gpu:
            import ray.train.torch

            assigned = ray.train.torch.get_device()
    except ImportError:
        pass
    return choose_device(use_gpu=use_gpu, assigned=assigned, cuda_available=torch.cuda.is_available())


def loader_options(device: torch.device) -> dict:
    """DataLoader options for batches bound to `device`: page-locked host memory for CUDA, so
    that ``tensor.to(device, non_blocking=True)`` is an asynchronous copy."""
    return {"pin_memory": device.type == "cuda"}
