"""Thin wrappers over `torch.distributed` so the loop reads the same with 1 or K workers.

Under Ray Train the process group is already initialised (gloo on CPU, nccl on GPU); outside
it (unit tests, a plain `python` call) every helper degrades to the single-process identity.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _padded_to_longest(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """`tensor` zero-padded along dim 0 to the largest first dimension of all ranks, and
    every rank's true length."""
    length = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.int64)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    dist.all_gather(lengths, length)
    lengths = [int(n.item()) for n in lengths]
    pad = max(lengths) - tensor.shape[0]
    if pad:
        tensor = torch.cat([tensor, tensor.new_zeros((pad,) + tuple(tensor.shape[1:]))])
    return tensor, lengths


def all_gather_variable(tensor: torch.Tensor) -> Sequence[torch.Tensor]:
    """Every rank's `tensor` (first dims may differ across ranks; trailing dims must agree).

    No autograd: used for statistics, predictions and indices.
    """
    if not is_distributed():
        return [tensor]
    padded, lengths = _padded_to_longest(tensor)
    pieces = [torch.zeros_like(padded) for _ in lengths]
    dist.all_gather(pieces, padded)
    return [piece[:n] for piece, n in zip(pieces, lengths)]


class _AllGatherWithGradient(torch.autograd.Function):
    """all_gather of equal-shape tensors whose backward hands each rank the sum, over all ranks,
    of the gradients with respect to its own piece (what the global-batch loss asks for).

    Written on `dist.all_gather`/`dist.all_reduce` (both supported by gloo and nccl) instead of
    `torch.distributed.nn.functional.all_gather`, which torch deprecates.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        return tuple(pieces)

    @staticmethod
    def backward(ctx, *gradients: torch.Tensor) -> torch.Tensor:
        summed = torch.stack([gradient.contiguous() for gradient in gradients])   # world × piece shape
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


def autograd_all_gather(tensor: torch.Tensor) -> Sequence[torch.Tensor]:
    """All ranks' `tensor` with gradients flowing back to each rank's own piece
    (first dimensions may differ; trailing dims must agree)."""
    if not is_distributed():
        return [tensor]
    padded, lengths = _padded_to_longest(tensor)
    return [piece[:n] for piece, n in zip(_AllGatherWithGradient.apply(padded), lengths)]


def gather_rows(index: torch.Tensor, values: torch.Tensor, total: int) -> torch.Tensor:
    """Assemble a `total`×… matrix from every rank's (index B, values B×…) pieces.

    DistributedSampler pads shards with repeated indices; a repeated index just writes
    the same row again. Rows no rank produced stay NaN (the caller checks).
    """
    indices = torch.cat(list(all_gather_variable(index)))
    rows = torch.cat(list(all_gather_variable(values)))
    out = torch.full((total,) + tuple(values.shape[1:]), float("nan"), dtype=values.dtype,
                     device=values.device)
    out[indices] = rows
    return out


def all_gather_object(value) -> list:
    """Every rank's picklable `value`, in rank order (``[value]`` in a single process)."""
    if not is_distributed():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value):
    """Rank 0's Python object on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Data-parallel gradient averaging in one flattened all-reduce (used instead of the DDP wrapper).

    Why not `DistributedDataParallel`: the graph changes every step — top-k experts, absent
    modalities and heads a method does not use leave different parameters without gradient
    on different ranks, which DDP rejects even with `find_unused_parameters=True` (measured:
    "Expected to have finished reduction in the prior iteration"). Here a parameter that has
    no gradient on any rank keeps `grad=None` (Adam skips it, exactly as in a 1-worker run);
    one that has a gradient on some rank gets the average, zeros standing in for the others.
    """
    if not is_distributed():
        return
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return
    device = parameters[0].device
    has_gradient = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
    dist.all_reduce(has_gradient)
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for parameter, present in zip(parameters, has_gradient.tolist()):
        count = parameter.numel()
        if present:
            parameter.grad = flat[offset:offset + count].view_as(parameter).clone()
        offset += count
