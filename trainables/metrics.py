"""Evaluation metrics of METHOD §8: test-set classification metrics and correction diagnostics.

- `classification_metrics` (scikit-learn, on the gathered clean test predictions):
  mAP: mean over labels of `average_precision_score`; a label with no positive in the test
  set is skipped and counted (`labels_without_positive`).
  F1: micro F1 of `p > 0.5` over all pairs; F1_class: macro F1 over labels.
- `correction_diagnostics`: the ``correction/*`` columns (Fig. 4), which compare MIRACL's
  corrected labels and partition with the *clean* train labels. It is evaluation code that
  the training loop calls outside the method; no method ever sees the clean labels.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score

from miracl_grid.trainables.gmm import CLEAN, NOISY, UNCERTAIN

CORRECTION_METRIC_NAMES = (
    "correction/accuracy_corrected",
    "correction/accuracy_observed",
    "correction/accuracy_clean_pairs",
    "correction/accuracy_noisy_corrected",
    "correction/accuracy_noisy_uncorrected",
    "correction/accuracy_clean_positive",
    "correction/accuracy_clean_negative",
    "correction/accuracy_noisy_positive",
    "correction/accuracy_noisy_negative",
    "correction/size_clean",
    "correction/size_uncertain",
    "correction/size_noisy",
    "correction/noisy_set_recall",
    "correction/noisy_set_precision",
    "correction/active",
)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray,
                           threshold: float = 0.5) -> dict[str, float]:
    """probabilities, labels: N×L -> {"mAP", "F1", "F1_class", "labels_without_positive"}."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probabilities.shape != labels.shape or probabilities.ndim != 2:
        raise ValueError(f"probabilities {probabilities.shape} and labels {labels.shape} "
                         "must be equal N×L matrices")
    has_positive = labels.sum(axis=0) > 0
    if has_positive.any():
        per_label = average_precision_score(labels[:, has_positive], probabilities[:, has_positive],
                                            average=None)
        mean_ap = float(np.mean(per_label))
    else:
        mean_ap = float("nan")
    predictions = (probabilities > threshold).astype(np.int64)
    return {
        "mAP": mean_ap,
        "F1": float(f1_score(labels, predictions, average="micro", zero_division=0)),
        "F1_class": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "labels_without_positive": int((~has_positive).sum()),
    }


def _accuracy(agree: torch.Tensor, mask: torch.Tensor) -> float:
    total = int(mask.sum())
    return float((agree & mask).sum()) / total if total else math.nan


def correction_diagnostics(*, corrected: torch.Tensor | None, observed: torch.Tensor, clean: torch.Tensor,
                           flip_mask: torch.Tensor, partition: torch.Tensor | None,
                           predictions: torch.Tensor, active: bool | None = None) -> dict[str, float | int | bool]:
    """The ``correction/*`` columns of results.parquet over all train pairs (METHOD §8, Fig. 4;
    ARCHITECTURE §8). Inputs N×L.

    corrected    soft corrected labels (hard = corrected > 0.5), or None for a method/epoch
                 without correction (then every corrected-label metric and the set sizes are NaN)
    observed     observed noisy labels; clean: clean labels; flip_mask: observed != clean
    partition    0/1/2 sets (Eq. 3) or None
    predictions  model probabilities p (hard = p > 0.5), for accuracy_noisy_uncorrected
    active       correction applied this epoch (default: corrected is not None)

    accuracy_{clean,noisy}_{positive,negative}: corrected == clean on the not-flipped /
    flipped pairs whose *observed* label is positive / negative. noisy_set_recall =
    |noisy set ∩ flipped| / |flipped|, precision = |noisy set ∩ flipped| / |noisy set|.
    Empty denominators give NaN.
    """
    observed_positive = observed > 0.5
    clean_positive = clean > 0.5
    flipped = flip_mask.bool()
    if not torch.equal(flipped, observed_positive != clean_positive):
        raise ValueError("correction_diagnostics: flip_mask must equal (observed != clean)")
    everything = torch.ones_like(flipped)
    metrics: dict[str, float | int | bool] = {name: math.nan for name in CORRECTION_METRIC_NAMES}
    metrics["correction/accuracy_observed"] = _accuracy(observed_positive == clean_positive, everything)
    metrics["correction/accuracy_noisy_uncorrected"] = _accuracy((predictions > 0.5) == clean_positive, flipped)
    if corrected is not None:
        agree = (corrected > 0.5) == clean_positive
        metrics["correction/accuracy_corrected"] = _accuracy(agree, everything)
        metrics["correction/accuracy_clean_pairs"] = _accuracy(agree, ~flipped)
        metrics["correction/accuracy_noisy_corrected"] = _accuracy(agree, flipped)
        metrics["correction/accuracy_clean_positive"] = _accuracy(agree, ~flipped & observed_positive)
        metrics["correction/accuracy_clean_negative"] = _accuracy(agree, ~flipped & ~observed_positive)
        metrics["correction/accuracy_noisy_positive"] = _accuracy(agree, flipped & observed_positive)
        metrics["correction/accuracy_noisy_negative"] = _accuracy(agree, flipped & ~observed_positive)
    if partition is not None:
        noisy_set = partition == NOISY
        metrics["correction/size_clean"] = int((partition == CLEAN).sum())
        metrics["correction/size_uncertain"] = int((partition == UNCERTAIN).sum())
        metrics["correction/size_noisy"] = int(noisy_set.sum())
        metrics["correction/noisy_set_recall"] = _accuracy(noisy_set, flipped)
        metrics["correction/noisy_set_precision"] = _accuracy(flipped, noisy_set)
    metrics["correction/active"] = bool(corrected is not None) if active is None else bool(active)
    return metrics
