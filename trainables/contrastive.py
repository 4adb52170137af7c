"""Patient-level multimodal contrastive loss (paper Eq. 9; METHOD §6), vectorised with masks.

Rows H = [EHR embeddings of the instances with ``has_series``; note embeddings of the
instances with ``has_note``] (B' ≤ 2B rows), L2-normalised. For anchor a,
P(a) = every other row with the same patient id (its other modality and every row of the
patient's other stays), the denominator runs over all k ≠ a, sim = cosine / τ:

    ℓ_a = −1/|P(a)| Σ_{p∈P(a)} log( exp(s_ap) / Σ_{k≠a} exp(s_ak) ),
    L   = (1/A) Σ_{a : |P(a)|>0} ℓ_a,   A = #anchors with |P(a)| > 0   (0 with grad if A = 0).

DDP (``gather`` given, an autograd-aware all-gather such as
`miracl_grid.trainables.distributed.autograd_all_gather`): every rank gathers all ranks' embeddings,
masks and patient ids (padded to the largest local batch), uses its OWN rows as anchors
against ALL global rows, and returns

    loss_r = (W / A_global) · Σ_{a ∈ local anchors} ℓ_a .

Why: the autograd all-gather's backward sums, on each rank, the gradients that all ranks'
losses send to that rank's rows, so rank r's backward yields the gradient of
J = Σ_r loss_r with respect to its own parameters' contribution; DDP then averages over the W
ranks: (1/W)·∇J = (1/W)·(W/A)·∇Σ_all ℓ_a = ∇L_global. So the DDP-averaged gradient equals
the single-process gradient on the concatenated global batch exactly, and the mean of
loss_r over ranks (all_reduce AVG) equals the global loss value; a single rank's loss_r
alone is NOT the global loss (log the all-reduced mean).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as functional

GatherFunction = Callable[[torch.Tensor], Sequence[torch.Tensor]]


class ContrastiveError(ValueError):
    """Bad input to the contrastive loss (the message names the argument)."""


def _check(ehr, note, has_series, has_note, patient) -> int:
    size = patient.shape[0]
    if ehr.dim() != 2 or note.dim() != 2 or ehr.shape != note.shape or ehr.shape[0] != size:
        raise ContrastiveError(f"patient_contrastive_loss: expected ehr and note of one shape B×H with "
                               f"B = {size} (patient ids), got {tuple(ehr.shape)} and {tuple(note.shape)}")
    if has_series.shape != (size,) or has_note.shape != (size,):
        raise ContrastiveError(f"patient_contrastive_loss: has_series / has_note must be bool ({size},), got "
                               f"{tuple(has_series.shape)} / {tuple(has_note.shape)}")
    return size


def _rows(ehr, note, has_series, has_note, patient):
    """Stack [EHR rows; note rows] of the present modalities. → (B'×H embeddings, B' ids)."""
    present = torch.cat([has_series.bool(), has_note.bool()])
    embeddings = torch.cat([ehr, note])[present]
    ids = torch.cat([patient, patient])[present]
    return embeddings, ids


def _anchor_losses(anchors: torch.Tensor, anchor_ids: torch.Tensor, anchor_positions: torch.Tensor,
                   keys: torch.Tensor, key_ids: torch.Tensor, temperature: float):
    """ℓ_a for each anchor row against all key rows (anchor a is key row anchor_positions[a]).

    Returns (sum of ℓ_a over anchors with |P(a)| > 0, number of such anchors as a tensor).
    """
    columns = torch.arange(keys.shape[0], device=keys.device)
    itself = columns.unsqueeze(0) == anchor_positions.unsqueeze(1)                  # A'×K
    positive = (anchor_ids.unsqueeze(1) == key_ids.unsqueeze(0)) & ~itself
    has_positive = positive.any(1)
    # Only anchors with a positive enter: they have another key, so no row is all −inf (no NaN).
    anchors, itself, positive = anchors[has_positive], itself[has_positive], positive[has_positive]
    anchors = functional.normalize(anchors, dim=1)
    keys = functional.normalize(keys, dim=1)
    logits = (anchors @ keys.T / temperature).masked_fill(itself, float("-inf"))
    log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive_log = torch.where(positive, log_probability, torch.zeros_like(log_probability)).sum(1)
    return (-positive_log / positive.sum(1)).sum(), has_positive.sum()


def patient_contrastive_loss(ehr: torch.Tensor, note: torch.Tensor, has_series: torch.Tensor,
                             has_note: torch.Tensor, patient: torch.Tensor, temperature: float = 0.07,
                             gather: GatherFunction | None = None, rank: int | None = None) -> torch.Tensor:
    """Eq. 9 over the batch (module docstring for the DDP scaling). Scalar tensor.

    ehr, note            B×H projected embeddings (rows without the modality are ignored)
    has_series, has_note bool B
    patient              int64 B patient ids
    temperature          τ_temp (0.07)
    gather               None (single process) or an autograd-aware all-gather
                         ``tensor -> [tensor of rank 0, ..., rank W−1]``
    rank                 this process' rank in ``gather``'s group (None → torch.distributed.get_rank())
    """
    if temperature <= 0:
        raise ContrastiveError(f"patient_contrastive_loss: temperature = {temperature}, expected > 0")
    size = _check(ehr, note, has_series, has_note, patient)
    zero = (ehr.sum() + note.sum()) * 0.0
    if gather is None:
        rows, ids = _rows(ehr, note, has_series, has_note, patient)
        positions = torch.arange(rows.shape[0], device=rows.device)
        total, anchors = _anchor_losses(rows, ids, positions, rows, ids, temperature)
        return torch.where(anchors > 0, total / anchors.clamp(min=1), zero)

    if rank is None:
        import torch.distributed as distributed
        rank = distributed.get_rank()
    device = ehr.device
    sizes = [int(s.reshape(-1)[0]) for s in gather(torch.tensor([size], dtype=torch.int64, device=device))]
    world = len(sizes)
    width = max(sizes)

    def padded(tensor: torch.Tensor) -> torch.Tensor:
        pad = tensor.new_zeros((width - size,) + tuple(tensor.shape[1:]))
        return torch.cat([tensor, pad]).contiguous()

    all_ehr = gather(padded(ehr))
    all_note = gather(padded(note))
    all_series = [t.bool() for t in gather(padded(has_series.to(torch.uint8)))]
    all_notes = [t.bool() for t in gather(padded(has_note.to(torch.uint8)))]
    all_patient = gather(padded(patient.to(torch.int64)))
    # Global rows in rank order: [rank 0 EHR rows, rank 0 note rows, rank 1 EHR rows, ...];
    # the gathered copy of this rank's rows is replaced by the local tensors (same values).
    keys, key_ids, offsets = [], [], []
    for index in range(world):
        count = sizes[index]
        if index == rank:
            rows, ids = _rows(ehr, note, has_series, has_note, patient)
        else:
            rows, ids = _rows(all_ehr[index][:count], all_note[index][:count], all_series[index][:count],
                              all_notes[index][:count], all_patient[index][:count])
        offsets.append(sum(k.shape[0] for k in keys))
        keys.append(rows)
        key_ids.append(ids)
    local_rows = keys[rank]
    keys, key_ids = torch.cat(keys), torch.cat(key_ids)
    positions = offsets[rank] + torch.arange(local_rows.shape[0], device=device)
    total, _ = _anchor_losses(local_rows, key_ids[positions], positions, keys, key_ids, temperature)
    # A_global from the (non-differentiable) global ids: anchors with another row of their patient.
    same = key_ids.unsqueeze(0) == key_ids.unsqueeze(1)
    global_anchors = (same.sum(1) > 1).sum()
    return torch.where(global_anchors > 0, total * world / global_anchors.clamp(min=1), zero)
