"""Significance of MIRACL against the best other method per noise setting (METHOD §12, Tables 7/8).

For every noise setting: take each method's last-epoch metric across seeds, pick the best
other method by mean ("second-best" in the paper's wording: second after MIRACL), and run a
one-sided two-sample Student's t-test with equal variances,
``scipy.stats.ttest_ind(miracl, other, equal_var=True, alternative="greater")``
(H1: MIRACL's mean is greater). Optional paired variant over the seeds both share:
``scipy.stats.ttest_rel(miracl, other, alternative="greater")``.
Stars: ``*`` p < 0.05, ``**`` p < 0.01, ``***`` p < 0.001.

Degenerate cases (the t statistic is undefined or scipy's answer is numerical noise):

- fewer than two values on either side (paired: fewer than two shared seeds):
  p = NaN, no stars, reason ``"n<2"``;
- both samples constant (paired: the per-seed differences constant). The pooled variance is
  zero, so the data leave no doubt about the order of the means: p = 0.0 (statistic +inf)
  when MIRACL's mean is greater, p = 1.0 (statistic -inf) when it is smaller, reason
  ``"zero variance"``; equal means give p = NaN, reason ``"zero variance, equal means"``.
  ("Constant" means a spread ≤ 1e-12 relative to the values: scipy returns ~1e-60 p-values
  from rounding noise there.)
- no MIRACL value, or no other method, in a setting: p = NaN, reason ``"no MIRACL"`` /
  ``"no comparator"``.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from miracl_grid.analysis.collect import METHOD_LABEL, NOISE_SETTING, SEED_COLUMN, ensure_annotated, noise_setting_order
from miracl_grid.analysis.labels import REFERENCE_METHOD, method_sort_key

logger = logging.getLogger(__name__)

STAR_THRESHOLDS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
SIGNIFICANCE_COLUMNS = (NOISE_SETTING, "reference", "reference_mean", "comparator", "comparator_mean",
                        "n_reference", "n_comparator", "statistic", "p_value", "stars", "reason", "test")


def significance_stars(p_value: float) -> str:
    """'***' p<0.001, '**' p<0.01, '*' p<0.05, '' otherwise or NaN (METHOD §12)."""
    if p_value is None or not np.isfinite(p_value):
        return ""
    for threshold, stars in STAR_THRESHOLDS:
        if p_value < threshold:
            return stars
    return ""


@dataclass(frozen=True)
class TestOutcome:
    """Result of one one-sided test of 'reference > comparator'."""
    statistic: float
    p_value: float
    reason: str          # "" when the t-test ran normally, else why p is NaN/0/1 (module doc)
    n_reference: int
    n_comparator: int

    @property
    def stars(self) -> str:
        return significance_stars(self.p_value)


def _constant(values: np.ndarray) -> bool:
    scale = max(1.0, float(np.max(np.abs(values))))
    return float(np.ptp(values)) <= 1e-12 * scale


def _zero_variance_outcome(difference: float, scale: float, n_reference: int, n_comparator: int) -> TestOutcome:
    if abs(difference) <= 1e-12 * max(1.0, scale):
        return TestOutcome(math.nan, math.nan, "zero variance, equal means", n_reference, n_comparator)
    if difference > 0:
        return TestOutcome(math.inf, 0.0, "zero variance", n_reference, n_comparator)
    return TestOutcome(-math.inf, 1.0, "zero variance", n_reference, n_comparator)


def one_sided_t_test(reference: np.ndarray, comparator: np.ndarray, *, paired: bool = False) -> TestOutcome:
    """One-sided Student's t-test of mean(reference) > mean(comparator) (METHOD §12).

    reference, comparator: 1-D metric values across seeds (NaN dropped; paired: equal length,
    aligned by seed, a pair with a NaN on either side dropped). Degenerate cases: module doc.
    """
    reference = np.asarray(reference, dtype=float).ravel()
    comparator = np.asarray(comparator, dtype=float).ravel()
    if paired:
        if reference.shape != comparator.shape:
            raise ValueError(f"paired test: {reference.size} reference values vs {comparator.size} "
                             "comparator values (expected one of each per shared seed)")
        keep = np.isfinite(reference) & np.isfinite(comparator)
        reference, comparator = reference[keep], comparator[keep]
        n = int(reference.size)
        if n < 2:
            return TestOutcome(math.nan, math.nan, "n<2", n, n)
        differences = reference - comparator
        if _constant(differences):
            return _zero_variance_outcome(float(differences.mean()), float(np.max(np.abs(reference))), n, n)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
            result = stats.ttest_rel(reference, comparator, alternative="greater")
        return TestOutcome(float(result.statistic), float(result.pvalue), "", n, n)
    reference = reference[np.isfinite(reference)]
    comparator = comparator[np.isfinite(comparator)]
    n_reference, n_comparator = int(reference.size), int(comparator.size)
    if n_reference < 2 or n_comparator < 2:
        return TestOutcome(math.nan, math.nan, "n<2", n_reference, n_comparator)
    if _constant(reference) and _constant(comparator):
        return _zero_variance_outcome(float(reference.mean() - comparator.mean()),
                                      float(max(np.max(np.abs(reference)), np.max(np.abs(comparator)))),
                                      n_reference, n_comparator)
    with warnings.catch_warnings():   # a constant side makes scipy warn about rounding; the pooled
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        result = stats.ttest_ind(reference, comparator, equal_var=True, alternative="greater")
    return TestOutcome(float(result.statistic), float(result.pvalue), "", n_reference, n_comparator)


def best_other_method(finals: pd.DataFrame, metric: str, reference: str = REFERENCE_METHOD,
                      method_column: str = METHOD_LABEL) -> str | None:
    """The method (≠ reference) with the highest mean `metric` in `finals` (ties: table order)."""
    others = finals.loc[(finals[method_column] != reference) & finals[metric].notna()]
    if others.empty:
        return None
    means = others.groupby(method_column)[metric].mean()
    best = means.max()
    tied = [label for label, value in means.items() if value == best]
    return sorted(tied, key=method_sort_key)[0]


def _per_seed(rows: pd.DataFrame, metric: str, seed_column: str, label: str) -> pd.Series:
    values = rows.dropna(subset=[metric]).groupby(seed_column)[metric]
    if (values.size() > 1).any():
        logger.warning("paired test: %s has several trials for one seed; using their mean", label)
    return values.mean()


def significance_table(finals: pd.DataFrame, metric: str = "test/mAP", *, reference: str = REFERENCE_METHOD,
                       paired: bool = False, group: str = NOISE_SETTING, method_column: str = METHOD_LABEL,
                       seed_column: str = SEED_COLUMN) -> pd.DataFrame:
    """Tables 7/8: per noise setting, MIRACL vs the best other method on last-epoch `metric`.

    finals: one row per trial (``last_epoch`` output; annotated or not). Returns one row per
    value of `group` (table order) with columns `SIGNIFICANCE_COLUMNS`: means, sample sizes,
    t statistic, one-sided p-value, stars, reason (module doc) and test ("independent" /
    "paired").
    """
    finals = ensure_annotated(finals)
    if metric not in finals.columns:
        raise KeyError(f"metric column '{metric}' is not in the results (have: "
                       f"{', '.join(c for c in finals.columns if '/' in c and not c.startswith('config/'))})")
    order = noise_setting_order(finals) if group == NOISE_SETTING else list(dict.fromkeys(finals[group]))
    rows = []
    for setting in order:
        subset = finals.loc[finals[group] == setting]
        mine = subset.loc[subset[method_column] == reference]
        comparator = best_other_method(subset, metric, reference, method_column)
        row = {NOISE_SETTING if group == NOISE_SETTING else group: setting, "reference": reference,
               "reference_mean": float(mine[metric].mean()) if len(mine) else math.nan,
               "comparator": comparator or "",
               "test": "paired" if paired else "independent"}
        theirs = subset.loc[subset[method_column] == comparator] if comparator else subset.iloc[:0]
        row["comparator_mean"] = float(theirs[metric].mean()) if len(theirs) else math.nan
        if mine[metric].notna().sum() == 0:
            outcome = TestOutcome(math.nan, math.nan, "no MIRACL" if reference == REFERENCE_METHOD
                                  else f"no {reference}", 0, int(theirs[metric].notna().sum()))
        elif comparator is None:
            outcome = TestOutcome(math.nan, math.nan, "no comparator", int(mine[metric].notna().sum()), 0)
        elif paired:
            mine_by_seed = _per_seed(mine, metric, seed_column, reference)
            theirs_by_seed = _per_seed(theirs, metric, seed_column, comparator)
            shared = mine_by_seed.index.intersection(theirs_by_seed.index)
            outcome = one_sided_t_test(mine_by_seed.loc[shared].to_numpy(),
                                       theirs_by_seed.loc[shared].to_numpy(), paired=True)
        else:
            outcome = one_sided_t_test(mine[metric].to_numpy(), theirs[metric].to_numpy())
        row.update(n_reference=outcome.n_reference, n_comparator=outcome.n_comparator,
                   statistic=outcome.statistic, p_value=outcome.p_value, stars=outcome.stars,
                   reason=outcome.reason)
        rows.append(row)
    columns = [NOISE_SETTING if group == NOISE_SETTING else group, *SIGNIFICANCE_COLUMNS[1:]]
    return pd.DataFrame(rows, columns=columns)
