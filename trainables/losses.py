"""Baseline multi-label losses over logits (METHOD §11, MIRACL Appendix A.3 / A.5.2).

Every pair loss has the signature ``loss(logits, targets, *, <hyperparameters>, reduction="mean")``:

- ``logits``  B×L float tensor (pre-sigmoid); ``targets`` B×L float tensor in [0, 1].
  Soft targets are allowed; for every loss here a soft target t is the convex combination
  ``t · loss(y=1) + (1 − t) · loss(y=0)`` of the two hard-label branches (for BCE that *is*
  the usual soft-target BCE).
- ``reduction``: ``"mean"`` (default) -> scalar mean over all B·L pairs; ``"sum"`` -> scalar
  sum; ``"none"`` -> the B×L per-pair losses (so a caller can weight or mix pairs itself).

All losses are computed from ``logsigmoid`` so they stay finite with finite gradients at
logits of ±50 in float32. Notation: p = σ(x) for a logit x, log p = logσ(x),
log(1 − p) = logσ(−x).

Losses (hyperparameter defaults = MIRACL Appendix A.5.2, fields of `TrialConfig`):

- `binary_cross_entropy`   — BCE with logits (the "FlexCare" baseline).
- `focal_loss`             — Lin et al. 2017, γ = 2, α = 0.25.
- `asymmetric_loss`        — ASL, Ridnik et al. 2021, γ− = 4, γ+ = 1, m = 0.05.
- `generalized_cross_entropy` — GCE L_q, Zhang & Sabuncu 2018, binary per-label form, q = 0.7.
- `mllsc_loss`             — MLLSC, Ghiassi, Birke & Chen, ACML 2022 (PMLR 189), reconstructed
                             (see its docstring for what is and is not from a source).
- `symmetric_cross_entropy` — SCE, Wang et al. ICCV 2019, α = 0.1, β = 1, A = −4 (the registry's
                             example of an added method, not one of the paper's).
- `MultiTransition` / `forward_corrected_bce` — Multi-T, Li et al. NeurIPS 2022: per-label
                             2×2 transition matrices estimated with label correlations, then
                             forward loss correction.

Which method uses which loss, and which `TrialConfig` fields feed its keywords, is the method
registry's (`miracl_grid.trainables.registry`); `pair_loss_for(config)` binds them.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from miracl_grid.trainables.registry import METHODS

if TYPE_CHECKING:  # pragma: no cover - typing only
    from miracl_grid.trainables.config import TrialConfig

logger = logging.getLogger(__name__)

REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------
def _check_pair_inputs(name: str, logits: torch.Tensor, targets: torch.Tensor,
                       reduction: str) -> None:
    """Raise ValueError naming the loss and the offending argument."""
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name}: logits and targets must be torch tensors, got "
                        f"{type(logits).__name__} and {type(targets).__name__}")
    if logits.shape != targets.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} and targets "
                         f"{tuple(targets.shape)} must have the same B×L shape")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be a floating tensor, got {logits.dtype}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction {reduction!r} is not one of {REDUCTIONS}")
    if targets.numel() and bool(((targets < 0) | (targets > 1)).any()):
        raise ValueError(f"{name}: targets must lie in [0, 1] (got min "
                         f"{float(targets.min()):.4g}, max {float(targets.max()):.4g})")


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _power_of_probability(log_probability: torch.Tensor, gamma: float) -> torch.Tensor:
    """p^γ computed as exp(γ·log p): no 0^γ or 0·∞ in the backward pass."""
    if gamma == 0:
        return torch.ones_like(log_probability)
    return torch.exp(gamma * log_probability)


def _check_non_negative(name: str, **values: float) -> None:
    for key, value in values.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name}: {key} = {value!r}, expected a finite number >= 0")


# ---------------------------------------------------------------------------------------
# BCE, Focal, ASL, GCE
# ---------------------------------------------------------------------------------------
def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *,
                         reduction: str = "mean") -> torch.Tensor:
    """ℓ(x, t) = −[t·logσ(x) + (1 − t)·logσ(−x)] per pair (B×L -> reduced).

    d ℓ / d x = σ(x) − t.
    """
    _check_pair_inputs("binary_cross_entropy", logits, targets, reduction)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype),
                                              reduction=reduction)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float = 2.0,
               alpha: float = 0.25, reduction: str = "mean") -> torch.Tensor:
    """Focal loss (Lin et al. 2017), α-balanced, α weighting the positives:

        ℓ(x, 1) = −α (1 − p)^γ log p
        ℓ(x, 0) = −(1 − α) p^γ log(1 − p)
        ℓ(x, t) = t·ℓ(x, 1) + (1 − t)·ℓ(x, 0)

    The modulating factor is not detached. γ = 0, α = 0.5 gives BCE / 2.
    Shapes: logits, targets B×L -> scalar (or B×L with ``reduction="none"``).
    """
    _check_pair_inputs("focal_loss", logits, targets, reduction)
    _check_non_negative("focal_loss", gamma=gamma)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"focal_loss: alpha = {alpha!r}, expected a weight in [0, 1]")
    targets = targets.to(logits.dtype)
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    positive = -alpha * _power_of_probability(log_not_p, gamma) * log_p
    negative = -(1.0 - alpha) * _power_of_probability(log_p, gamma) * log_not_p
    return _reduce(targets * positive + (1.0 - targets) * negative, reduction)


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma_negative: float = 4.0,
                    gamma_positive: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                    detach_focusing_weight: bool = False,
                    reduction: str = "mean") -> torch.Tensor:
    """Asymmetric loss, ASL (Ridnik et al., ICCV 2021):

        p_m = max(p − m, 0)                                   (probability shift, negatives only)
        ℓ(x, 1) = −(1 − p)^γ+ · log p
        ℓ(x, 0) = −p_m^γ− · log(1 − p_m)
        ℓ(x, t) = t·ℓ(x, 1) + (1 − t)·ℓ(x, 0)

    with m = ``clip`` (0.05), γ+ = 1, γ− = 4 (MIRACL A.5.2). For hard targets this is exactly the
    reference implementation (Alibaba-MIIL/ASL ``AsymmetricLoss``: ``xs_neg = (1 − p + m).clamp(max=1)``,
    logs clamped at ``eps`` = 1e-8); here the logs are taken in log space,
    ``log p = max(logσ(x), log eps)`` and ``log(1 − p_m) = max(log min(σ(−x) + m, 1), log eps)``
    (``logσ(−x)`` when m = 0), so values and gradients stay finite at any logit. ``eps = 0``
    removes the clamp. With γ± = 0 and m = 0 ASL equals BCE (for |x| < −log eps ≈ 18.4 when the
    default clamp is on, since the reference clamp caps each log at log 1e-8).

    Focusing weight: ``detach_focusing_weight=False`` (default) differentiates through
    (1 − p)^γ+ and p_m^γ−, as in the paper's equations and its gradient analysis
    (dℓ−/dx = p_m^γ− [1/(1 − p_m) − γ− log(1 − p_m)/p_m] · p(1 − p) for p > m). The
    reference repository's ``disable_torch_grad_focal_loss`` switch (default True in its
    ``AsymmetricLoss`` class, False in ``AsymmetricLossOptimized``) corresponds to ``True``.

    Shapes: logits, targets B×L -> scalar (or B×L with ``reduction="none"``).
    """
    _check_pair_inputs("asymmetric_loss", logits, targets, reduction)
    _check_non_negative("asymmetric_loss", gamma_negative=gamma_negative,
                        gamma_positive=gamma_positive, clip=clip, eps=eps)
    if clip >= 1.0:
        raise ValueError(f"asymmetric_loss: clip = {clip!r}, expected a probability shift in [0, 1)")
    targets = targets.to(logits.dtype)
    floor = math.log(eps) if eps > 0 else -math.inf

    log_p = F.logsigmoid(logits).clamp(min=floor)
    if clip > 0:
        not_p_shifted = (torch.sigmoid(-logits) + clip).clamp(max=1.0)     # 1 − p_m >= m > 0
        log_not_p_shifted = torch.log(not_p_shifted).clamp(min=floor)
        p_shifted = (torch.sigmoid(logits) - clip).clamp(min=0.0)
    else:
        log_not_p_shifted = F.logsigmoid(-logits).clamp(min=floor)
        p_shifted = torch.sigmoid(logits)

    positive_weight = _power_of_probability(F.logsigmoid(-logits), gamma_positive)
    if gamma_negative == 0:
        negative_weight = torch.ones_like(p_shifted)
    else:
        is_positive = p_shifted > 0
        safe = torch.where(is_positive, p_shifted, torch.ones_like(p_shifted))
        negative_weight = torch.where(is_positive, torch.exp(gamma_negative * torch.log(safe)),
                                      torch.zeros_like(p_shifted))
    if detach_focusing_weight:
        positive_weight = positive_weight.detach()
        negative_weight = negative_weight.detach()

    positive = -positive_weight * log_p
    negative = -negative_weight * log_not_p_shifted
    return _reduce(targets * positive + (1.0 - targets) * negative, reduction)


def generalized_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, q: float = 0.7,
                              reduction: str = "mean") -> torch.Tensor:
    """Generalized cross entropy L_q (Zhang & Sabuncu, NeurIPS 2018), binary per-label form:

        ℓ(x, 1) = (1 − p^q) / q,   ℓ(x, 0) = (1 − (1 − p)^q) / q
        ℓ(x, t) = t·ℓ(x, 1) + (1 − t)·ℓ(x, 0)

    computed as −expm1(q·log p)/q. q → 0 gives BCE, q = 1 gives the MAE 1 − p_t. The
    truncated variant of the paper is not used (MIRACL A.5.2: "default parameters"; q = 0.7 is
    the paper's default). d ℓ(x, 1)/dx = −p^q (1 − p); d ℓ(x, 0)/dx = (1 − p)^q p.
    """
    _check_pair_inputs("generalized_cross_entropy", logits, targets, reduction)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"generalized_cross_entropy: q = {q!r}, expected 0 < q <= 1")
    targets = targets.to(logits.dtype)
    positive = -torch.expm1(q * F.logsigmoid(logits)) / q
    negative = -torch.expm1(q * F.logsigmoid(-logits)) / q
    return _reduce(targets * positive + (1.0 - targets) * negative, reduction)


def symmetric_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.1,
                            beta: float = 1.0, log_zero: float = -4.0, reduction: str = "mean") -> torch.Tensor:
    """Symmetric cross entropy, SCE (Wang et al., ICCV 2019), per label as a two-class problem:

        ℓ = α·BCE(x, t) + β·RCE(x, t),   RCE = −Σ_k p_k log q_k with the label distribution q and
        log 0 := A (``log_zero`` = −4), so  RCE(x, 1) = −A·(1 − p),  RCE(x, 0) = −A·p
        ℓ(x, t) = t·ℓ(x, 1) + (1 − t)·ℓ(x, 0)

    The reverse term is −A·|p − y| for a hard label y (a bounded, MAE-like loss, robust to label
    noise); α = 0.1, β = 1 are the paper's CIFAR-10 values. At x = 0, y = 1: α·log 2 + β·(−A)/2.
    The method registry's example of a method added by one record (README "Add a method").
    Shapes: logits, targets B×L -> scalar (or B×L with ``reduction="none"``).
    """
    _check_pair_inputs("symmetric_cross_entropy", logits, targets, reduction)
    _check_non_negative("symmetric_cross_entropy", alpha=alpha, beta=beta)
    if not (log_zero < 0 and math.isfinite(log_zero)):
        raise ValueError(f"symmetric_cross_entropy: log_zero = {log_zero!r}, expected a finite number < 0")
    targets = targets.to(logits.dtype)
    probability = torch.sigmoid(logits)
    positive = -alpha * F.logsigmoid(logits) - beta * log_zero * (1.0 - probability)
    negative = -alpha * F.logsigmoid(-logits) - beta * log_zero * probability
    return _reduce(targets * positive + (1.0 - targets) * negative, reduction)


# ---------------------------------------------------------------------------------------
# MLLSC
# ---------------------------------------------------------------------------------------
def mllsc_loss(logits: torch.Tensor, targets: torch.Tensor, *, tau_positive: float = 0.55,
               tau_negative: float = 0.6, margin: float = 1.0, gamma: float = 2.0,
               correction: bool = True, reduction: str = "mean") -> torch.Tensor:
    """MLLSC — Multi-Label Loss with Self Correction (Ghiassi, Birke & Chen, ACML 2022,
    PMLR 189:359–374; cited by MIRACL as Ghiassi et al. 2023). RECONSTRUCTED.

    The MLLSC paper is not available here. What is known for certain: its abstract (the loss is
    computed from whether a label is a true/false positive or true/false negative, decided from
    the network's output probability during training; it "can be combined with different
    multi-label loss functions" and addresses imbalance) and MIRACL A.5.2's hyperparameters
    τ_pos = 0.55, τ_neg = 0.6, margin m = 1, γ = 2. Those last two are exactly the defaults of
    the *focal margin* loss of SPLC (Zhang et al. 2021, "Simple and Robust Loss Design for
    Multi-Label Learning with Missing Labels", code xinyu1205/robust-loss-mlml), which corrects
    missing labels only: an observed negative with σ(x) > τ is trained as a positive. MLLSC
    extends that to corrupted (false-positive) labels. So we implement SPLC's loss with a
    second, symmetric correction rule:

        p = σ(x)                      (decisions use the raw logit; indicators carry no gradient)
        ℓ+(x) = −(1 − q)^γ log q,  q = σ(x − m)   focal margin loss for a kept observed positive
        ℓ+₀(x) = −(1 − p)^γ log p                 positive loss for a corrected (missing) positive
        ℓ−(x) = −p^γ log(1 − p)                   focal loss for a negative
        observed 1:  ℓ = ℓ−(x)  if p < 1 − τ_neg  (corrupted: the net is ≥ τ_neg sure it is 0)
                     ℓ = ℓ+(x)  otherwise
        observed 0:  ℓ = ℓ+₀(x) if p > τ_pos     (missing: the net is > τ_pos sure it is 1)
                     ℓ = ℓ−(x)  otherwise
        soft t:      ℓ = t·ℓ(observed 1) + (1 − t)·ℓ(observed 0)

    From SPLC (source code read): the focal-margin positive term with the margin applied only to
    observed positives, the focal weights not detached, the missing-label rule p > τ. Our
    reconstruction (uncertain): (i) that MLLSC's corrupted-label rule is the mirror image,
    p < 1 − τ_neg (reading τ_neg as a confidence in the negative class; p < τ_neg would relabel
    nearly every positive early in training); (ii) that corrected pairs use the un-shifted
    logit (as SPLC's code does for its corrected negatives); (iii) that "margin" is SPLC's logit
    margin and not a pairwise ranking margin — we found no evidence for a ranking term, so none
    is added; (iv) the exact MLLSC weighting/imbalance term, if any beyond γ, is unknown.
    ``correction=False`` gives the uncorrected focal margin loss (SPLC starts correcting after
    its first epoch; the training loop decides when to switch it on).

    Shapes: logits, targets B×L -> scalar (or B×L with ``reduction="none"``).
    """
    _check_pair_inputs("mllsc_loss", logits, targets, reduction)
    _check_non_negative("mllsc_loss", margin=margin, gamma=gamma)
    for key, value in (("tau_positive", tau_positive), ("tau_negative", tau_negative)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"mllsc_loss: {key} = {value!r}, expected a probability in [0, 1]")
    targets = targets.to(logits.dtype)
    shifted = logits - margin
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_q, log_not_q = F.logsigmoid(shifted), F.logsigmoid(-shifted)

    margin_positive = -_power_of_probability(log_not_q, gamma) * log_q
    plain_positive = -_power_of_probability(log_not_p, gamma) * log_p
    negative = -_power_of_probability(log_p, gamma) * log_not_p

    if correction:
        with torch.no_grad():
            probability = torch.sigmoid(logits)
            corrupted = probability < 1.0 - tau_negative
            missing = probability > tau_positive
        observed_positive = torch.where(corrupted, negative, margin_positive)
        observed_negative = torch.where(missing, plain_positive, negative)
    else:
        observed_positive, observed_negative = margin_positive, negative
    return _reduce(targets * observed_positive + (1.0 - targets) * observed_negative, reduction)


# ---------------------------------------------------------------------------------------
# Multi-T: transition matrices from label correlations + forward correction
# ---------------------------------------------------------------------------------------
def _as_matrices(matrices: torch.Tensor | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(matrices, dtype=like.dtype, device=like.device)
    num_labels = like.shape[-1]
    if tensor.shape != (num_labels, 2, 2):
        raise ValueError(f"forward_corrected_bce: matrices {tuple(tensor.shape)} must be "
                         f"L×2×2 with L = {num_labels} (the logits' last dimension)")
    if bool((tensor < 0).any()) or not torch.allclose(tensor.sum(-1), torch.ones_like(tensor[..., 0]),
                                                      atol=1e-5):
        raise ValueError("forward_corrected_bce: each matrices[l] must be row-stochastic "
                         "(rows: clean class, columns: observed class, non-negative, rows sum to 1)")
    return tensor


def forward_corrected_bce(logits: torch.Tensor, targets: torch.Tensor,
                          matrices: torch.Tensor | np.ndarray, *,
                          reduction: str = "mean") -> torch.Tensor:
    """Forward-corrected BCE (Patrini et al. 2017 forward correction, per label as in Multi-T).

        p̃ = P(ỹ = 1 | x) = T[0,1]·(1 − p) + T[1,1]·p = ρ− (1 − p) + (1 − ρ+) p
        ℓ = −[t·log p̃ + (1 − t)·log(1 − p̃)]

    with ``matrices`` L×2×2, T_l[clean, observed]. Computed as log p̃ =
    logsumexp(log T[1,1] + logσ(x), log T[0,1] + logσ(−x)) (and likewise for 1 − p̃), so the
    identity matrix reproduces `binary_cross_entropy` exactly, also at logits ±50.
    d ℓ/dx = −(t/p̃ − (1 − t)/(1 − p̃)) · (1 − ρ+ − ρ−) · p(1 − p).
    Shapes: logits, targets B×L -> scalar (or B×L with ``reduction="none"``).
    """
    _check_pair_inputs("forward_corrected_bce", logits, targets, reduction)
    transition = _as_matrices(matrices, logits)
    targets = targets.to(logits.dtype)
    log_transition = torch.log(transition)                     # −inf where an entry is 0
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_noisy_positive = torch.logaddexp(log_transition[:, 1, 1] + log_p,
                                         log_transition[:, 0, 1] + log_not_p)
    log_noisy_negative = torch.logaddexp(log_transition[:, 1, 0] + log_p,
                                         log_transition[:, 0, 0] + log_not_p)
    losses = -(targets * log_noisy_positive + (1.0 - targets) * log_noisy_negative)
    return _reduce(losses, reduction)


def _transition_from_rates(rho_positive: np.ndarray, rho_negative: np.ndarray) -> np.ndarray:
    """rates L -> L×2×2 with rows [[1 − ρ−, ρ−], [ρ+, 1 − ρ+]] (row = clean, column = observed)."""
    matrices = np.empty((len(rho_positive), 2, 2), dtype=np.float64)
    matrices[:, 0, 0] = 1.0 - rho_negative
    matrices[:, 0, 1] = rho_negative
    matrices[:, 1, 0] = rho_positive
    matrices[:, 1, 1] = 1.0 - rho_positive
    return matrices


@dataclass
class MultiTransition:
    """Multi-T (Li, Xia, Zhang, Zhan, Ge & Liu, "Estimating noise transition matrix with label
    correlations for noisy multi-label learning", NeurIPS 2022): per-label 2×2 class-conditional
    transition matrices T_l[clean, observed], ρ+_l = T_l[1,0] = P(ỹ=0|y=1),
    ρ−_l = T_l[0,1] = P(ỹ=1|y=0), then forward correction of BCE.

    Estimator (`fit`). The paper's idea, as we implement it: noisy label l is not identifiable
    from its own posterior without anchor points, but its noise is identifiable through a
    correlated label j. For independent, class-conditional flips, ỹ_j ⟂ ỹ_l | y_l, so the noisy
    bilabel occurrence factorises

        M_jl[a, b] = P(ỹ_j = a, ỹ_l = b) = Σ_v P(ỹ_j = a | y_l = v) · P(y_l = v, ỹ_l = b)
        i.e.  M_jl = A_j|l · X_l,   X_l = diag(P(y_l)) · T_l                      (2×2 each)

    - M_jl: counted from the observed labels of all N instances.
    - A_j|l[a, v] = P(ỹ_j = a | y_l = v): counted over instances *selected as clean for label
      l* (sample selection on the warm-up model: the prediction agrees with the observed label,
      σ-confidence ≥ ``confidence``), where y_l is taken to be ỹ_l. Only label l needs clean
      instances; ỹ_j stays noisy.
    - X_l = A_j|l⁻¹ M_jl (least squares over the ``num_partners`` partners when > 1); its row
      sums are P(y_l = v), so T_l = X_l with rows normalised. Rates are clipped to
      [0, ``max_rate``] (0.49) and T_l rebuilt from the clipped rates.
    - Partner j of label l = the label with the largest |A_j|l[1,1] − A_j|l[1,0]|
      = |P(ỹ_j=1|y_l=1) − P(ỹ_j=1|y_l=0)|, i.e. the most correlated label in exactly the sense
      that makes A invertible. A label whose best separation is < ``min_separation``, whose
      selected class sets have < ``min_count`` instances, or whose solution has a non-positive
      class prior keeps the identity matrix (logged).

    From the paper (abstract, as we recall it): noisy bilabel occurrence, sample selection for
    the occurrence of a noisy label given a clean label, solving a bilinear decomposition, no
    anchor points. Our reconstruction: the closed-form 2×2 solve above, the agreement-based
    selection rule, the partner choice and the fallbacks; the paper's own selection method
    and any joint optimisation over all pairs may differ.

    API: ``MultiTransition.estimate(probabilities N×L, observed N×L) -> MultiTransition``
    (or ``MultiTransition(num_labels).fit(...)``); ``matrices`` L×2×2 float64;
    ``__call__(logits, targets, reduction="mean")`` = `forward_corrected_bce` with them.
    """

    num_labels: int
    confidence: float = 0.5
    num_partners: int = 1
    min_count: int = 20
    min_separation: float = 0.05
    max_rate: float = 0.49
    matrices: np.ndarray = field(default=None)           # L×2×2, identity until fitted
    partners: np.ndarray = field(default=None)           # L×num_partners, −1 where none
    fitted: bool = False

    def __post_init__(self) -> None:
        if self.num_labels < 1:
            raise ValueError(f"MultiTransition: num_labels = {self.num_labels}, expected >= 1")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"MultiTransition: confidence = {self.confidence!r}, expected in [0.5, 1)")
        if self.num_partners < 1:
            raise ValueError(f"MultiTransition: num_partners = {self.num_partners}, expected >= 1")
        if not 0.0 < self.max_rate < 0.5:
            raise ValueError(f"MultiTransition: max_rate = {self.max_rate!r}, expected in (0, 0.5)")
        if self.matrices is None:
            self.matrices = np.tile(np.eye(2), (self.num_labels, 1, 1))
        if self.partners is None:
            self.partners = np.full((self.num_labels, self.num_partners), -1, dtype=np.int64)

    # -- rates ------------------------------------------------------------------------
    @property
    def rho_positive(self) -> np.ndarray:
        """L: estimated P(ỹ = 0 | y = 1)."""
        return self.matrices[:, 1, 0].copy()

    @property
    def rho_negative(self) -> np.ndarray:
        """L: estimated P(ỹ = 1 | y = 0)."""
        return self.matrices[:, 0, 1].copy()

    # -- estimation ---------------------------------------------------------------------
    @classmethod
    def estimate(cls, probabilities: np.ndarray | torch.Tensor, observed: np.ndarray | torch.Tensor,
                 **options) -> "MultiTransition":
        """probabilities N×L (warm-up model on the train set), observed N×L in {0,1} -> fitted."""
        observed_array = np.asarray(observed.detach().cpu() if isinstance(observed, torch.Tensor)
                                    else observed)
        if observed_array.ndim != 2:
            raise ValueError(f"MultiTransition.estimate: observed must be N×L, got shape "
                             f"{observed_array.shape}")
        return cls(num_labels=observed_array.shape[1], **options).fit(probabilities, observed_array)

    def fit(self, probabilities: np.ndarray | torch.Tensor,
            observed: np.ndarray | torch.Tensor) -> "MultiTransition":
        """Estimate ``matrices`` (see the class docstring). Returns self."""
        probabilities, observed = self._validated(probabilities, observed)
        num_instances, num_labels = observed.shape

        predicted_positive = probabilities >= 0.5
        confident = np.maximum(probabilities, 1.0 - probabilities) >= self.confidence
        agrees = predicted_positive == (observed == 1)
        selected = [(agrees & confident & (observed == value)).astype(np.float64) for value in (0, 1)]
        counts = np.stack([s.sum(axis=0) for s in selected], axis=1)          # L×2 per label l, v

        noisy = observed.astype(np.float64)
        # conditional[v][j, l] = P(ỹ_j = 1 | y_l = v) on the selected-clean instances of label l
        with np.errstate(invalid="ignore", divide="ignore"):
            conditional = [(noisy.T @ selected[v]) / counts[:, v][None, :] for v in (0, 1)]
        joint_11 = (noisy.T @ noisy) / num_instances                          # P(ỹ_j=1, ỹ_l=1)
        marginal = noisy.mean(axis=0)                                          # P(ỹ = 1)

        separation = np.abs(conditional[1] - conditional[0])
        np.fill_diagonal(separation, -np.inf)
        separation = np.nan_to_num(separation, nan=-np.inf)

        rho_positive = np.zeros(num_labels)
        rho_negative = np.zeros(num_labels)
        partners = np.full((num_labels, self.num_partners), -1, dtype=np.int64)
        for label in range(num_labels):                      # L is small (25): not a hot path
            if counts[label].min() < self.min_count or num_labels < 2:
                logger.info("MultiTransition: label %d keeps the identity (selected clean "
                            "counts %s < min_count %d)", label, counts[label].tolist(), self.min_count)
                continue
            order = np.argsort(-separation[:, label], kind="stable")[: self.num_partners]
            order = order[separation[order, label] >= self.min_separation]
            if order.size == 0:
                logger.info("MultiTransition: label %d keeps the identity (no partner with "
                            "separation >= %.3g)", label, self.min_separation)
                continue
            partners[label, : order.size] = order
            design, response = [], []
            for partner in order:
                a1 = np.array([conditional[0][partner, label], conditional[1][partner, label]])
                design.append(np.stack([1.0 - a1, a1]))                       # rows a = 0, 1
                m11 = joint_11[partner, label]
                m01 = marginal[label] - m11                                    # ỹ_j=0, ỹ_l=1
                m10 = marginal[partner] - m11                                  # ỹ_j=1, ỹ_l=0
                m00 = 1.0 - m11 - m01 - m10
                response.append(np.array([[m00, m01], [m10, m11]]))
            solution, *_ = np.linalg.lstsq(np.concatenate(design), np.concatenate(response),
                                           rcond=None)                        # X_l, rows v
            priors = solution.sum(axis=1)
            if not np.all(priors > 1e-6):
                logger.info("MultiTransition: label %d keeps the identity (non-positive class "
                            "prior %s in the solution)", label, priors.tolist())
                continue
            transition = solution / priors[:, None]
            rho_negative[label] = transition[0, 1]
            rho_positive[label] = transition[1, 0]
        rho_positive = np.clip(np.nan_to_num(rho_positive), 0.0, self.max_rate)
        rho_negative = np.clip(np.nan_to_num(rho_negative), 0.0, self.max_rate)
        self.matrices = _transition_from_rates(rho_positive, rho_negative)
        self.partners = partners
        self.fitted = True
        logger.info("MultiTransition fitted: rho_pos %s rho_neg %s",
                    np.round(rho_positive, 3).tolist(), np.round(rho_negative, 3).tolist())
        return self

    def _validated(self, probabilities, observed) -> tuple[np.ndarray, np.ndarray]:
        def to_numpy(value):
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            return np.asarray(value)

        probabilities = to_numpy(probabilities).astype(np.float64)
        observed = to_numpy(observed)
        if probabilities.shape != observed.shape or observed.ndim != 2:
            raise ValueError(f"MultiTransition.fit: probabilities {probabilities.shape} and "
                             f"observed {observed.shape} must be equal N×L matrices")
        if observed.shape[1] != self.num_labels:
            raise ValueError(f"MultiTransition.fit: observed has {observed.shape[1]} labels, "
                             f"expected num_labels = {self.num_labels}")
        if not np.all(np.isfinite(probabilities)) or probabilities.min(initial=0.0) < 0 \
                or probabilities.max(initial=0.0) > 1:
            raise ValueError("MultiTransition.fit: probabilities must be finite and lie in [0, 1]")
        if not np.all((observed == 0) | (observed == 1)):
            bad = np.argwhere((observed != 0) & (observed != 1))[0]
            raise ValueError(f"MultiTransition.fit: observed must be 0/1; row {bad[0]}, label "
                             f"{bad[1]} holds {observed[bad[0], bad[1]]!r}")
        return probabilities, observed.astype(np.int64)

    # -- loss ---------------------------------------------------------------------------
    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, *,
                 reduction: str = "mean") -> torch.Tensor:
        return forward_corrected_bce(logits, targets, self.matrices, reduction=reduction)


def pair_loss_for(config: "TrialConfig", method: str | None = None) -> Callable[..., torch.Tensor]:
    """The pair loss of ``method`` (default ``config.method``) with the configured
    hyperparameters bound (METHOD §11), both from its registry record (``loss``, ``loss_fields``;
    `miracl_grid.trainables.registry`): call it as ``loss(logits, targets, reduction=...)``
    (MLLSC also takes ``correction=``). MultiT is stateful: use `MultiTransition`."""
    name = config.method if method is None else method
    record = METHODS.get(name)
    if record is None or not record.loss:
        raise ValueError(f"config field 'method' = {name!r}: no pair loss; expected one of "
                         f"{[n for n, r in METHODS.items() if r.loss]} (MultiT: use MultiTransition)")
    bound = {keyword: getattr(config, field_name) for keyword, field_name in record.loss_fields.items()}
    return functools.partial(record.loss_function(), **bound)
