"""Class-wise two-component 1-D GMMs of MIRACL's selection (paper Eq. 3; METHOD §4).

One GMM per group g = (label l, observed class c) (G = 2L groups, ids from
`miracl_grid.trainables.selection.group_ids`), all fitted by ONE batched, vectorised EM in torch
float64 over ragged groups (per-group sums via ``index_add_`` over group ids).

The EM follows scikit-learn's ``GaussianMixture(n_components=2)`` (the reference the tests
compare against): M-step with ``nk + 10·eps``, variances + ``reg_covar`` (1e-6), weights
``nk / Σ nk``, convergence when the change of the mean log-likelihood per sample (the
"lower bound", evaluated in the E-step before the M-step) is below ``tolerance`` (1e-3),
at most ``max_iterations`` (100) EM steps. A converged group is frozen while the others
go on (as sklearn would stop for that group).

Initialisation (seeded, k-means-like; sklearn's default is k-means): per group two centres
at min + f·(max − min) with fractions f_low ~ U(0.10, 0.40) and f_high ~ U(0.60, 0.90) of
the group's range (drawn from ``torch.Generator().manual_seed(seed)``, one pair per group
id, so a group's draw does not depend on the other groups' data), refined by batched
Lloyd (1-D 2-means) iterations (at most 300; a group stops when its squared centre shift
is ≤ 1e-4 × its variance, as sklearn's KMeans ``tol``); the hard assignment gives the
initial weights, means and variances as in sklearn's ``init_params="kmeans"``. An empty
initial cluster keeps its centre as mean and the group's variance.

After fitting, components are ordered so that column 0 is the clean one (μ_clean < μ_noisy).
Fallback (METHOD §4): a group with fewer than ``min_group`` pairs (not fitted: parameters
NaN) or with |μ_noisy − μ_clean| < ``degenerate_gap`` (1e-3) puts all its pairs in the
clean set. Partition (Eq. 3): 0 clean (z ≤ μ_clean), 1 uncertain, 2 noisy (z ≥ μ_noisy).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

CLEAN, UNCERTAIN, NOISY = 0, 1, 2
DEGENERATE_GAP = 1e-3
_LOG_TWO_PI = math.log(2.0 * math.pi)
_EPS = float(np.finfo(np.float64).eps)
_LLOYD_ITERATIONS = 300  # sklearn KMeans max_iter
_LLOYD_TOLERANCE = 1e-4  # stop when the squared centre shift ≤ 1e-4 · group variance (sklearn KMeans' tol)


class MixtureError(ValueError):
    """Bad input to the batched GMM (the message names the argument)."""


@dataclass
class GroupMixtures:
    """Result of `fit_group_mixtures`. G = number of groups; column 0 = clean, 1 = noisy.

    means, variances, weights  float64 G×2 (NaN for groups too small to fit)
    counts                     int64 G     pairs per group
    converged                  bool G      EM met the tolerance (False when not fitted)
    iterations                 int64 G     EM steps taken
    fallback                   bool G      whole group put in the clean set (small or degenerate)
    partition                  int8, the input's shape: 0 clean, 1 uncertain, 2 noisy (Eq. 3)
    """
    means: torch.Tensor
    variances: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    fallback: torch.Tensor
    partition: torch.Tensor

    def pair_means(self, group_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair (μ_clean, μ_noisy) of each pair's group. group_id N×L → two float64 N×L."""
        return self.means[group_id, 0], self.means[group_id, 1]

    def set_sizes(self) -> dict[str, int]:
        """Number of pairs in the clean / uncertain / noisy sets."""
        counts = torch.bincount(self.partition.reshape(-1).to(torch.int64), minlength=3).tolist()
        return {"clean": counts[CLEAN], "uncertain": counts[UNCERTAIN], "noisy": counts[NOISY]}

    def as_numpy(self) -> dict[str, np.ndarray]:
        """Per-group arrays (and the partition) as numpy, e.g. for an .npz artifact."""
        return {name: getattr(self, name).detach().cpu().numpy()
                for name in ("means", "variances", "weights", "counts", "converged",
                             "iterations", "fallback", "partition")}


def fit_group_mixtures(values: torch.Tensor, group_id: torch.Tensor, num_groups: int, *,
                       seed: int, max_iterations: int = 100, tolerance: float = 1e-3,
                       reg_covar: float = 1e-6, min_group: int = 10,
                       degenerate_gap: float = DEGENERATE_GAP) -> GroupMixtures:
    """Fit G two-component 1-D GMMs at once and partition every pair (Eq. 3; METHOD §4).

    values    float, any shape (e.g. Z̃ N×L)
    group_id  int64, same shape, in 0..num_groups−1
    Returns `GroupMixtures` (partition has the shape of ``values``).
    """
    if values.shape != group_id.shape:
        raise MixtureError(f"fit_group_mixtures: values {tuple(values.shape)} and group_id "
                           f"{tuple(group_id.shape)} must have one shape")
    if min_group < 2:
        raise MixtureError(f"fit_group_mixtures: min_group = {min_group}, expected at least 2")
    if max_iterations < 1:
        raise MixtureError(f"fit_group_mixtures: max_iterations = {max_iterations}, expected >= 1")
    device = values.device
    x_all = values.reshape(-1).to(torch.float64)
    g_all = group_id.reshape(-1).to(torch.int64)
    if x_all.numel() and (int(g_all.min()) < 0 or int(g_all.max()) >= num_groups):
        raise MixtureError(f"fit_group_mixtures: group ids must lie in 0..{num_groups - 1}")
    if not bool(torch.isfinite(x_all).all()):
        raise MixtureError("fit_group_mixtures: values contain NaN or infinity")

    counts = torch.bincount(g_all, minlength=num_groups)
    generator = torch.Generator().manual_seed(int(seed))
    fraction_low = (0.10 + 0.30 * torch.rand(num_groups, generator=generator, dtype=torch.float64)).to(device)
    fraction_high = (0.60 + 0.30 * torch.rand(num_groups, generator=generator, dtype=torch.float64)).to(device)

    shape = (num_groups, 2)
    means = torch.full(shape, float("nan"), dtype=torch.float64, device=device)
    variances = torch.full(shape, float("nan"), dtype=torch.float64, device=device)
    weights = torch.full(shape, float("nan"), dtype=torch.float64, device=device)
    converged = torch.zeros(num_groups, dtype=torch.bool, device=device)
    iterations = torch.zeros(num_groups, dtype=torch.int64, device=device)
    fitted = counts >= min_group

    if bool(fitted.any()):
        if bool(fitted.all()):
            x, g = x_all, g_all
        else:
            select = fitted.index_select(0, g_all)
            x, g = x_all[select], g_all[select]
        order = torch.sort(g.to(torch.int32), stable=True).indices  # contiguous groups → segment sums
        segments = _Segments(g.index_select(0, order), torch.where(fitted, counts, torch.zeros_like(counts)))
        x = x.index_select(0, order)
        means, variances, weights = _initialise(x, segments, fitted, fraction_low, fraction_high,
                                                reg_covar, means, variances, weights)
        _expectation_maximisation(x, segments, fitted, means, variances, weights, converged,
                                  iterations, max_iterations, tolerance, reg_covar)
        swap = means[:, 0] > means[:, 1]
        for tensor in (means, variances, weights):
            tensor[swap] = tensor[swap].flip(1)

    gap = (means[:, 1] - means[:, 0]).abs()
    fallback = ~fitted | ~(gap >= degenerate_gap)
    partition = _partition(x_all, g_all, means, fallback).reshape(values.shape)
    if bool(fallback.any()):
        logger.debug("GMM fallback (all clean) for groups %s", torch.nonzero(fallback).reshape(-1).tolist())
    return GroupMixtures(means=means, variances=variances, weights=weights, counts=counts,
                         converged=converged, iterations=iterations, fallback=fallback,
                         partition=partition)


# ----------------------------------------------------------------------------------------
class _Segments:
    """Elements sorted by group: ``group`` (M, ascending) and ``lengths`` (G, elements per group)."""

    def __init__(self, group: torch.Tensor, lengths: torch.Tensor):
        self.group = group
        self.lengths = lengths

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Σ over the elements of each group. M → G (0 for empty groups)."""
        return torch.segment_reduce(values, "sum", lengths=self.lengths, unsafe=True)

    def reduce(self, values: torch.Tensor, how: str) -> torch.Tensor:
        """Per-group "min"/"max". M → G (±inf for empty groups)."""
        return torch.segment_reduce(values, how, lengths=self.lengths, unsafe=True)

    def spread(self, per_group: torch.Tensor) -> torch.Tensor:
        """Per-group values to elements. G or G×K → M or M×K."""
        return per_group.index_select(0, self.group)

    def keep(self, active: torch.Tensor) -> torch.Tensor:
        """Element mask of the groups still active; shrinks the segments to them."""
        mask = active.index_select(0, self.group)
        self.group = self.group[mask]
        self.lengths = torch.where(active, self.lengths, torch.zeros_like(self.lengths))
        return mask


def _initialise(x, segments, fitted, fraction_low, fraction_high, reg_covar,
                means, variances, weights):
    """Seeded centres in each group's range + batched 1-D Lloyd → hard-assignment M-step.

    Returns new (means, variances, weights) G×2 with the fitted groups' rows initialised.
    In 1-D, 2-means assigns by the midpoint of the centres, so one Lloyd step is a gather,
    a comparison and two per-group sums.
    """
    counts = segments.lengths.to(torch.float64)
    size = counts.clamp(min=1)
    minimum = torch.where(fitted, segments.reduce(x, "min"), torch.zeros_like(counts))
    maximum = torch.where(fitted, segments.reduce(x, "max"), torch.zeros_like(counts))
    low_centre = minimum + fraction_low * (maximum - minimum)
    high_centre = minimum + fraction_high * (maximum - minimum)
    total = segments.sum(x)
    group_variance = (segments.sum(x * x) / size - (total / size) ** 2).clamp(min=0)
    shift_tolerance = _LLOYD_TOLERANCE * group_variance
    # Lloyd on a shrinking copy: a group stops (and its elements leave) once its centres settle.
    lloyd = _Segments(segments.group, segments.lengths)
    lloyd_x, lloyd_total, lloyd_counts = x, total, counts
    active = fitted.clone()
    for _ in range(_LLOYD_ITERATIONS):
        high_weight = (lloyd_x > lloyd.spread(0.5 * (low_centre + high_centre))).to(torch.float64)
        high_size = lloyd.sum(high_weight)
        high_total = lloyd.sum(high_weight * lloyd_x)
        low_size = lloyd_counts - high_size
        new_high = torch.where(active & (high_size > 0), high_total / high_size.clamp(min=1), high_centre)
        new_low = torch.where(active & (low_size > 0), (lloyd_total - high_total) / low_size.clamp(min=1), low_centre)
        shift = (new_high - high_centre) ** 2 + (new_low - low_centre) ** 2
        high_centre, low_centre = new_high, new_low
        active &= shift > shift_tolerance
        if not bool(active.any()):
            break
        if float(lloyd_counts[active].sum()) < 0.75 * lloyd_x.numel():
            lloyd_x = lloyd_x[lloyd.keep(active)]
            lloyd_counts = lloyd.lengths.to(torch.float64)
            lloyd_total = torch.where(active, lloyd_total, torch.zeros_like(lloyd_total))
    assignment = x > segments.spread(0.5 * (low_centre + high_centre))

    high_weight = assignment.to(torch.float64)
    high_size = segments.sum(high_weight)
    sizes = torch.stack([counts - high_size, high_size], 1)
    nk = sizes + 10 * _EPS
    high_total = segments.sum(high_weight * x)
    sums = torch.stack([total - high_total, high_total], 1)
    centres = torch.stack([low_centre, high_centre], 1)
    initial_means = torch.where(sizes > 0, sums / nk, centres)
    element_means = torch.where(assignment, segments.spread(initial_means[:, 1]),
                                segments.spread(initial_means[:, 0]))
    residual = (x - element_means) ** 2
    high_square = segments.sum(torch.where(assignment, residual, 0.0))
    squares = torch.stack([segments.sum(residual) - high_square, high_square], 1)
    initial_variances = torch.where(sizes > 0, squares / nk, group_variance.unsqueeze(1).expand(-1, 2)) + reg_covar
    initial_weights = nk / nk.sum(1, keepdim=True)
    rows = fitted.unsqueeze(1)
    return (torch.where(rows, initial_means, means), torch.where(rows, initial_variances, variances),
            torch.where(rows, initial_weights, weights))


def _expectation_maximisation(x, segments, fitted, means, variances, weights, converged,
                              iterations, max_iterations, tolerance, reg_covar) -> None:
    """sklearn-equivalent EM for every fitted group at once; updates the G×2 tensors in place.

    Per element only the log-odds δ = log p(x, noisy) − log p(x, clean) is formed, as the
    quadratic ΔA + ΔB·x + ΔC·x² with per-group coefficients; responsibilities are
    sigmoid(δ) and the log-likelihood is log p(x, clean) + softplus(δ), whose first term
    is summed per group from precomputed Σx, Σx². x is centred per group first so the
    one-pass variance Σr(x−μ)² = Σrx² − 2μΣrx + μ²Σr stays well conditioned.
    """
    count = segments.lengths.to(torch.float64)
    size = count.clamp(min=1)
    offset = segments.sum(x) / size
    x = x - segments.spread(offset)
    means -= offset.unsqueeze(1)
    square = x * x
    sum_x = segments.sum(x)
    sum_square = segments.sum(square)
    active = fitted.clone()
    lower_bound = torch.full(count.shape, float("-inf"), dtype=torch.float64, device=x.device)
    for _ in range(max_iterations):
        # E-step with the current parameters: log w_k N(x | μ_k, v_k) = A_k + B_k x + C_k x².
        precision = 1.0 / variances
        coefficient_a = torch.log(weights) - 0.5 * (_LOG_TWO_PI + torch.log(variances)) - 0.5 * means ** 2 * precision
        coefficient_b = means * precision
        coefficient_c = -0.5 * precision
        difference = torch.stack([coefficient_a[:, 1] - coefficient_a[:, 0], coefficient_b[:, 1] - coefficient_b[:, 0],
                                  coefficient_c[:, 1] - coefficient_c[:, 0]], 0).nan_to_num(0.0)
        log_odds = torch.addcmul(segments.spread(difference[0]), x,
                                 torch.addcmul(segments.spread(difference[1]), x, segments.spread(difference[2])))
        responsibility = torch.sigmoid(log_odds)
        clean_part = coefficient_a[:, 0] * count + coefficient_b[:, 0] * sum_x + coefficient_c[:, 0] * sum_square
        new_lower_bound = (clean_part + segments.sum(torch.nn.functional.softplus(log_odds))) / size
        # M-step.
        noisy_size = segments.sum(responsibility)
        noisy_x = segments.sum(responsibility * x)
        noisy_square = segments.sum(responsibility * square)
        sizes = torch.stack([count - noisy_size, noisy_size], 1)
        linear = torch.stack([sum_x - noisy_x, noisy_x], 1)
        quadratic = torch.stack([sum_square - noisy_square, noisy_square], 1)
        nk = sizes + 10 * _EPS
        new_means = linear / nk
        new_variances = (quadratic - 2 * new_means * linear + new_means ** 2 * sizes).clamp(min=0) / nk + reg_covar
        new_weights = nk / nk.sum(1, keepdim=True)

        rows = active.unsqueeze(1)
        means.copy_(torch.where(rows, new_means, means))
        variances.copy_(torch.where(rows, new_variances, variances))
        weights.copy_(torch.where(rows, new_weights, weights))
        iterations += active.to(torch.int64)
        change = new_lower_bound - lower_bound
        lower_bound = torch.where(active, new_lower_bound, lower_bound)
        done = active & (change.abs() < tolerance)
        converged |= done
        active &= ~done
        if not bool(active.any()):
            break
        if float(count[active].sum()) < 0.75 * x.numel():  # drop the elements of frozen groups
            mask = segments.keep(active)
            x, square = x[mask], square[mask]
            count = segments.lengths.to(torch.float64)
    means += offset.unsqueeze(1)


def _partition(x, g, means, fallback) -> torch.Tensor:
    """Eq. 3: 0 clean (x ≤ μ_clean), 2 noisy (x ≥ μ_noisy), 1 otherwise; fallback groups → 0."""
    mean_clean = means[:, 0].index_select(0, g)
    mean_noisy = means[:, 1].index_select(0, g)
    partition = (x >= mean_noisy).to(torch.int8) + (x > mean_clean).to(torch.int8)  # 0, 1 or 2
    return partition.masked_fill_(fallback.index_select(0, g), CLEAN)
