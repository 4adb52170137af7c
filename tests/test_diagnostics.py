"""miracl_grid.trainables.diagnostics: every mechanism diagnostic against a hand-computed case."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from miracl_grid.trainables.diagnostics import (class_selection_metrics, correction_error_metrics, memorisation_metrics,
                                    roc_auc, same_patient_share, selection_signal_aucs)
from miracl_grid.trainables.gmm import CLEAN, NOISY, UNCERTAIN

# 3 instances × 2 labels. clean y, observed ỹ (flips at (0,0) 1→0, (1,1) 0→1, (2,0) 1→0)
CLEAN_Y = torch.tensor([[1., 0.], [0., 0.], [1., 1.]])
OBSERVED = torch.tensor([[0., 0.], [0., 1.], [0., 1.]])
FLIPPED = OBSERVED != CLEAN_Y
P = torch.tensor([[0.9, 0.2], [0.1, 0.7], [0.3, 0.8]])


def test_memorisation_shares_by_hand():
    # fits ỹ: (0,0) 0.9 vs 0 no; (0,1) yes; (1,0) yes; (1,1) 0.7 vs 1 yes; (2,0) 0.3 vs 0 yes; (2,1) yes
    metrics = memorisation_metrics(P, OBSERVED, FLIPPED)
    assert metrics["correction/fit_flipped"] == pytest.approx(2 / 3)       # (1,1) and (2,0) memorised, (0,0) not
    assert metrics["correction/fit_clean"] == pytest.approx(1.0)
    assert math.isnan(memorisation_metrics(P, CLEAN_Y, torch.zeros_like(FLIPPED))["correction/fit_flipped"])


def test_correction_error_metrics_by_hand():
    corrected = torch.tensor([[0.8, 0.0], [0.0, 0.4], [0.0, 1.0]])
    metrics = correction_error_metrics(corrected, OBSERVED, CLEAN_Y, FLIPPED, P)
    # flipped & observed negative: (0,0) p=0.9 → 1 = y ✓; (2,0) p=0.3 → 0 ≠ 1 ✗ → 1/2
    assert metrics["correction/prediction_accuracy_noisy_negative"] == pytest.approx(0.5)
    # flipped & observed positive: (1,1) p=0.7 → 1 ≠ 0 ✗
    assert metrics["correction/prediction_accuracy_noisy_positive"] == 0.0
    assert metrics["correction/soft_error_observed"] == pytest.approx(3 / 6)
    errors = np.array([0.2, 0.0, 0.0, 0.4, 1.0, 0.0])
    assert metrics["correction/soft_error_corrected"] == pytest.approx(errors.mean())
    assert metrics["correction/soft_error_corrected_flipped"] == pytest.approx((0.2 + 0.4 + 1.0) / 3)
    assert metrics["correction/soft_error_corrected_clean"] == pytest.approx(0.0)
    empty = correction_error_metrics(None, OBSERVED, CLEAN_Y, FLIPPED, P)
    assert math.isnan(empty["correction/soft_error_corrected"])
    assert empty["correction/soft_error_observed"] == pytest.approx(0.5)


def test_class_selection_metrics_by_hand():
    partition = torch.tensor([[NOISY, CLEAN], [UNCERTAIN, NOISY], [CLEAN, CLEAN]])
    candidates = torch.tensor([[True, False], [True, False], [False, False]])
    metrics = class_selection_metrics(partition, OBSERVED, FLIPPED, candidates)
    # observed positives: (1,1) flipped noisy, (2,1) clean not flipped → flip rate 1/2
    assert metrics["correction/flip_rate_pos"] == pytest.approx(0.5)
    assert metrics["correction/noisy_share_pos"] == pytest.approx(0.5)
    assert metrics["correction/noisy_set_precision_pos"] == 1.0
    assert metrics["correction/noisy_set_recall_pos"] == 1.0
    assert (metrics["correction/size_clean_pos"], metrics["correction/size_uncertain_pos"],
            metrics["correction/size_noisy_pos"]) == (1, 0, 1)
    # observed negatives: (0,0) flipped noisy, (0,1) clean, (1,0) uncertain, (2,0) flipped clean
    assert metrics["correction/flip_rate_neg"] == pytest.approx(2 / 4)
    assert metrics["correction/noisy_share_neg"] == pytest.approx(1 / 4)
    assert metrics["correction/noisy_set_precision_neg"] == 1.0
    assert metrics["correction/noisy_set_recall_neg"] == pytest.approx(1 / 2)
    assert (metrics["correction/size_clean_neg"], metrics["correction/size_uncertain_neg"],
            metrics["correction/size_noisy_neg"]) == (2, 1, 1)
    assert metrics["correction/negatives_in_z_minus"] == pytest.approx(2 / 4)
    without = class_selection_metrics(None, OBSERVED, FLIPPED)
    assert without["correction/flip_rate_neg"] == pytest.approx(0.5)
    assert math.isnan(without["correction/noisy_set_precision_pos"])
    assert math.isnan(without["correction/negatives_in_z_minus"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    target = rng.random(300) < 0.3
    score = np.round(rng.normal(size=300) + target, 1)           # rounding makes many ties
    assert roc_auc(score, target) == pytest.approx(roc_auc_score(target, score), abs=1e-12)
    assert math.isnan(roc_auc(score, np.zeros(300, dtype=bool)))


def test_roc_auc_by_hand():
    # positives {0.9, 0.4}, negatives {0.5, 0.4}: pairs (0.9>0.5) 1, (0.9>0.4) 1, (0.4<0.5) 0, tie ½ → 2.5/4
    assert roc_auc(np.array([0.9, 0.4, 0.5, 0.4]), np.array([True, True, False, False])) == pytest.approx(0.625)


def test_selection_signal_aucs_are_within_observed_class():
    # signal = p: observed negatives (0,0)p.9 F,(0,1)p.2 C,(1,0)p.1 C,(2,0)p.3 F → AUC 1;
    # observed positives (1,1)p.7 F,(2,1)p.8 C → AUC 0
    metrics = selection_signal_aucs({"bce": P, "z_tilde": None}, OBSERVED, FLIPPED)
    assert metrics["correction/auc_bce_neg"] == 1.0
    assert metrics["correction/auc_bce_pos"] == 0.0
    assert math.isnan(metrics["correction/auc_z_tilde_pos"]) and math.isnan(metrics["correction/auc_z_tilde_neg"])
    positive = (OBSERVED > 0.5).numpy().reshape(-1)
    for suffix, within in (("pos", positive), ("neg", ~positive)):
        expected = roc_auc_score(FLIPPED.numpy().reshape(-1)[within], P.numpy().reshape(-1)[within])
        assert metrics[f"correction/auc_bce_{suffix}"] == pytest.approx(expected)


def test_same_patient_share_by_hand():
    patients = np.array([7, 7, 8, 9, 9, 9])
    # batch [0, 2, 3]: no pair; batch [1, 4, 5]: 4 and 5 share patient 9 → 2 of 6 stays
    assert same_patient_share([np.array([0, 2, 3]), np.array([1, 4, 5])], patients) == pytest.approx(2 / 6)
    assert same_patient_share([np.arange(6)], patients) == pytest.approx(5 / 6)
    assert math.isnan(same_patient_share([], patients))
