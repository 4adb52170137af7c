"""Synthetic label noise on a multi-label matrix (METHOD §2; CbMLC §2 noise taxonomy).

`apply_noise(labels, model, rho_pos, rho_neg, seed)` takes the *clean train* labels
(uint8 N×L, values 0/1) and returns a `NoiseResult` with the noisy labels, the flip mask and
the realised rates. ρ+ = P(1→0), ρ− = P(0→1). It never mutates its input, draws everything
from ``numpy.random.default_rng(seed)`` (same seed, same labels → same noise) and is
vectorised over the N×L pairs (no Python loop over instances).

Models (``NOISE_MODELS``):

``none``
    Identity. The rates passed are ignored and reported as nominal 0.
``symmetric``
    Every pair flips independently with ρ (NCAR, CbMLC type 1). Requires rho_pos == rho_neg.
``asymmetric``
    Positives flip 1→0 with ρ+, negatives 0→1 with ρ−, independently (NAR).
``balanced``
    Asymmetric with ρ− = ρ+·L_avg/(L−L_avg) (METHOD §2 table), so that the expected number of
    0→1 flips equals the expected number of 1→0 flips. L_avg is the mean number of positives
    per instance of the labels given, unless ``l_avg`` is passed (e.g. the manifest's
    ``l_avg_train``). The ``rho_neg`` argument is ignored and the derived value is reported.
``single_positive``
    CbMLC type 3: each instance keeps one uniformly chosen positive, the others become 0.
    Instances with no positive are unchanged. Rates are ignored (nominal reported as NaN).
``class_conditional``
    Each positive (n, i) is *moved* with probability ρ = rho_pos: label i becomes 0 and a
    class j ≠ i becomes 1, chosen with probability N_j/(N−N_i), where N_j is the number of
    positives of class j in the given labels and N = Σ_j N_j (so the total move probability
    is ρ·Σ_j N_j/(N−N_i) = ρ, as in the METHOD table's ρ·N_j/(N−N_i)).
    *(resolved)* A destination that is already positive in the instance (before noise), or
    already taken by another move of the same instance, is not eligible: destinations are
    drawn without replacement among the instance's clean negatives with probability
    proportional to N_j (Gumbel-top-k, i.e. successive draws ∝ N_j renormalised over what is
    still free). Hence every instance keeps exactly its number of positives, each move is one
    1→0 plus one 0→1 flip, and the realised ρ+ equals ρ in expectation. When an instance has
    fewer eligible destinations (clean negatives with N_j > 0) than selected moves, a random
    subset of the selected moves of that size is carried out and the rest stay put (it can
    only lower the realised ρ+, and only for instances with almost every class positive).
    ``rho_neg`` is ignored; the nominal ρ− is reported as NaN (the realised one is counted).
``combined``
    CbMLC §5.2: each instance independently gets one of three corruptions with probability 1/3:
    (a) uniform flips of all its pairs with a rate r ~ U(0, 0.1) drawn *per instance*,
    (b) positive-only drops (1→0) with a rate r ~ U(0, 0.5) drawn per instance,
    (c) single_positive. Rates are ignored (nominal reported as NaN).

Reported ``realised_rho_pos`` = flipped 1→0 / clean positives and ``realised_rho_neg`` =
flipped 0→1 / clean negatives (NaN when that class of pair is empty).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Every noise model, in the order the paper's tables list them; the one list every layer reads.
NOISE_MODELS: tuple[str, ...] = ("none", "symmetric", "asymmetric", "balanced", "class_conditional",
                                 "single_positive", "combined")
RATE_RANGE = "rate [0, 1)"       # a flip rate ρ+ / ρ−: `is_rate`; `TrialConfig.FIELD_RANGES` uses this text

COMBINED_UNIFORM_MAX_RATE = 0.1    # CbMLC type 1 part of the combined noise: r ~ U(0, 0.1)
COMBINED_POSITIVE_MAX_RATE = 0.5   # CbMLC type 2 part of the combined noise: r ~ U(0, 0.5)


class NoiseError(ValueError):
    """Bad input to `apply_noise`; the message names the field, row or column."""


@dataclass(frozen=True)
class NoiseResult:
    """Noisy labels and their provenance. Arrays are N×L; rates are fractions in [0, 1]."""

    noisy: np.ndarray            # uint8 N×L observed labels
    flip_mask: np.ndarray        # bool  N×L, == (noisy != clean)
    rho_pos: float               # nominal P(1→0) actually used (NaN: model has no such rate)
    rho_neg: float               # nominal P(0→1) actually used (balanced: derived from L_avg)
    realised_rho_pos: float      # flipped 1→0 / clean positives (NaN if no positives)
    realised_rho_neg: float      # flipped 0→1 / clean negatives (NaN if no negatives)
    model: str
    seed: int

    @property
    def flipped_pairs(self) -> int:
        return int(self.flip_mask.sum())

    def summary(self) -> dict[str, float | int]:
        """The realised and nominal rates and the flipped pairs; the loop reports them as
        ``noise/<key>`` (results.parquet, METHOD §2)."""
        return {
            "realised_rho_pos": float(self.realised_rho_pos),
            "realised_rho_neg": float(self.realised_rho_neg),
            "flipped_pairs": self.flipped_pairs,
            "rho_neg_nominal": float(self.rho_neg),
        }


def balanced_rho_neg(rho_pos: float, l_avg: float, num_labels: int) -> float:
    """ρ− = ρ+·L_avg/(L−L_avg) (METHOD §2, "balanced"), e.g. (0.2, 4.575, 25) → 0.0448."""
    _check_rate("rho_pos", rho_pos)
    if not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise NoiseError(f"num_labels = {num_labels!r}: expected a positive integer")
    if not (math.isfinite(l_avg) and 0.0 <= l_avg <= num_labels):
        raise NoiseError(f"l_avg = {l_avg!r}: expected the mean number of positives per instance, "
                         f"in [0, num_labels={num_labels}]")
    if rho_pos == 0:
        return 0.0
    if l_avg == num_labels:
        raise NoiseError(f"l_avg = {l_avg!r} = num_labels: every label is positive, so the balanced "
                         "rho_neg = rho_pos*l_avg/(L-l_avg) is undefined; use rho_pos = 0")
    rho_neg = rho_pos * l_avg / (num_labels - l_avg)
    if rho_neg >= 1.0:
        raise NoiseError(f"balanced noise: rho_neg = rho_pos*l_avg/(L-l_avg) = {rho_neg:.4f} "
                         f"(rho_pos={rho_pos}, l_avg={l_avg}, L={num_labels}): expected < 1; "
                         "lower rho_pos")
    return float(rho_neg)


def check_balanced_rho_neg(rho_pos: float, rho_neg: float, *, l_avg: float, num_labels: int) -> float:
    """``rho_neg`` of a balanced-noise trial, checked against its cohort: it must be exactly
    `balanced_rho_neg` (rho_pos, l_avg, num_labels), the value the sweep derived (METHOD §2;
    ARCHITECTURE §7). NoiseError naming both values when it is not (a config expanded for
    another cohort, or a hand-set ``rho_neg``)."""
    expected = balanced_rho_neg(rho_pos, l_avg, num_labels)
    if rho_neg != expected:
        raise NoiseError(f"config field 'rho_neg' = {rho_neg!r}: balanced noise with rho_pos = {rho_pos!r} on "
                         f"this cohort (l_avg_train = {l_avg!r}, L = {num_labels}) has rho_neg = "
                         f"rho_pos*l_avg/(L-l_avg) = {expected!r}; expand the sweep for this cohort "
                         "(grid/run.py derives it) instead of setting rho_neg by hand")
    return expected


def apply_noise(labels: np.ndarray, model: str, rho_pos: float, rho_neg: float, seed: int,
                l_avg: float | None = None) -> NoiseResult:
    """Corrupt clean labels with one noise model of METHOD §2.

    labels: N×L array of 0/1 (uint8 preferred; bool/int/float 0-1 accepted), never modified.
    Returns `NoiseResult` with ``noisy`` uint8 N×L and ``flip_mask`` bool N×L.
    """
    clean = _validate_labels(labels)
    if model not in NOISE_MODELS:
        raise NoiseError(f"noise model {model!r} is unknown: expected one of {list(NOISE_MODELS)}")
    _check_rate("rho_pos", rho_pos)
    _check_rate("rho_neg", rho_neg)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NoiseError(f"seed = {seed!r}: expected a non-negative integer")
    rng = np.random.default_rng(int(seed))
    positive = clean.astype(bool)

    if model == "none":
        used_pos, used_neg = 0.0, 0.0
        flip = np.zeros_like(positive)
    elif model == "symmetric":
        if rho_pos != rho_neg:
            raise NoiseError(f"symmetric noise needs rho_pos == rho_neg, got rho_pos={rho_pos} and "
                             f"rho_neg={rho_neg}; use model 'asymmetric' for different rates")
        used_pos = used_neg = float(rho_pos)
        flip = _independent_flips(positive, used_pos, used_neg, rng)
    elif model == "asymmetric":
        used_pos, used_neg = float(rho_pos), float(rho_neg)
        flip = _independent_flips(positive, used_pos, used_neg, rng)
    elif model == "balanced":
        num_labels = positive.shape[1]
        if l_avg is None:
            if positive.shape[0] == 0:
                raise NoiseError("balanced noise on 0 instances: pass l_avg explicitly")
            l_avg = float(positive.sum(axis=1).mean())
        used_pos = float(rho_pos)
        used_neg = balanced_rho_neg(used_pos, float(l_avg), num_labels)
        flip = _independent_flips(positive, used_pos, used_neg, rng)
    elif model == "single_positive":
        used_pos = used_neg = math.nan
        flip = _single_positive_drops(positive, rng)
    elif model == "class_conditional":
        used_pos, used_neg = float(rho_pos), math.nan
        flip = _class_conditional_moves(positive, used_pos, rng)
    else:  # combined
        used_pos = used_neg = math.nan
        flip = _combined_flips(positive, rng)

    noisy = (positive ^ flip).astype(np.uint8)
    num_positive = int(positive.sum())
    num_negative = positive.size - num_positive
    flipped_positive = int((flip & positive).sum())
    flipped_negative = int(flip.sum()) - flipped_positive
    return NoiseResult(
        noisy=noisy,
        flip_mask=flip,
        rho_pos=used_pos,
        rho_neg=used_neg,
        realised_rho_pos=flipped_positive / num_positive if num_positive else math.nan,
        realised_rho_neg=flipped_negative / num_negative if num_negative else math.nan,
        model=model,
        seed=int(seed),
    )


# --- the models: each returns a bool N×L flip mask ------------------------------------------

def _independent_flips(positive: np.ndarray, rho_pos: float, rho_neg: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Each pair flips independently: positives with rho_pos, negatives with rho_neg. N×L→N×L."""
    uniform = rng.random(positive.shape)
    return np.where(positive, uniform < rho_pos, uniform < rho_neg)


def _single_positive_drops(positive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drop all positives but one uniformly chosen per row (CbMLC type 3). N×L bool → N×L bool."""
    if positive.size == 0:
        return np.zeros_like(positive)
    keys = np.where(positive, rng.random(positive.shape), -1.0)
    kept = np.zeros_like(positive)
    rows = np.arange(positive.shape[0])
    kept[rows, keys.argmax(axis=1)] = True
    kept &= positive            # rows without positives: argmax hit a negative, keep nothing
    return positive & ~kept


def _class_conditional_moves(positive: np.ndarray, rho: float,
                             rng: np.random.Generator) -> np.ndarray:
    """Move each positive with prob. rho to a free class j drawn ∝ N_j (see module docstring)."""
    num_rows, num_labels = positive.shape
    if positive.size == 0:
        return np.zeros_like(positive)
    class_counts = positive.sum(axis=0).astype(np.float64)               # N_j, shape L
    uniform = rng.random(positive.shape)
    selected = positive & (uniform < rho)                                # sources, N×L

    # Destinations: Gumbel-top-k over the row's clean negatives with weight N_j.
    with np.errstate(divide="ignore"):
        log_weight = np.log(class_counts)                                # -inf where N_j = 0
    gumbel = rng.gumbel(size=positive.shape)
    dest_keys = np.where(positive, -np.inf, log_weight[None, :] + gumbel)
    eligible = np.isfinite(dest_keys).sum(axis=1)                        # free classes per row
    moves = np.minimum(selected.sum(axis=1), eligible)                   # moves per row, N

    # Keep a uniformly random subset of `moves[n]` selected sources (all of them unless capped):
    # among selected pairs `uniform` is U(0, rho), so its order is a random order.
    source_rank = _rank_within_rows(np.where(selected, uniform, np.inf))
    sources = selected & (source_rank < moves[:, None])
    dest_rank = _rank_within_rows(-dest_keys)                            # 0 = largest key
    destinations = (dest_rank < moves[:, None]) & np.isfinite(dest_keys)
    return sources | destinations


def _combined_flips(positive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CbMLC combined noise: per row one of uniform / positive-only / single-positive, p = 1/3."""
    num_rows = positive.shape[0]
    kind = rng.integers(0, 3, size=num_rows)                             # 0, 1, 2 per row
    uniform_rate = rng.uniform(0.0, COMBINED_UNIFORM_MAX_RATE, size=num_rows)
    positive_rate = rng.uniform(0.0, COMBINED_POSITIVE_MAX_RATE, size=num_rows)
    uniform = rng.random(positive.shape)
    uniform_flips = uniform < uniform_rate[:, None]
    positive_drops = positive & (uniform < positive_rate[:, None])
    single = _single_positive_drops(positive, rng)
    kind = kind[:, None]
    return np.where(kind == 0, uniform_flips, np.where(kind == 1, positive_drops, single))


def _rank_within_rows(keys: np.ndarray) -> np.ndarray:
    """Rank (0 = smallest) of each entry within its row. N×L float → N×L int64."""
    order = np.argsort(keys, axis=1, kind="stable")
    return np.argsort(order, axis=1, kind="stable")


# --- validation --------------------------------------------------------------------------------

def is_rate(value: object) -> bool:
    """Whether ``value`` is a flip rate: a real number in [0, 1) (`RATE_RANGE`; not a bool)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and 0.0 <= float(value) < 1.0)


def percent_text(rate: float) -> str:
    """A rate as the paper writes it in percent (at most two decimals): 0.2 -> '20', 0.044798 -> '4.48'."""
    text = f"{round(float(rate) * 100.0, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _check_rate(name: str, value: float) -> None:
    if not is_rate(value):
        raise NoiseError(f"{name} = {value!r}: expected a rate in [0, 1)")


def _validate_labels(labels: np.ndarray) -> np.ndarray:
    """Return labels as uint8 (a copy only if the dtype differs); raise naming the bad cell."""
    if not isinstance(labels, np.ndarray):
        raise NoiseError(f"labels: expected a numpy array of 0/1, got {type(labels).__name__}")
    if labels.ndim != 2:
        raise NoiseError(f"labels: expected a 2-D N×L array, got shape {labels.shape}")
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise NoiseError(f"labels: expected an integer/bool array of 0/1, got dtype {labels.dtype}")
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        row, column = (int(index) for index in np.argwhere(bad)[0])
        raise NoiseError(f"labels: row {row}, column {column} holds {labels[row, column]!r}: "
                         f"expected 0 or 1 ({int(bad.sum())} bad cells in all)")
    return labels.astype(np.uint8, copy=False)
