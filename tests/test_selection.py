"""Tests of miracl_grid.trainables.selection (METHOD §3, Eq. 2): oriented rank, group normalisation, Z̃."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from miracl_grid.trainables.selection import (SelectionError, group_class, group_ids, group_label, group_normalise,
                                  label_ranks, oriented_rank, selection_metric)


def reference_metric(probabilities, observed, difficulty, alpha, signal="rank_difficulty", bce=None):
    """Per-pair / per-group Python loops with scipy ranks (independent of the vectorised code)."""
    n, labels = probabilities.shape
    rank = np.zeros((n, labels))
    for i in range(n):
        # rank 1 = most confident; ties: lower label index first ("ordinal" on −p is stable)
        rank[i] = rankdata(-probabilities[i], method="ordinal")
    oriented = np.where(observed == 1, rank, labels + 1 - rank)

    def normalise(values, epsilon=0.0):
        out = np.zeros_like(values, dtype=float)
        for label in range(labels):
            for cls in (0, 1):
                rows = observed[:, label] == cls
                if not rows.any():
                    continue
                group = values[rows, label]
                span = group.max() - group.min() + epsilon
                out[rows, label] = (group - group.min()) / span if span > 0 else 0.0
        return out

    if signal == "loss":
        z = normalise(bce)
    else:
        z = alpha * normalise(oriented) + (1 - alpha) * normalise(difficulty)
    return normalise(z, 1e-6)


def test_label_ranks_and_orientation_hand_computed():
    probabilities = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.3, 0.8]])
    observed = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert label_ranks(probabilities).tolist() == [[1, 3, 2], [2, 3, 1]]  # tie 0.3/0.3 → label 0 first
    # positives keep r, negatives get L + 1 − r (L = 3)
    assert oriented_rank(probabilities, observed).tolist() == [[1, 3, 2], [2, 3, 1]]
    observed_flipped = 1 - observed
    assert oriented_rank(probabilities, observed_flipped).tolist() == [[3, 1, 2], [2, 1, 3]]


def test_group_ids_layout():
    observed = torch.tensor([[1, 0, 1], [0, 0, 1]])
    groups = group_ids(observed)
    assert groups.tolist() == [[1, 2, 5], [0, 2, 5]]
    assert group_label(groups).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert group_class(groups).tolist() == observed.tolist()


def test_group_normalise_hand_computed_and_constant_group():
    values = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    groups = torch.tensor([[0, 1], [0, 1], [0, 1]])
    result = group_normalise(values, groups, 2)
    assert result.tolist() == [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]
    with_epsilon = group_normalise(values, groups, 2, epsilon=1e-6)
    assert with_epsilon[2, 0].item() == pytest.approx(4.0 / (4.0 + 1e-6), abs=1e-15)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 0.25])
def test_selection_metric_matches_loop_reference(alpha):
    rng = np.random.default_rng(int(alpha * 100))
    n, labels = 300, 6
    probabilities = rng.random((n, labels)).round(2)  # rounding creates ties
    observed = (rng.random((n, labels)) < 0.3).astype(np.int64)
    observed[:, 5] = 0  # a label without observed positives: group (5, 1) is empty
    difficulty = rng.integers(-5, 6, size=(n, labels)).astype(float)
    result = selection_metric(torch.tensor(probabilities), torch.tensor(observed),
                              torch.tensor(difficulty), alpha)
    expected = reference_metric(probabilities, observed, difficulty, alpha)
    np.testing.assert_allclose(result.z_tilde.numpy(), expected, rtol=0, atol=1e-12)
    assert result.z_tilde.dtype == torch.float64
    assert torch.equal(result.group_id, group_ids(torch.tensor(observed)))
    assert float(result.z_tilde.min()) >= 0.0 and float(result.z_tilde.max()) < 1.0


def test_loss_signal_matches_loop_reference():
    rng = np.random.default_rng(7)
    probabilities = rng.random((100, 4))
    observed = (rng.random((100, 4)) < 0.4).astype(np.int64)
    bce = -(observed * np.log(probabilities) + (1 - observed) * np.log(1 - probabilities))
    result = selection_metric(torch.tensor(probabilities), torch.tensor(observed), None, 0.5,
                              signal="loss", bce=torch.tensor(bce))
    expected = reference_metric(probabilities, observed, None, 0.5, signal="loss", bce=bce)
    np.testing.assert_allclose(result.z_tilde.numpy(), expected, rtol=0, atol=1e-12)


def test_larger_z_means_less_consistent_with_the_observed_label():
    # One instance, observed positive on the most confident label and on the least confident one.
    probabilities = torch.tensor([[0.95, 0.6, 0.05]] * 2)
    observed = torch.tensor([[1, 0, 1], [0, 1, 0]])
    ranks = oriented_rank(probabilities, observed)
    assert ranks[0, 0] < ranks[0, 2]         # confident positive: small R; unlikely positive: large R
    assert ranks[1, 0] > ranks[1, 2]         # confident negative (p=0.05 on label 2): small R


def test_bad_arguments_are_rejected():
    probabilities = torch.rand(4, 3)
    observed = torch.zeros(4, 3)
    with pytest.raises(SelectionError, match="needs difficulty"):
        selection_metric(probabilities, observed, None, 0.5)
    with pytest.raises(SelectionError, match="signal"):
        selection_metric(probabilities, observed, None, 1.0, signal="rank")
    with pytest.raises(SelectionError, match="needs bce"):
        selection_metric(probabilities, observed, None, 1.0, signal="loss")
    with pytest.raises(SelectionError, match="alpha"):
        selection_metric(probabilities, observed, None, 1.5)
    # alpha = 1 (rank only) needs no difficulty
    assert selection_metric(probabilities, observed, None, 1.0).z_tilde.shape == (4, 3)


def test_reference_rank_orientation_keeps_r_for_both_classes_and_changes_z():
    probabilities = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.3, 0.8]])
    observed = torch.tensor([[1, 1, 0], [0, 1, 1]])
    # the public reference code: raw r (1 = most confident) for positives and negatives alike
    assert oriented_rank(probabilities, observed, "reference").tolist() == [[1, 3, 2], [2, 3, 1]]
    assert oriented_rank(1 - probabilities, observed, "reference").tolist() == [[3, 1, 2], [1, 2, 3]]
    with pytest.raises(SelectionError, match="orientation"):
        oriented_rank(probabilities, observed, "upside_down")
    generator = torch.Generator().manual_seed(3)
    p = torch.rand(40, 5, generator=generator, dtype=torch.float64)
    y = (torch.rand(40, 5, generator=generator) < 0.4).double()
    aware = selection_metric(p, y, difficulty=None, alpha=1.0).z_tilde
    plain = selection_metric(p, y, difficulty=None, alpha=1.0, rank_orientation="reference").z_tilde
    positive = y > 0.5
    assert torch.equal(aware[positive], plain[positive])          # positives: the same R
    # negatives: R ↦ L + 1 − R reverses the within-group order, so Z̃ ↦ (1 − Z̃)·(span/(span+ε))
    assert not torch.allclose(aware[~positive], plain[~positive])
    assert torch.allclose(aware[~positive] + plain[~positive], torch.ones_like(aware[~positive]), atol=1e-5)
