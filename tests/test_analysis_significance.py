"""miracl_grid.analysis.significance: one-sided t-tests against scipy, stars, comparator choice, degenerate cases."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from miracl_grid.analysis.significance import one_sided_t_test, significance_stars, significance_table

SEEDS = (30, 40, 100)


def finals_frame(values_by_method, noise=("symmetric", 0.2, 0.2), seeds=SEEDS):
    """Last-epoch rows: {method label's (method, backbone, variant): [values per seed]}."""
    rows = []
    for (method, backbone, variant), values in values_by_method.items():
        for seed, value in zip(seeds, values):
            rows.append({"trial_id": f"{method}_{backbone}_{noise[0]}{noise[1]}_{seed}", "sweep": "main", "epoch": 3,
                         "status": "TERMINATED", "config/method": method, "config/backbone": backbone,
                         "config/variant": variant, "config/noise_model": noise[0], "config/rho_pos": noise[1],
                         "config/rho_neg": noise[2], "config/seed": seed, "test/mAP": value})
    return pd.DataFrame(rows)


MIRACL = ("miracl", "flexcare", "MIRACL")
FLEXCARE = ("bce", "flexcare", "FlexCare")
ASL = ("asl", "flexcare", "ASL")
MEDFUSE = ("bce", "medfuse", "MedFuse")


@pytest.mark.parametrize("p, stars", [(0.0005, "***"), (0.001, "**"), (0.005, "**"), (0.01, "*"), (0.049, "*"),
                                      (0.05, ""), (0.5, ""), (math.nan, "")])
def test_star_thresholds(p, stars):
    assert significance_stars(p) == stars


def test_independent_test_equals_scipy_student_t():
    reference, other = [0.50, 0.52, 0.54], [0.45, 0.45, 0.48]
    outcome = one_sided_t_test(np.array(reference), np.array(other))
    expected = stats.ttest_ind(reference, other, equal_var=True, alternative="greater")
    assert outcome.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert outcome.statistic == pytest.approx(expected.statistic, rel=1e-12)
    # by hand: pooled variance (0.0008 + 0.0006)/4 = 0.00035, t = 0.06 / sqrt(0.00035 · 2/3)
    assert outcome.statistic == pytest.approx(0.06 / math.sqrt(0.00035 * 2 / 3), rel=1e-9)
    assert outcome.p_value == pytest.approx(stats.t.sf(0.06 / math.sqrt(0.00035 * 2 / 3), df=4), rel=1e-9)
    assert outcome.stars == "**" and outcome.reason == ""
    assert (outcome.n_reference, outcome.n_comparator) == (3, 3)


def test_unequal_sample_sizes_and_nan_values_are_dropped():
    outcome = one_sided_t_test(np.array([0.5, 0.6, np.nan, 0.55]), np.array([0.4, 0.45]))
    expected = stats.ttest_ind([0.5, 0.6, 0.55], [0.4, 0.45], equal_var=True, alternative="greater")
    assert outcome.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert (outcome.n_reference, outcome.n_comparator) == (3, 2)


def test_paired_test_equals_scipy_ttest_rel():
    reference, other = [0.50, 0.53, 0.58], [0.47, 0.51, 0.50]
    outcome = one_sided_t_test(np.array(reference), np.array(other), paired=True)
    expected = stats.ttest_rel(reference, other, alternative="greater")
    assert outcome.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert outcome.statistic == pytest.approx(expected.statistic, rel=1e-12)
    with pytest.raises(ValueError, match="paired"):
        one_sided_t_test(np.array([0.1, 0.2]), np.array([0.1]), paired=True)


@pytest.mark.parametrize("reference, other, p, reason", [
    ([0.5], [0.4, 0.41, 0.42], math.nan, "n<2"),
    ([0.5, 0.6], [0.4], math.nan, "n<2"),
    ([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], 0.0, "zero variance"),
    ([0.3, 0.3, 0.3], [0.4, 0.4, 0.4], 1.0, "zero variance"),
    ([0.4, 0.4], [0.4, 0.4, 0.4], math.nan, "zero variance, equal means"),
])
def test_degenerate_cases(reference, other, p, reason):
    outcome = one_sided_t_test(np.array(reference), np.array(other))
    assert outcome.reason == reason
    if math.isnan(p):
        assert math.isnan(outcome.p_value) and outcome.stars == ""
    else:
        assert outcome.p_value == p
        assert outcome.stars == ("***" if p == 0.0 else "")


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")   # scipy's own call below
def test_one_constant_side_is_an_ordinary_test():
    outcome = one_sided_t_test(np.array([0.5, 0.5, 0.5]), np.array([0.40, 0.42, 0.47]))
    expected = stats.ttest_ind([0.5, 0.5, 0.5], [0.40, 0.42, 0.47], equal_var=True, alternative="greater")
    assert outcome.reason == "" and outcome.p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_paired_degenerate_cases():
    assert one_sided_t_test(np.array([0.5]), np.array([0.4]), paired=True).reason == "n<2"
    shifted = one_sided_t_test(np.array([0.5, 0.6, 0.7]), np.array([0.4, 0.5, 0.6]), paired=True)
    assert (shifted.p_value, shifted.reason) == (0.0, "zero variance")


def test_table_picks_best_other_method_per_noise_setting():
    frame = pd.concat([
        finals_frame({MIRACL: [0.50, 0.52, 0.54], FLEXCARE: [0.40, 0.41, 0.42], ASL: [0.45, 0.45, 0.48]}),
        finals_frame({MIRACL: [0.55, 0.56, 0.57], FLEXCARE: [0.60, 0.61, 0.62], MEDFUSE: [0.3, 0.3, 0.3]},
                     noise=("asymmetric", 0.0, 0.4)),
    ])
    table = significance_table(frame)
    assert table["noise_setting"].tolist() == ["Sym. 20%", "Asym. (0,40)"]
    assert table["comparator"].tolist() == ["ASL", "FlexCare"]
    assert table["reference_mean"].tolist() == pytest.approx([0.52, 0.56])
    assert table["comparator_mean"].tolist() == pytest.approx([0.46, 0.61])
    first = stats.ttest_ind([0.50, 0.52, 0.54], [0.45, 0.45, 0.48], equal_var=True, alternative="greater")
    second = stats.ttest_ind([0.55, 0.56, 0.57], [0.60, 0.61, 0.62], equal_var=True, alternative="greater")
    assert table["p_value"].tolist() == pytest.approx([first.pvalue, second.pvalue], rel=1e-12)
    assert table["stars"].tolist() == ["**", ""]
    assert set(table["test"]) == {"independent"}


def test_table_paired_variant_uses_shared_seeds_only():
    frame = pd.concat([finals_frame({MIRACL: [0.50, 0.53, 0.58]}),
                       finals_frame({FLEXCARE: [0.47, 0.51, 0.50, 0.9]}, seeds=(30, 40, 100, 7))])
    table = significance_table(frame, paired=True)
    expected = stats.ttest_rel([0.50, 0.53, 0.58], [0.47, 0.51, 0.50], alternative="greater")
    assert table["p_value"].iloc[0] == pytest.approx(expected.pvalue, rel=1e-12)
    assert table["n_reference"].iloc[0] == 3 and table["test"].iloc[0] == "paired"


def test_table_rows_without_miracl_or_comparator():
    frame = pd.concat([finals_frame({FLEXCARE: [0.4, 0.5, 0.6]}),
                       finals_frame({MIRACL: [0.4, 0.5, 0.6]}, noise=("symmetric", 0.4, 0.4))])
    table = significance_table(frame).set_index("noise_setting")
    assert table.loc["Sym. 20%", "reason"] == "no MIRACL"
    assert table.loc["Sym. 40%", "reason"] == "no comparator"
    assert table["p_value"].isna().all()
