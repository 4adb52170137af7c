"""MIRACL's joint label correction (paper Eqs. 4–8 = 12–14, Appendix D; METHOD §5).

The method only ever sees the *observed* (noisy) labels ỹ, the model probabilities p, the
selection metric Z̃ and the GMM partition. The evaluation of a correction against the clean
labels (`miracl_grid.trainables.metrics.correction_diagnostics`) lives with the other metrics, outside
the method.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from miracl_grid.trainables.gmm import NOISY, UNCERTAIN

EPSILON = 1e-6
COOCCURRENCE_DENOMINATORS = ("off_diagonal", "all_labels")



class CorrectionError(ValueError):
    """Bad input to the correction (the message names the argument)."""


class CorrectionResult(NamedTuple):
    """corrected: float32 N×L soft labels in [0, 1] (Eqs. 7–8);
    uncertainty: float32 N×L, U of Eq. 4 (clipped to [0, 1]);
    negative_candidates: bool N×L, observed negatives inside Z⁻ (Eq. 6);
    support: float32 N×L, S = Ỹ·C."""
    corrected: torch.Tensor
    uncertainty: torch.Tensor
    negative_candidates: torch.Tensor
    support: torch.Tensor


def cooccurrence_matrix(observed: torch.Tensor, denominator: str = "off_diagonal") -> torch.Tensor:
    """Label co-occurrence matrix C of Appendix D from observed labels. N×L {0,1} → float64 L×L.

    C_kk = 0 and, for k ≠ j, C_kj = K_kj / Σ_{b≠k} K_kb with K = ỸᵀỸ (co-occurrence counts),
    so every row with any co-occurrence sums to 1 and an all-zero row stays zero (METHOD §5,
    the default ``denominator="off_diagonal"``). ``denominator="all_labels"`` is Appendix D
    taken literally, Σ_b over all b including b = k (then rows sum to < 1).
    """
    if observed.dim() != 2:
        raise CorrectionError(f"cooccurrence_matrix: expected observed labels N×L, got {tuple(observed.shape)}")
    if denominator not in COOCCURRENCE_DENOMINATORS:
        raise CorrectionError(f"cooccurrence_matrix: denominator {denominator!r}, "
                              f"expected one of {COOCCURRENCE_DENOMINATORS}")
    labels = (observed > 0.5).to(torch.float64)
    counts = labels.T @ labels
    off_diagonal = counts - torch.diag(torch.diag(counts))
    totals = (off_diagonal if denominator == "off_diagonal" else counts).sum(1, keepdim=True)
    return torch.where(totals > 0, off_diagonal / totals.clamp(min=1), torch.zeros_like(off_diagonal))


def label_support(observed: torch.Tensor, cooccurrence: torch.Tensor) -> torch.Tensor:
    """S = Ỹ·C (Eq. 6): how strongly each label is supported by the instance's observed labels. N×L → N×L."""
    return (observed > 0.5).to(cooccurrence.dtype) @ cooccurrence


def uncertainty_score(z_tilde: torch.Tensor, mean_clean: torch.Tensor, mean_noisy: torch.Tensor,
                      epsilon: float = EPSILON) -> torch.Tensor:
    """U = clip((Z̃ − μ_clean)/(μ_noisy − μ_clean + ε), 0, 1) (Eq. 4). N×L each → N×L."""
    return ((z_tilde - mean_clean) / (mean_noisy - mean_clean + epsilon)).clamp(0.0, 1.0)


def correct_labels(*, observed: torch.Tensor, probabilities: torch.Tensor, z_tilde: torch.Tensor,
                   partition: torch.Tensor, mean_clean: torch.Tensor, mean_noisy: torch.Tensor,
                   tau: float, cooccurrence: torch.Tensor | None = None,
                   epsilon: float = EPSILON) -> CorrectionResult:
    """Corrected soft labels for the next epoch (Eqs. 4–8 / 12–14; METHOD §5). All inputs N×L.

    observed       {0,1} observed (noisy) labels ỹ — always the observed ones (no compounding)
    probabilities  model probabilities p (detached here)
    z_tilde        selection metric Z̃ (Eq. 2)
    partition      int 0 clean / 1 uncertain / 2 noisy (Eq. 3; `GroupMixtures.partition`)
    mean_clean, mean_noisy  per-pair μ_clean, μ_noisy of the pair's group
                   (`GroupMixtures.pair_means(group_id)`; NaN is fine where partition is clean)
    tau            threshold of Z⁻ = {S > τ} (Eq. 6)
    cooccurrence   C (L×L); None → `cooccurrence_matrix(observed)`

    y_soft = U·p + (1−U)·ỹ (Eq. 5). Observed positives: clean → ỹ (=1), uncertain → y_soft,
    noisy → p (Eq. 8). Observed negatives inside Z⁻: clean → 0, uncertain → y_soft, noisy →
    p (Eq. 7); outside Z⁻ they stay 0.
    """
    shape = observed.shape
    for name, tensor in (("probabilities", probabilities), ("z_tilde", z_tilde), ("partition", partition),
                         ("mean_clean", mean_clean), ("mean_noisy", mean_noisy)):
        if tensor.shape != shape:
            raise CorrectionError(f"correct_labels: {name} has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(shape)} like observed")
    positive = observed > 0.5
    labels = positive.to(torch.float64)
    p = probabilities.detach().to(torch.float64)
    if cooccurrence is None:
        cooccurrence = cooccurrence_matrix(observed)
    support = label_support(observed, cooccurrence.to(torch.float64))
    uncertainty = uncertainty_score(z_tilde.to(torch.float64), mean_clean.to(torch.float64),
                                    mean_noisy.to(torch.float64), epsilon)
    soft = uncertainty * p + (1.0 - uncertainty) * labels
    by_set = torch.where(partition == NOISY, p, torch.where(partition == UNCERTAIN, soft, labels))
    candidates = ~positive & (support > tau)
    corrected = torch.where(positive | candidates, by_set, torch.zeros_like(by_set))
    return CorrectionResult(corrected=corrected.float(), uncertainty=uncertainty.nan_to_num(0.0).float(),
                            negative_candidates=candidates, support=support.float())
