"""Test-set metrics of METHOD §8, computed with scikit-learn on the gathered test predictions.

- mAP: mean over labels of `average_precision_score`; a label with no positive in the test
  set is skipped and counted (`labels_without_positive`).
- F1: micro F1 of `p > 0.5` over all pairs; F1_class: macro F1 over labels.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score


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
