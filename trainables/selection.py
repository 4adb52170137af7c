"""MIRACL's selection metric Z̃ (paper Eq. 2; METHOD §3), vectorised over all N×L pairs.

Groups: pair (i, l) with observed class c = ỹ_il belongs to group ``g = 2·l + c``
(`group_ids`), so there are ``G = 2L`` groups; `group_label(g) = g // 2`,
`group_class(g) = g % 2`. All per-group reductions use ``scatter_reduce`` over the group
ids (no Python loop over groups).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

SELECTION_SIGNALS = ("rank_difficulty", "loss")
RANK_ORIENTATIONS = ("class_aware", "reference")
EPSILON = 1e-6


class SelectionError(ValueError):
    """Bad input to the selection metric (the message names the argument)."""


class SelectionResult(NamedTuple):
    """z_tilde float64 N×L in [0, 1) (Eq. 2, renormalised per group); group_id int64 N×L."""
    z_tilde: torch.Tensor
    group_id: torch.Tensor


def group_ids(observed: torch.Tensor) -> torch.Tensor:
    """Group of each pair, g = 2·l + observed class. N×L {0,1} → int64 N×L in 0..2L−1."""
    labels = torch.arange(observed.shape[1], device=observed.device, dtype=torch.int64)
    return 2 * labels.unsqueeze(0) + (observed > 0.5).to(torch.int64)


def group_label(group: torch.Tensor | int):
    """Label index l of group g (= g // 2)."""
    return group // 2


def group_class(group: torch.Tensor | int):
    """Observed class c of group g (= g % 2; 1 = observed positive)."""
    return group % 2


def label_ranks(probabilities: torch.Tensor) -> torch.Tensor:
    """r_il = rank of p_il among the L labels of instance i, 1 = most confident (§3). N×L → int64 N×L.

    Ties are broken deterministically by label index: of equal probabilities the lower
    label index gets the smaller (more confident) rank (stable descending sort).
    """
    order = torch.sort(probabilities, dim=1, descending=True, stable=True).indices
    positions = torch.arange(1, probabilities.shape[1] + 1, device=probabilities.device,
                             dtype=torch.int64).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def oriented_rank(probabilities: torch.Tensor, observed: torch.Tensor,
                  orientation: str = "class_aware") -> torch.Tensor:
    """Rank term R of Eq. 2 from the per-instance ranks r (`label_ranks`). N×L → int64 N×L in 1..L.

    ``class_aware`` (§3, resolved; default): r for observed positives, L + 1 − r for observed
    negatives, so larger R means "more likely corrupted" for both classes.
    ``reference``: r for both classes, as the public reference code (for observed negatives a
    confidently predicted 0 then scores as *more* likely corrupted).
    """
    if orientation not in RANK_ORIENTATIONS:
        raise SelectionError(f"oriented_rank: orientation {orientation!r}, expected one of {RANK_ORIENTATIONS}")
    ranks = label_ranks(probabilities)
    if orientation == "reference":
        return ranks
    return torch.where(observed > 0.5, ranks, probabilities.shape[1] + 1 - ranks)


def group_min_max(values: torch.Tensor, group_id: torch.Tensor,
                  num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group minimum and maximum via scatter_reduce. (any shape, same shape) → (G, G).

    Empty groups get +inf / −inf.
    """
    flat_values = values.reshape(-1)
    flat_groups = group_id.reshape(-1)
    minimum = torch.full((num_groups,), float("inf"), dtype=flat_values.dtype, device=values.device)
    maximum = torch.full((num_groups,), float("-inf"), dtype=flat_values.dtype, device=values.device)
    minimum.scatter_reduce_(0, flat_groups, flat_values, reduce="amin", include_self=True)
    maximum.scatter_reduce_(0, flat_groups, flat_values, reduce="amax", include_self=True)
    return minimum, maximum


def group_normalise(values: torch.Tensor, group_id: torch.Tensor, num_groups: int,
                    epsilon: float = 0.0) -> torch.Tensor:
    """Min–max normalisation within each group: (v − min_g)/(max_g − min_g + ε). Same shape, float64.

    With ε = 0 a constant group (max = min) maps to 0 instead of dividing by zero.
    """
    values = values.to(torch.float64)
    minimum, maximum = group_min_max(values, group_id, num_groups)
    low = minimum[group_id]
    span = maximum[group_id] - low + epsilon
    shifted = values - low
    return torch.where(span > 0, shifted / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(shifted))


def selection_metric(probabilities: torch.Tensor, observed: torch.Tensor,
                     difficulty: torch.Tensor | None, alpha: float,
                     signal: str = "rank_difficulty", bce: torch.Tensor | None = None,
                     rank_orientation: str = "class_aware", epsilon: float = EPSILON) -> SelectionResult:
    """Z̃ per pair (Eq. 2 with METHOD §3's resolutions). Inputs N×L; returns `SelectionResult`.

    signal="rank_difficulty": Z = α·R̃ + (1−α)·D̃ where R̃, D̃ are the oriented rank
    (`oriented_rank` with `rank_orientation`) and the difficulty (Eq. 1) min–max normalised within each group
    g = (l, c) (constant group → 0). α = 1 is "rank only" (difficulty may be None), α = 0
    "difficulty only".
    signal="loss" ("w/ Loss only", Table 4): Z = group-normalised per-pair BCE against the
    observed label (``bce`` required; α is ignored).
    Finally Z̃ = (Z − min_g Z)/(max_g Z − min_g Z + ε), ε = 1e-6, within each group.
    """
    if probabilities.dim() != 2 or observed.shape != probabilities.shape:
        raise SelectionError(f"selection_metric: expected probabilities and observed of one N×L shape, "
                             f"got {tuple(probabilities.shape)} and {tuple(observed.shape)}")
    if signal not in SELECTION_SIGNALS:
        raise SelectionError(f"selection_metric: signal {signal!r}, expected one of {SELECTION_SIGNALS}")
    if not 0.0 <= alpha <= 1.0:
        raise SelectionError(f"selection_metric: alpha = {alpha}, expected a weight in [0, 1]")
    group_id = group_ids(observed)
    num_groups = 2 * probabilities.shape[1]
    if signal == "loss":
        if bce is None or bce.shape != probabilities.shape:
            raise SelectionError("selection_metric: signal='loss' needs bce of shape "
                                 f"{tuple(probabilities.shape)}, got {None if bce is None else tuple(bce.shape)}")
        z = group_normalise(bce, group_id, num_groups)
    else:
        z = torch.zeros(probabilities.shape, dtype=torch.float64, device=probabilities.device)
        if alpha > 0:
            z = z + alpha * _normalised_rank(probabilities, observed, group_id, rank_orientation)
        if alpha < 1:
            if difficulty is None or difficulty.shape != probabilities.shape:
                raise SelectionError(
                    f"selection_metric: alpha = {alpha} < 1 needs difficulty of shape "
                    f"{tuple(probabilities.shape)}, got {None if difficulty is None else tuple(difficulty.shape)}")
            z = z + (1.0 - alpha) * group_normalise(difficulty, group_id, num_groups)
    return SelectionResult(group_normalise(z, group_id, num_groups, epsilon), group_id)


def _normalised_rank(probabilities: torch.Tensor, observed: torch.Tensor, group_id: torch.Tensor,
                     orientation: str) -> torch.Tensor:
    """R̃: the oriented rank min–max normalised within each group (Eq. 2). N×L → float64 N×L."""
    return group_normalise(oriented_rank(probabilities, observed, orientation), group_id, 2 * probabilities.shape[1])


def selection_components(probabilities: torch.Tensor, observed: torch.Tensor, *, difficulty: torch.Tensor,
                         bce: torch.Tensor, rank_orientation: str = "class_aware") -> dict[str, torch.Tensor]:
    """The group-normalised terms Z̃ is built from (Fig. 5 panels), each float64 N×L in [0, 1]:
    ``loss`` (per-pair BCE, the "w/ Loss only" signal), ``rank`` (R̃) and ``difficulty`` (D̃, Eq. 1).
    Inputs N×L, as for `selection_metric`."""
    group_id = group_ids(observed)
    num_groups = 2 * probabilities.shape[1]
    return {"loss": group_normalise(bce, group_id, num_groups),
            "rank": _normalised_rank(probabilities, observed, group_id, rank_orientation),
            "difficulty": group_normalise(difficulty, group_id, num_groups)}
