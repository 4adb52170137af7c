"""Tests of miracl_grid.data.noise (METHOD §2): invariants (hypothesis) and rates (binomial CIs, scipy)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from miracl_grid.data.noise import NOISE_MODELS, NoiseError, apply_noise, balanced_rho_neg, check_balanced_rho_neg

CONFIDENCE = 0.999


@pytest.fixture(scope="module")
def realistic_labels() -> np.ndarray:
    """20000×25 labels, per-class prevalence 0.03..0.336 (mean positives per row 4.575)."""
    prevalence = np.linspace(0.03, 0.336, 25)
    rng = np.random.default_rng(2024)
    return (rng.random((20000, 25)) < prevalence).astype(np.uint8)


def assert_rate_in_ci(flipped: int, total: int, nominal: float) -> None:
    interval = stats.binomtest(flipped, total).proportion_ci(confidence_level=CONFIDENCE)
    assert interval.low <= nominal <= interval.high, (flipped, total, nominal, interval)


def counts(labels: np.ndarray, result) -> tuple[int, int, int, int]:
    positive = labels.astype(bool)
    flipped_pos = int((result.flip_mask & positive).sum())
    flipped_neg = int((result.flip_mask & ~positive).sum())
    return flipped_pos, int(positive.sum()), flipped_neg, int((~positive).sum())


# --- invariants (hypothesis) ------------------------------------------------------------------

label_matrices = arrays(np.uint8, st.tuples(st.integers(1, 25), st.integers(1, 8)),
                        elements=st.integers(0, 1))
rates = st.floats(0.0, 0.9, allow_nan=False)


def rates_for(model: str, rho_pos: float, rho_neg: float) -> tuple[float, float]:
    if model == "symmetric":
        return rho_pos, rho_pos
    if model == "balanced":
        return min(rho_pos, 0.4), rho_neg
    return rho_pos, rho_neg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=label_matrices, model=st.sampled_from(NOISE_MODELS), rho_pos=rates, rho_neg=rates,
       seed=st.integers(0, 2**32 - 1))
def test_invariants_of_every_model(labels, model, rho_pos, rho_neg, seed):
    rho_pos, rho_neg = rates_for(model, rho_pos, rho_neg)
    if model == "balanced":
        l_avg = labels.sum(axis=1).mean()
        assume(l_avg < labels.shape[1] and rho_pos * l_avg / (labels.shape[1] - l_avg) < 1)
    original = labels.copy()
    result = apply_noise(labels, model, rho_pos, rho_neg, seed)
    np.testing.assert_array_equal(labels, original)                 # input untouched
    assert result.noisy.shape == labels.shape and result.noisy.dtype == np.uint8
    assert result.flip_mask.shape == labels.shape and result.flip_mask.dtype == np.bool_
    np.testing.assert_array_equal(result.flip_mask, result.noisy != labels)
    assert set(np.unique(result.noisy)) <= {0, 1}
    flipped_pos, num_pos, flipped_neg, num_neg = counts(labels, result)
    if num_pos:
        assert result.realised_rho_pos == pytest.approx(flipped_pos / num_pos)
    else:
        assert math.isnan(result.realised_rho_pos)
    if num_neg:
        assert result.realised_rho_neg == pytest.approx(flipped_neg / num_neg)
    else:
        assert math.isnan(result.realised_rho_neg)
    again = apply_noise(labels, model, rho_pos, rho_neg, seed)     # deterministic per seed
    np.testing.assert_array_equal(again.noisy, result.noisy)
    if model == "single_positive":
        assert (result.noisy <= labels).all()                       # only removes
        assert (result.noisy.sum(axis=1) == np.minimum(labels.sum(axis=1), 1)).all()
    if model == "class_conditional":
        np.testing.assert_array_equal(result.noisy.sum(axis=1), labels.sum(axis=1))
    summary = result.summary()                                      # the loop's noise/* columns
    assert summary["flipped_pairs"] == int((result.noisy != labels).sum()) and type(summary["flipped_pairs"]) is int
    assert {key: type(value) for key, value in summary.items() if key != "flipped_pairs"} == \
        {"realised_rho_pos": float, "realised_rho_neg": float, "rho_neg_nominal": float}
    assert summary["rho_neg_nominal"] == result.rho_neg or (math.isnan(summary["rho_neg_nominal"])
                                                            and math.isnan(result.rho_neg))


@settings(max_examples=60, deadline=None)
@given(labels=label_matrices, model=st.sampled_from(["none", "symmetric", "asymmetric", "balanced",
                                                     "class_conditional"]),
       seed=st.integers(0, 10_000))
def test_zero_rates_are_identity(labels, model, seed):
    result = apply_noise(labels, model, 0.0, 0.0, seed)
    np.testing.assert_array_equal(result.noisy, labels)
    assert not result.flip_mask.any()


@settings(max_examples=60, deadline=None)
@given(labels=label_matrices, rho=st.floats(0.01, 0.95), seed=st.integers(0, 10_000))
def test_one_sided_asymmetric_noise(labels, rho, seed):
    only_adds = apply_noise(labels, "asymmetric", 0.0, rho, seed).noisy
    assert (only_adds >= labels).all()                              # (0, ρ) never removes positives
    only_removes = apply_noise(labels, "asymmetric", rho, 0.0, seed).noisy
    assert (only_removes <= labels).all()                           # (ρ, 0) never adds positives


def test_none_ignores_rates_and_reports_zero(realistic_labels):
    result = apply_noise(realistic_labels, "none", 0.2, 0.2, 3)
    np.testing.assert_array_equal(result.noisy, realistic_labels)
    assert (result.rho_pos, result.rho_neg) == (0.0, 0.0)
    assert result.realised_rho_pos == 0.0 and result.realised_rho_neg == 0.0


def test_bool_input_is_accepted_and_returns_uint8():
    labels = np.array([[True, False], [False, True]])
    result = apply_noise(labels, "symmetric", 0.5, 0.5, 0)
    assert result.noisy.dtype == np.uint8
    np.testing.assert_array_equal(result.flip_mask, result.noisy != labels.astype(np.uint8))


def test_empty_classes_give_nan_rates_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_negative = apply_noise(np.zeros((4, 3), np.uint8), "asymmetric", 0.3, 0.0, 1)
        all_positive = apply_noise(np.ones((4, 3), np.uint8), "asymmetric", 0.0, 0.3, 1)
    assert math.isnan(all_negative.realised_rho_pos) and all_negative.realised_rho_neg == 0.0
    assert math.isnan(all_positive.realised_rho_neg) and all_positive.realised_rho_pos == 0.0


def test_different_seeds_give_different_noise(realistic_labels):
    first = apply_noise(realistic_labels, "symmetric", 0.2, 0.2, 1).noisy
    second = apply_noise(realistic_labels, "symmetric", 0.2, 0.2, 2).noisy
    assert (first != second).any()


# --- rates on a large matrix ------------------------------------------------------------------

@pytest.mark.parametrize("model, rho_pos, rho_neg", [
    ("symmetric", 0.2, 0.2), ("symmetric", 0.4, 0.4), ("asymmetric", 0.0, 0.4),
    ("asymmetric", 0.4, 0.0), ("asymmetric", 0.2, 0.1)])
def test_realised_rates_match_nominal(realistic_labels, model, rho_pos, rho_neg):
    result = apply_noise(realistic_labels, model, rho_pos, rho_neg, seed=11)
    flipped_pos, num_pos, flipped_neg, num_neg = counts(realistic_labels, result)
    assert_rate_in_ci(flipped_pos, num_pos, rho_pos)
    assert_rate_in_ci(flipped_neg, num_neg, rho_neg)
    assert (result.rho_pos, result.rho_neg) == (rho_pos, rho_neg)


def test_balanced_rho_neg_matches_paper_value():
    # 0.2 * 4.575 / (25 - 4.575) = 0.915 / 20.425 = 0.044798..., the paper's 4.48 %
    assert balanced_rho_neg(0.2, 4.575, 25) == pytest.approx(0.0447980, abs=1e-6)
    assert round(100 * balanced_rho_neg(0.4, 4.575, 25), 2) == 8.96
    with pytest.raises(NoiseError, match="l_avg"):
        balanced_rho_neg(0.2, 25.0, 25)


def test_balanced_noise_derives_rho_neg_from_clean_labels(realistic_labels):
    l_avg = realistic_labels.sum() / realistic_labels.shape[0]
    expected_neg = 0.2 * l_avg / (25 - l_avg)
    result = apply_noise(realistic_labels, "balanced", 0.2, 0.9, seed=5)   # rho_neg is ignored
    assert result.rho_neg == pytest.approx(expected_neg, rel=1e-12)
    flipped_pos, num_pos, flipped_neg, num_neg = counts(realistic_labels, result)
    assert_rate_in_ci(flipped_pos, num_pos, 0.2)
    assert_rate_in_ci(flipped_neg, num_neg, expected_neg)
    # balanced: expected 0->1 flips equal expected 1->0 flips
    assert abs(flipped_neg - flipped_pos) < 5 * math.sqrt(flipped_pos + flipped_neg)
    explicit = apply_noise(realistic_labels, "balanced", 0.2, 0.0, seed=5, l_avg=4.575)
    assert explicit.rho_neg == pytest.approx(0.0447980, abs=1e-6)


def test_single_positive_keeps_a_uniformly_chosen_positive():
    labels = np.zeros((30000, 5), np.uint8)
    labels[:, :3] = 1                                               # three positives per row
    labels[:100] = 0                                                # rows without positives
    result = apply_noise(labels, "single_positive", 0.0, 0.0, seed=8)
    np.testing.assert_array_equal(result.noisy[:100], 0)
    kept_per_class = result.noisy[100:, :3].sum(axis=0)
    for kept in kept_per_class:                                      # each kept w.p. 1/3
        assert_rate_in_ci(int(kept), 29900, 1 / 3)
    assert math.isnan(result.rho_pos) and math.isnan(result.rho_neg)
    assert result.realised_rho_pos == pytest.approx(2 / 3)


def test_class_conditional_moves_preserve_counts_and_follow_class_frequencies():
    # Rows 0..9999 have one positive, class 0; other rows fix N_j: N_1 = 6000, N_2 = 3000,
    # N_3 = 1000, N_4 = 0. A moved class-0 positive goes to j with prob. N_j / (N - N_0).
    labels = np.zeros((20000, 5), np.uint8)
    labels[:10000, 0] = 1
    labels[10000:16000, 1] = 1
    labels[16000:19000, 2] = 1
    labels[19000:20000, 3] = 1
    rho = 0.3
    result = apply_noise(labels, "class_conditional", rho, 0.0, seed=21)
    np.testing.assert_array_equal(result.noisy.sum(axis=1), labels.sum(axis=1))
    removed = (result.flip_mask & (labels == 1)).sum(axis=1)
    added = (result.flip_mask & (labels == 0)).sum(axis=1)
    np.testing.assert_array_equal(removed, added)                   # a move = one 1->0 + one 0->1
    flipped_pos, num_pos, _, _ = counts(labels, result)
    assert_rate_in_ci(flipped_pos, num_pos, rho)
    assert result.rho_pos == rho and math.isnan(result.rho_neg)
    assert not result.noisy[:, 4].any()                             # N_4 = 0: never a destination
    moved = result.flip_mask[:10000, 0]
    destinations = result.noisy[:10000][moved][:, 1:4].sum(axis=0)
    expected = moved.sum() * np.array([6000, 3000, 1000]) / 10000
    assert stats.chisquare(destinations, expected).pvalue > 1 - CONFIDENCE


def test_class_conditional_on_realistic_labels_keeps_row_counts(realistic_labels):
    result = apply_noise(realistic_labels, "class_conditional", 0.2, 0.0, seed=4)
    np.testing.assert_array_equal(result.noisy.sum(axis=1), realistic_labels.sum(axis=1))
    flipped_pos, num_pos, flipped_neg, _ = counts(realistic_labels, result)
    assert flipped_pos == flipped_neg
    assert_rate_in_ci(flipped_pos, num_pos, 0.2)
    # destinations favour frequent classes: the rarest class gains fewer than the most frequent
    gained = (result.flip_mask & (realistic_labels == 0)).sum(axis=0)
    assert gained[-1] > gained[0]


def test_class_conditional_is_capped_by_free_destinations():
    labels = np.array([[1, 1, 1, 0], [0, 1, 0, 0]] * 500, np.uint8)   # one free class in even rows
    result = apply_noise(labels, "class_conditional", 0.9, 0.0, seed=3)
    np.testing.assert_array_equal(result.noisy.sum(axis=1), labels.sum(axis=1))
    assert (result.flip_mask[0::2].sum(axis=1) <= 2).all()          # at most one move there


def test_combined_noise_rates_match_the_mixture(realistic_labels):
    result = apply_noise(realistic_labels, "combined", 0.2, 0.2, seed=17)
    positives = realistic_labels.sum(axis=1)
    single_positive_drop = np.maximum(positives - 1, 0).sum() / positives.sum()
    # E[ρ+] = 1/3·E U(0,.1) + 1/3·E U(0,.5) + 1/3·(share of positives dropped by single_positive)
    expected_pos = (0.05 + 0.25 + single_positive_drop) / 3
    expected_neg = 0.05 / 3                                         # only the uniform third adds
    # per-row rates are random, so the spread is wider than binomial: over 200 seeds the SD was
    # 0.0025 (+) and 0.0003 (−) on this 20000×25 matrix; tolerances are 4 SD.
    assert result.realised_rho_pos == pytest.approx(expected_pos, abs=0.010)
    assert result.realised_rho_neg == pytest.approx(expected_neg, abs=0.0012)
    assert math.isnan(result.rho_pos) and math.isnan(result.rho_neg)
    # rows whose labels only lost positives (types 2, 3 and part of 1) are the majority
    only_removed = ~(result.flip_mask & (realistic_labels == 0)).any(axis=1)
    assert only_removed.mean() > 2 / 3


# --- bad input ----------------------------------------------------------------------------------

def test_bad_labels_name_the_cell():
    labels = np.zeros((4, 5), np.uint8)
    labels[2, 3] = 2
    with pytest.raises(NoiseError, match="row 2, column 3"):
        apply_noise(labels, "symmetric", 0.1, 0.1, 0)
    with pytest.raises(NoiseError, match="2-D"):
        apply_noise(np.zeros(5, np.uint8), "symmetric", 0.1, 0.1, 0)
    floats = np.zeros((2, 2))
    floats[1, 0] = np.nan
    with pytest.raises(NoiseError, match="row 1, column 0"):
        apply_noise(floats, "none", 0.0, 0.0, 0)


def test_bad_rates_models_and_seeds_are_named():
    labels = np.zeros((3, 3), np.uint8)
    with pytest.raises(NoiseError, match="rho_neg"):
        apply_noise(labels, "asymmetric", 0.1, 1.0, 0)
    with pytest.raises(NoiseError, match="rho_pos"):
        apply_noise(labels, "asymmetric", -0.1, 0.1, 0)
    with pytest.raises(NoiseError, match="class_conditional"):
        apply_noise(labels, "uniform", 0.1, 0.1, 0)
    with pytest.raises(NoiseError, match="rho_pos == rho_neg"):
        apply_noise(labels, "symmetric", 0.1, 0.2, 0)
    with pytest.raises(NoiseError, match="seed"):
        apply_noise(labels, "symmetric", 0.1, 0.1, -1)


def test_model_names_match_the_trial_config():
    from miracl_grid.trainables import config
    assert config.NOISE_MODELS is NOISE_MODELS


def test_a_balanced_trial_checks_the_rho_neg_its_sweep_derived():
    derived = 0.2 * 4.575 / (25 - 4.575)                       # 0.044798...
    assert check_balanced_rho_neg(0.2, derived, l_avg=4.575, num_labels=25) == derived
    with pytest.raises(NoiseError, match=r"'rho_neg' = 0.2: .*l_avg_train = 4.0.*0.0380952"):
        check_balanced_rho_neg(0.2, 0.2, l_avg=4.0, num_labels=25)      # 0.2·4/21, another cohort's L_avg


def test_one_rate_range_for_the_noise_code_the_config_and_the_cli():
    from miracl_grid.data.noise import RATE_RANGE, is_rate
    from miracl_grid.grid.sweeps import SweepError, parse_noise_setting
    from miracl_grid.trainables.config import FIELD_RANGES, ConfigError, FieldRange, TrialConfig

    interval = FieldRange.parse(RATE_RANGE)
    assert FIELD_RANGES["rho_pos"] == FIELD_RANGES["rho_neg"] == RATE_RANGE
    for value, inside in ((0.0, True), (0.999, True), (1.0, False), (-0.01, False), (float("nan"), False)):
        assert is_rate(value) is inside and interval.contains(value) is inside, value
    assert not is_rate(True)
    with pytest.raises(ConfigError, match=r"a rate in \[0, 1\)"):
        TrialConfig(rho_pos=1.0)
    with pytest.raises(SweepError, match=r"outside \[0, 1\)"):
        parse_noise_setting("asymmetric:0,1")
    with pytest.raises(NoiseError, match=r"a rate in \[0, 1\)"):
        balanced_rho_neg(1.0, 4.0, 25)
