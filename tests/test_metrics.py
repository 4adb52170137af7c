"""Metrics against scikit-learn on fixed arrays and a hand-computed case."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from trainables.metrics import classification_metrics


def test_hand_computed_case():
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    probabilities = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.1], [0.3, 0.8]])
    # label 0: ranking 0.9(+), 0.6(-), 0.4(+), 0.3(-) -> AP = (1/1 + 2/3)/2 = 5/6
    # label 1: ranking 0.8(-), 0.7(+), ...            -> AP = 1/2
    # predictions >0.5: [[1,0],[1,1],[0,0],[0,1]] -> TP 2, FP 2, FN 1 -> micro F1 = 4/7
    # per-label F1: label0 TP1 FP1 FN1 -> 1/2; label1 TP1 FP1 FN0 -> 2/3 -> macro 7/12
    metrics = classification_metrics(probabilities, labels)
    assert metrics["mAP"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert metrics["F1"] == pytest.approx(4 / 7)
    assert metrics["F1_class"] == pytest.approx(7 / 12)
    assert metrics["labels_without_positive"] == 0


def test_matches_sklearn_and_skips_labels_without_positives():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 6)) < 0.3).astype(int)
    labels[:, 4] = 0  # no positive in the test set: skipped and counted
    probabilities = np.clip(labels * 0.3 + rng.random((200, 6)) * 0.7, 0, 1)
    metrics = classification_metrics(probabilities, labels)
    keep = [0, 1, 2, 3, 5]
    expected_map = np.mean([average_precision_score(labels[:, j], probabilities[:, j]) for j in keep])
    assert metrics["mAP"] == pytest.approx(expected_map)
    assert metrics["labels_without_positive"] == 1
    predictions = (probabilities > 0.5).astype(int)
    assert metrics["F1"] == pytest.approx(f1_score(labels, predictions, average="micro"))
    assert metrics["F1_class"] == pytest.approx(
        f1_score(labels, predictions, average="macro", zero_division=0))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="N×L"):
        classification_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
