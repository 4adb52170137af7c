"""Metrics against scikit-learn on fixed arrays and hand-computed cases (METHOD §8)."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from miracl_grid.trainables import correction
from miracl_grid.trainables.gmm import CLEAN, NOISY, UNCERTAIN
from miracl_grid.trainables.metrics import CORRECTION_METRIC_NAMES, classification_metrics, correction_diagnostics


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


# --- correction diagnostics (METHOD §8) ---------------------------------------------------------------------------------
CLEAN_LABELS = torch.tensor([[1, 0, 0], [0, 1, 1]])
NOISY_LABELS = torch.tensor([[1, 1, 0], [0, 0, 1]])       # flips: (0,1) 0→1, (1,1) 1→0
FLIPS = NOISY_LABELS != CLEAN_LABELS


def test_correction_diagnostics_hand_computed():
    corrected = torch.tensor([[0.9, 0.3, 0.6], [0.2, 0.7, 0.4]])       # hard [[1,0,1],[0,1,0]]
    partition = torch.tensor([[CLEAN, NOISY, UNCERTAIN], [CLEAN, NOISY, NOISY]])
    predictions = torch.tensor([[0.8, 0.7, 0.1], [0.3, 0.2, 0.9]])     # hard [[1,1,0],[0,0,1]]
    metrics = correction_diagnostics(corrected=corrected, observed=NOISY_LABELS, clean=CLEAN_LABELS, flip_mask=FLIPS,
                                     partition=partition, predictions=predictions)
    assert set(metrics) == set(CORRECTION_METRIC_NAMES)
    expected = {
        "correction/accuracy_corrected": 4 / 6, "correction/accuracy_observed": 4 / 6,
        "correction/accuracy_clean_pairs": 0.5, "correction/accuracy_noisy_corrected": 1.0,
        "correction/accuracy_noisy_uncorrected": 0.0,
        "correction/accuracy_clean_positive": 0.5, "correction/accuracy_clean_negative": 0.5,
        "correction/accuracy_noisy_positive": 1.0, "correction/accuracy_noisy_negative": 1.0,
        "correction/size_clean": 2, "correction/size_uncertain": 1, "correction/size_noisy": 3,
        "correction/noisy_set_recall": 1.0, "correction/noisy_set_precision": 2 / 3,
        "correction/active": True,
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), name


def test_correction_diagnostics_without_correction_reports_only_observed_and_model():
    predictions = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.9, 0.9]])     # flipped pairs predicted correctly
    metrics = correction_diagnostics(corrected=None, observed=NOISY_LABELS, clean=CLEAN_LABELS, flip_mask=FLIPS,
                                     partition=None, predictions=predictions)
    assert metrics["correction/accuracy_observed"] == pytest.approx(4 / 6)
    assert metrics["correction/accuracy_noisy_uncorrected"] == 1.0
    assert metrics["correction/active"] is False
    for name in CORRECTION_METRIC_NAMES:
        if name not in ("correction/accuracy_observed", "correction/accuracy_noisy_uncorrected",
                        "correction/active"):
            assert math.isnan(metrics[name]), name


def test_correction_diagnostics_checks_flip_mask_and_empty_sets_are_nan():
    with pytest.raises(ValueError, match="flip_mask"):
        correction_diagnostics(corrected=None, observed=NOISY_LABELS, clean=CLEAN_LABELS, flip_mask=~FLIPS,
                               partition=None, predictions=torch.zeros(2, 3))
    no_flips = torch.zeros(2, 3, dtype=torch.bool)
    metrics = correction_diagnostics(corrected=CLEAN_LABELS.float(), observed=CLEAN_LABELS, clean=CLEAN_LABELS,
                                     flip_mask=no_flips, partition=torch.zeros(2, 3, dtype=torch.int8),
                                     predictions=torch.zeros(2, 3))
    assert math.isnan(metrics["correction/accuracy_noisy_corrected"])
    assert math.isnan(metrics["correction/noisy_set_precision"])   # empty noisy set
    assert math.isnan(metrics["correction/noisy_set_recall"])      # no flipped pairs
    assert metrics["correction/accuracy_corrected"] == 1.0


def test_diagnostics_live_with_the_metrics_not_beside_the_method():
    """The method module has no function that sees clean labels; diagnostics take keywords only."""
    assert not hasattr(correction, "correction_diagnostics")
    with pytest.raises(TypeError):
        correction_diagnostics(None, NOISY_LABELS, CLEAN_LABELS, FLIPS, None, torch.zeros(2, 3))
