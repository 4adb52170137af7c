"""Tests of miracl_grid.trainables.correction (Eqs. 4–8, Appendix D, METHOD §5) on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miracl_grid.trainables.correction import (CorrectionError, cooccurrence_matrix, correct_labels, label_support,
                                   uncertainty_score)
from miracl_grid.trainables.gmm import CLEAN, NOISY, UNCERTAIN

# 3 instances × 3 labels, worked by hand:
#   K = ỸᵀỸ: K00=2 K01=1 K02=1 | K10=1 K11=2 K12=0 | K20=1 K21=0 K22=1
OBSERVED = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 0]])


def test_cooccurrence_off_diagonal_denominator_hand_computed():
    expected = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    result = cooccurrence_matrix(OBSERVED)
    assert torch.equal(result, expected)
    assert torch.equal(result.sum(1), torch.ones(3, dtype=torch.float64))


def test_cooccurrence_paper_literal_denominator_hand_computed():
    # Σ_b over all b (incl. b = k): row 0 / (2+1+1), row 1 / (1+2+0), row 2 / (1+0+1)
    expected = torch.tensor([[0.0, 0.25, 0.25], [1 / 3, 0.0, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(cooccurrence_matrix(OBSERVED, denominator="all_labels"), expected)


def test_cooccurrence_zero_rows_stay_zero_and_rows_sum_to_one():
    observed = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 1]])  # label 1 never, label 2 alone
    result = cooccurrence_matrix(observed)
    assert torch.equal(result[1], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(result[2], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(torch.diag(result), torch.zeros(4, dtype=torch.float64))
    rng = np.random.default_rng(0)
    dense = torch.tensor((rng.random((500, 12)) < 0.3).astype(np.int64))
    sums = cooccurrence_matrix(dense).sum(1)
    torch.testing.assert_close(sums, torch.ones(12, dtype=torch.float64))


def test_support_and_negative_candidates_hand_computed():
    support = label_support(OBSERVED, cooccurrence_matrix(OBSERVED))
    expected = torch.tensor([[1.0, 0.5, 0.5], [1.0, 0.5, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(support, expected)
    everything_clean = torch.zeros(3, 3, dtype=torch.int8)
    half = torch.full((3, 3), 0.5)
    for tau, candidates in ((0.02, [[0, 0, 1], [0, 1, 0], [1, 0, 0]]),
                            (0.6, [[0, 0, 0], [0, 0, 0], [1, 0, 0]])):
        result = correct_labels(observed=OBSERVED, probabilities=half, z_tilde=half, partition=everything_clean,
                                mean_clean=half * 0, mean_noisy=half * 0 + 1, tau=tau)
        assert result.negative_candidates.int().tolist() == candidates
        # all clean: positives keep 1, negatives (in or out of Z⁻) stay 0
        assert torch.equal(result.corrected, OBSERVED.float())


def test_each_correction_rule_hand_computed():
    probabilities = torch.tensor([[0.9, 0.2, 0.7], [0.6, 0.8, 0.3], [0.4, 0.1, 0.95]])
    z_tilde = torch.tensor([[0.1, 0.4, 0.7], [0.3, 0.5, 0.9], [0.65, 0.2, 0.9]], dtype=torch.float64)
    mean_clean = torch.full((3, 3), 0.2, dtype=torch.float64)
    mean_noisy = torch.full((3, 3), 0.6, dtype=torch.float64)
    partition = torch.tensor([[CLEAN, UNCERTAIN, NOISY], [UNCERTAIN, UNCERTAIN, NOISY], [NOISY, CLEAN, NOISY]],
                             dtype=torch.int8)
    result = correct_labels(observed=OBSERVED, probabilities=probabilities, z_tilde=z_tilde, partition=partition,
                            mean_clean=mean_clean, mean_noisy=mean_noisy, tau=0.02)

    def u(z):
        return min(max((z - 0.2) / (0.6 - 0.2 + 1e-6), 0.0), 1.0)

    expected = [
        [1.0,                                   # positive, clean → ỹ
         u(0.4) * 0.2 + (1 - u(0.4)) * 1.0,     # positive, uncertain → y_soft
         0.7],                                  # negative in Z⁻, noisy → p
        [u(0.3) * 0.6 + (1 - u(0.3)) * 1.0,     # positive, uncertain → y_soft
         u(0.5) * 0.8,                          # negative in Z⁻, uncertain → y_soft (ỹ = 0)
         0.3],                                  # positive, noisy → p
        [0.4,                                   # negative in Z⁻, noisy → p
         1.0,                                   # positive, clean → ỹ
         0.0]]                                  # negative outside Z⁻ (S = 0) → 0 although noisy
    torch.testing.assert_close(result.corrected, torch.tensor(expected, dtype=torch.float32))
    assert result.corrected.dtype == torch.float32
    torch.testing.assert_close(result.uncertainty[0, 1].item(), u(0.4))
    assert result.uncertainty[0, 0].item() == 0.0 and result.uncertainty[1, 2].item() == 1.0  # clipped


def test_negative_candidate_in_clean_set_is_zero_and_nan_means_of_fallback_are_harmless():
    probabilities = torch.full((3, 3), 0.9)
    z_tilde = torch.zeros(3, 3, dtype=torch.float64)
    nan = torch.full((3, 3), float("nan"), dtype=torch.float64)  # fallback groups: all clean, μ NaN
    result = correct_labels(observed=OBSERVED, probabilities=probabilities, z_tilde=z_tilde,
                            partition=torch.zeros(3, 3, dtype=torch.int8), mean_clean=nan, mean_noisy=nan, tau=0.02)
    assert torch.equal(result.corrected, OBSERVED.float())
    assert not torch.isnan(result.uncertainty).any()


def test_uncertainty_score_formula():
    z = torch.tensor([0.0, 0.3, 0.5, 0.9])
    result = uncertainty_score(z, torch.full((4,), 0.2), torch.full((4,), 0.6))
    torch.testing.assert_close(result, torch.tensor([0.0, 0.1 / (0.4 + 1e-6), 0.3 / (0.4 + 1e-6), 1.0]))


def test_shape_mismatch_is_rejected():
    with pytest.raises(CorrectionError, match="z_tilde"):
        correct_labels(observed=OBSERVED, probabilities=torch.rand(3, 3), z_tilde=torch.rand(2, 3),
                       partition=torch.zeros(3, 3), mean_clean=torch.zeros(3, 3), mean_noisy=torch.ones(3, 3),
                       tau=0.02)
    with pytest.raises(CorrectionError, match="denominator"):
        cooccurrence_matrix(OBSERVED, denominator="diagonal")


def test_correct_labels_takes_its_same_shape_tensors_by_keyword_only():
    """Seven N×L tensors in a row are easy to swap silently; positional calls are refused."""
    half = torch.full((3, 3), 0.5)
    with pytest.raises(TypeError):
        correct_labels(OBSERVED, half, half, torch.zeros(3, 3, dtype=torch.int8), half * 0, half + 0.5, 0.02)
