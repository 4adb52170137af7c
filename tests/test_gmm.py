"""Tests of miracl_grid.trainables.gmm (Eq. 3, METHOD §4) against sklearn.mixture.GaussianMixture per group."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from miracl_grid.trainables.gmm import CLEAN, NOISY, UNCERTAIN, MixtureError, fit_group_mixtures


def bimodal(rng, size, low, high, share_high, spread):
    """Values in [0, 1]: a share around ``high`` and the rest around ``low``."""
    high_count = int(round(size * share_high))
    values = np.concatenate([rng.normal(low, spread, size - high_count), rng.normal(high, spread, high_count)])
    return np.clip(values, 0.0, 1.0)


def sklearn_fit(values):
    model = GaussianMixture(n_components=2, random_state=0).fit(values.reshape(-1, 1))
    order = np.argsort(model.means_.ravel())
    return model.means_.ravel()[order], model.covariances_.ravel()[order], model.weights_[order]


def ragged(groups):
    """Concatenate per-group arrays into (values, group ids), shuffled."""
    values = np.concatenate(groups)
    ids = np.concatenate([np.full(len(g), index) for index, g in enumerate(groups)])
    order = np.random.default_rng(0).permutation(len(values))
    return torch.tensor(values[order]), torch.tensor(ids[order])


def test_means_variances_weights_match_sklearn_on_bimodal_groups_of_different_sizes():
    rng = np.random.default_rng(11)
    settings = [(60, 0.2, 0.8, 0.3, 0.08), (500, 0.3, 0.7, 0.5, 0.1), (3000, 0.15, 0.6, 0.2, 0.07),
                (12000, 0.25, 0.75, 0.1, 0.1), (800, 0.1, 0.5, 0.4, 0.06)]
    groups = [bimodal(rng, *setting) for setting in settings]
    values, ids = ragged(groups)
    result = fit_group_mixtures(values, ids, len(groups), seed=5)
    assert result.converged.all() and not result.fallback.any()
    assert result.counts.tolist() == [len(g) for g in groups]
    for index, group in enumerate(groups):
        means, variances, weights = sklearn_fit(group)
        np.testing.assert_allclose(result.means[index].numpy(), means, atol=2e-3)
        np.testing.assert_allclose(result.variances[index].numpy(), variances, rtol=0.05, atol=1e-4)
        np.testing.assert_allclose(result.weights[index].numpy(), weights, atol=5e-3)
    assert (result.means[:, 0] < result.means[:, 1]).all()


def test_overlapping_groups_still_match_sklearn_means():
    rng = np.random.default_rng(12)
    groups = [bimodal(rng, 4000, 0.3, 0.55, 0.35, 0.08), bimodal(rng, 2000, 0.2, 0.45, 0.5, 0.09)]
    values, ids = ragged(groups)
    result = fit_group_mixtures(values, ids, 2, seed=0)
    for index, group in enumerate(groups):
        np.testing.assert_allclose(result.means[index].numpy(), sklearn_fit(group)[0], atol=0.02)


def test_partition_equals_sklearn_rule_on_well_separated_data():
    rng = np.random.default_rng(13)
    groups = [bimodal(rng, 2000, 0.2, 0.8, 0.25, 0.05), bimodal(rng, 700, 0.1, 0.9, 0.5, 0.04)]
    values, ids = ragged(groups)
    result = fit_group_mixtures(values, ids, 2, seed=1)
    for index, group in enumerate(groups):
        (mean_clean, mean_noisy), _, _ = sklearn_fit(group)
        members = values[ids == index].numpy()
        expected = np.where(members <= mean_clean, CLEAN, np.where(members >= mean_noisy, NOISY, UNCERTAIN))
        got = result.partition[ids == index].numpy()
        # same rule; only points within the 2e-3 mean tolerance of a threshold may differ
        near = (np.abs(members - mean_clean) < 2e-3) | (np.abs(members - mean_noisy) < 2e-3)
        assert near.mean() < 0.05
        assert (got[~near] == expected[~near]).all()


def test_partition_rule_is_eq3_relative_to_fitted_means():
    rng = np.random.default_rng(14)
    values, ids = ragged([bimodal(rng, 1000, 0.2, 0.7, 0.3, 0.08)])
    result = fit_group_mixtures(values, ids, 1, seed=2)
    mean_clean, mean_noisy = result.means[0].tolist()
    expected = torch.where(values <= mean_clean, CLEAN, torch.where(values >= mean_noisy, NOISY, UNCERTAIN))
    assert torch.equal(result.partition.long(), expected)
    sizes = result.set_sizes()
    assert sum(sizes.values()) == 1000 and min(sizes.values()) > 0


def test_partition_keeps_the_input_shape_and_pair_means():
    rng = np.random.default_rng(15)
    values = torch.tensor(rng.random((400, 3)))
    ids = torch.tensor(np.tile([0, 1, 2], (400, 1)))
    result = fit_group_mixtures(values, ids, 3, seed=3)
    assert result.partition.shape == (400, 3) and result.partition.dtype == torch.int8
    mean_clean, mean_noisy = result.pair_means(ids)
    assert torch.equal(mean_clean[:, 1], result.means[1, 0].expand(400))
    assert torch.equal(mean_noisy[:, 2], result.means[2, 1].expand(400))


def test_fallbacks_small_and_degenerate_groups_are_all_clean():
    rng = np.random.default_rng(16)
    groups = [bimodal(rng, 9, 0.2, 0.8, 0.3, 0.05),          # fewer than min_group = 10
              np.full(50, 0.3),                               # constant: degenerate fit
              np.concatenate([np.full(40, 0.5), np.full(10, 0.5 + 5e-4)]),  # gap < 1e-3
              bimodal(rng, 400, 0.2, 0.8, 0.3, 0.05)]         # a normal group
    values, ids = ragged(groups)
    result = fit_group_mixtures(values, ids, 5, seed=4)      # group 4 is empty
    assert result.fallback.tolist() == [True, True, True, False, True]
    assert torch.isnan(result.means[0]).all() and torch.isnan(result.means[4]).all()
    for index in (0, 1, 2):
        assert (result.partition[ids == index] == CLEAN).all()
    assert (result.partition[ids == 3] == NOISY).any()
    assert result.counts.tolist() == [9, 50, 50, 400, 0]


def test_min_group_is_configurable_and_seed_is_deterministic():
    rng = np.random.default_rng(17)
    values, ids = ragged([bimodal(rng, 9, 0.2, 0.8, 0.4, 0.05), bimodal(rng, 900, 0.3, 0.6, 0.4, 0.1)])
    result = fit_group_mixtures(values, ids, 2, seed=9, min_group=5)
    assert not result.fallback[0]
    again = fit_group_mixtures(values, ids, 2, seed=9, min_group=5)
    for name in ("means", "variances", "weights", "partition", "iterations"):
        assert torch.equal(getattr(result, name), getattr(again, name)), name


def test_max_iterations_caps_em_and_bad_input_is_rejected():
    rng = np.random.default_rng(18)
    values, ids = ragged([bimodal(rng, 3000, 0.3, 0.5, 0.4, 0.1)])
    result = fit_group_mixtures(values, ids, 1, seed=0, max_iterations=1)
    assert result.iterations.tolist() == [1] and not result.converged[0]
    with pytest.raises(MixtureError, match="one shape"):
        fit_group_mixtures(values, ids[:-1], 1, seed=0)
    with pytest.raises(MixtureError, match="group ids"):
        fit_group_mixtures(values, ids + 1, 1, seed=0)
    with pytest.raises(MixtureError, match="NaN"):
        fit_group_mixtures(values * float("nan"), ids, 1, seed=0)


def test_fifty_groups_of_thirty_thousand_points_recover_their_components():
    """METHOD §4 at MIMIC scale (50 groups × 60000·25/50 points): every group converges to the
    generating components. Its speed is measured by bench/bench_selection.py, not asserted here
    (absolute times are not assertable on a shared machine)."""
    groups, per_group = 50, 60000 * 25 // 50
    generator = torch.Generator().manual_seed(0)
    ids = torch.arange(groups).repeat_interleave(per_group)
    ids = ids[torch.randperm(ids.numel(), generator=generator)]
    high = torch.rand(ids.numel(), generator=generator) < 0.3
    noise = 0.08 * torch.randn(ids.numel(), generator=generator, dtype=torch.float64)
    values = (torch.where(high, 0.7, 0.25) + noise).clamp(0, 1)
    result = fit_group_mixtures(values, ids, groups, seed=0)
    assert result.converged.all()
    low_mean, high_mean = result.means.min(dim=1).values, result.means.max(dim=1).values
    assert torch.allclose(low_mean, torch.full_like(low_mean, 0.25), atol=0.01)
    assert torch.allclose(high_mean, torch.full_like(high_mean, 0.7), atol=0.01)
