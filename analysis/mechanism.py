"""What drives a run's result: per-epoch curves, memorisation, selection quality, and a generated
"what this run shows" paragraph (the diagnostics of `miracl_grid.trainables.diagnostics`, METHOD §8).

Every function reads results rows (all epochs or `miracl_grid.analysis.collect.last_epoch` rows) and returns
a `miracl_grid.analysis.tables.Table` or text; no torch, no ray. Conventions as in `miracl_grid.analysis.tables`:
mean ± std across seeds with ``np.std`` (ddof 0).

- `run_context`: "synthetic cohort (400 patients, 690 stays) · preset quick · 30 epochs · 3 seeds"
  — the data source, preset, epochs and seed count every caption carries.
- `epoch_peak_table`: per method × noise setting, the last-epoch metric beside the peak of the
  per-epoch mean curve and its epoch (a peak well above the last value = memorisation).
- `diagnostics_table`: last-epoch values of chosen diagnostic columns per method × noise setting.
- `findings`: the paragraph — MIRACL − comparator gap and one-sided p per noise setting, whatever
  the sign, with the comparator's peak/last, memorisation shares and selection AUCs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from miracl_grid.analysis.collect import METHOD_LABEL, NOISE_SETTING, SEED_COLUMN, ensure_annotated, last_epoch, noise_setting_order
from miracl_grid.analysis.labels import method_sort_key
from miracl_grid.analysis.significance import one_sided_t_test
from miracl_grid.analysis.tables import MISSING_TEXT, Table, metric_name

DATA_SOURCE_COLUMN = "provenance/data_source"
PRESET_COLUMN = "provenance/preset"

MEMORISATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("correction/fit_flipped", "fits flipped ỹ"), ("correction/fit_clean", "fits clean ỹ"))
SELECTION_SIGNAL_LABELS: tuple[tuple[str, str], ...] = (
    ("rank", "rank R"), ("difficulty_durations", "difficulty (durations)"),
    ("difficulty_events", "difficulty (events)"), ("bce", "per-pair BCE"), ("z_tilde", "Z̃"))
CLASS_LABELS: tuple[tuple[str, str], ...] = (("pos", "obs. +"), ("neg", "obs. −"))
CORRECTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("correction/accuracy_noisy_positive", "flipped obs. +: corrected"),
    ("correction/prediction_accuracy_noisy_positive", "flipped obs. +: prediction"),
    ("correction/accuracy_noisy_negative", "flipped obs. −: corrected"),
    ("correction/prediction_accuracy_noisy_negative", "flipped obs. −: prediction"),
    ("correction/soft_error_corrected", "|ỹ_corr − y|"), ("correction/soft_error_observed", "|ỹ − y|"))
SET_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f"correction/{name}_{suffix}", f"{label} {text}") for suffix, label in CLASS_LABELS
    for name, text in (("flip_rate", "flip rate"), ("noisy_share", "in noisy set"),
                       ("noisy_set_precision", "precision"), ("noisy_set_recall", "recall"))) + (
    ("correction/negatives_in_z_minus", "obs. − in Z⁻"), ("train/same_patient_share", "same-patient batch share"))


def auc_columns() -> list[tuple[str, str]]:
    """(column, label) of the within-class selection AUCs, signal-major."""
    return [(f"correction/auc_{signal}_{suffix}", f"{label}, {class_label}")
            for signal, label in SELECTION_SIGNAL_LABELS for suffix, class_label in CLASS_LABELS]


def _mean_std(values: pd.Series, decimals: int = 3) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return MISSING_TEXT
    return f"{values.mean():.{decimals}f} ± {np.std(values.to_numpy(), ddof=0):.{decimals}f}"


def run_context(rows: pd.DataFrame) -> str:
    """Data source, preset, epochs and number of seeds of `rows` (one caption fragment)."""
    parts = []
    for column, prefix in ((DATA_SOURCE_COLUMN, ""), (PRESET_COLUMN, "preset ")):
        if column in rows.columns and rows[column].notna().any():
            parts.append(prefix + "; ".join(str(value) for value in dict.fromkeys(rows[column].dropna().astype(str))))
        else:
            parts.append(f"{prefix or 'data source '}not recorded")
    if "config/epochs" in rows.columns and rows["config/epochs"].notna().any():
        epochs = sorted({int(value) for value in rows["config/epochs"].dropna()})
        parts.append(f"{'/'.join(map(str, epochs))} epochs")
    if SEED_COLUMN in rows.columns:
        parts.append(f"{rows[SEED_COLUMN].nunique()} seed(s)")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _curve(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    return rows.groupby("epoch")[metric].agg(
        mean="mean", std=lambda series: float(np.std(series.dropna().to_numpy(), ddof=0)), n="count").sort_index()


def epoch_peaks(frame: pd.DataFrame, metric: str = "test/mAP") -> pd.DataFrame:
    """Per method × noise setting: last epoch, last mean/std, peak epoch of the per-epoch mean
    curve across seeds, peak mean/std, n seeds. frame: all epochs."""
    frame = ensure_annotated(frame)
    records = []
    for setting in noise_setting_order(frame):
        for method in sorted(frame.loc[frame[NOISE_SETTING] == setting, METHOD_LABEL].unique(), key=method_sort_key):
            rows = frame.loc[(frame[NOISE_SETTING] == setting) & (frame[METHOD_LABEL] == method)]
            curve = _curve(rows.dropna(subset=[metric]), metric)
            if curve.empty:
                continue
            peak = int(curve["mean"].idxmax())
            records.append({NOISE_SETTING: setting, METHOD_LABEL: method, "last_epoch": int(curve.index.max()),
                            "last_mean": float(curve["mean"].iloc[-1]), "last_std": float(curve["std"].iloc[-1]),
                            "peak_epoch": peak, "peak_mean": float(curve.at[peak, "mean"]),
                            "peak_std": float(curve.at[peak, "std"]), "n": int(rows[SEED_COLUMN].nunique())})
    return pd.DataFrame(records)


def epoch_peak_table(frame: pd.DataFrame, metric: str = "test/mAP", *, name: str = "epoch_peaks",
                     context: str = "") -> Table:
    """Last vs peak of the per-epoch test `metric` (mean ± std across seeds) per method × noise."""
    peaks = epoch_peaks(frame, metric)
    text = pd.DataFrame({
        "last": [f"{row.last_mean:.3f} ± {row.last_std:.3f} (ep. {row.last_epoch})" for row in peaks.itertuples()],
        "peak": [f"{row.peak_mean:.3f} ± {row.peak_std:.3f} (ep. {row.peak_epoch})" for row in peaks.itertuples()],
        "peak − last": [f"{row.peak_mean - row.last_mean:+.3f}" for row in peaks.itertuples()],
        "n": [str(row.n) for row in peaks.itertuples()]},
        index=pd.Index([f"{row.method_label} · {row.noise_setting}" for row in peaks.itertuples()],
                       name="Method · noise"))
    notes = [f"Per-epoch test {metric_name(metric)} averaged across seeds; peak = the epoch where that mean "
             f"curve is highest (std at that epoch); ddof 0. {context}".strip()]
    return Table(name, f"Test {metric_name(metric)}: last epoch vs peak", text, None, peaks, notes)


def diagnostics_table(finals: pd.DataFrame, columns: Sequence[tuple[str, str]], *, name: str, title: str,
                      note: str, decimals: int = 3) -> Table:
    """Rows method · noise setting, one column per (column, label): last-epoch mean ± std
    (ddof 0) across seeds; columns without any value are left out."""
    finals = ensure_annotated(finals)
    present = [(column, label) for column, label in columns
               if column in finals.columns and finals[column].notna().any()]
    labels, rows, records = [], [], []
    for setting in noise_setting_order(finals):
        for method in sorted(finals.loc[finals[NOISE_SETTING] == setting, METHOD_LABEL].unique(), key=method_sort_key):
            group = finals.loc[(finals[NOISE_SETTING] == setting) & (finals[METHOD_LABEL] == method)]
            labels.append(f"{method} · {setting}")
            rows.append({label: _mean_std(group[column], decimals) for column, label in present}
                        | {"n": str(len(group))})
            records += [{METHOD_LABEL: method, NOISE_SETTING: setting, "column": column,
                         "mean": float(group[column].mean()), "std": float(np.std(group[column].dropna(), ddof=0)),
                         "n": int(group[column].notna().sum())} for column, _ in present]
    text = pd.DataFrame(rows, index=pd.Index(labels, name="Method · noise"),
                        columns=[label for _, label in present] + ["n"])
    return Table(name, title, text, None, pd.DataFrame(records), [note])


# --------------------------------------------------------------------------------------------
# The generated paragraph
# --------------------------------------------------------------------------------------------
def _p_text(p_value: float) -> str:
    if not np.isfinite(p_value):
        return "p undefined"
    return f"p = {p_value:.3g}" if p_value >= 1e-4 else "p < 1e-4"


def _last_mean(finals: pd.DataFrame, method: str, setting: str, column: str) -> float:
    rows = finals.loc[(finals[METHOD_LABEL] == method) & (finals[NOISE_SETTING] == setting)]
    if column not in rows.columns or rows[column].notna().sum() == 0:
        return math.nan
    return float(rows[column].mean())


def findings(frame: pd.DataFrame, *, reference: str, comparator: str, metric: str = "test/mAP") -> list[str]:
    """Sentences of the "what this run shows" paragraph for `reference` vs `comparator` (rows of
    exactly the trials to compare, all epochs): per noise setting the last-epoch gap with its
    one-sided two-sample t-test (METHOD §12), whatever the sign; the comparator's and the
    reference's peak vs last; memorisation of flipped labels; selection AUCs of Z̃ and of the
    per-pair BCE; corrected-label vs prediction accuracy on flipped pairs."""
    frame = ensure_annotated(frame)
    finals = last_epoch(frame, finished_only=True)
    peaks = epoch_peaks(frame, metric).set_index([METHOD_LABEL, NOISE_SETTING])
    sentences = []
    for setting in noise_setting_order(finals):
        mine = finals.loc[(finals[METHOD_LABEL] == reference) & (finals[NOISE_SETTING] == setting), metric]
        theirs = finals.loc[(finals[METHOD_LABEL] == comparator) & (finals[NOISE_SETTING] == setting), metric]
        if mine.notna().sum() == 0 or theirs.notna().sum() == 0:
            continue
        outcome = one_sided_t_test(mine.to_numpy(), theirs.to_numpy())
        gap = float(mine.mean() - theirs.mean())
        parts = [f"**{setting}**: {reference} {mine.mean():.3f} vs {comparator} {theirs.mean():.3f} last-epoch test "
                 f"{metric_name(metric)}, gap {gap:+.3f} (one-sided t-test {reference} > {comparator}: "
                 f"{_p_text(outcome.p_value)}, n = {outcome.n_reference}/{outcome.n_comparator})."]
        for method in (comparator, reference):
            if (method, setting) in peaks.index:
                peak = peaks.loc[(method, setting)]
                parts.append(f"{method} peaks at epoch {int(peak['peak_epoch'])} ({peak['peak_mean']:.3f}) and ends "
                             f"{peak['peak_mean'] - peak['last_mean']:.3f} below it.")
        fits = [(method, _last_mean(finals, method, setting, "correction/fit_flipped")) for method in (comparator, reference)]
        if all(np.isfinite(value) for _, value in fits):
            parts.append("At the last epoch the model fits the flipped observed label on "
                         + ", ".join(f"{100 * value:.0f} % ({method})" for method, value in fits)
                         + " of flipped train pairs.")
        aucs = {name: [_last_mean(finals, reference, setting, f"correction/auc_{name}_{suffix}")
                       for suffix, _ in CLASS_LABELS] for name in ("z_tilde", "bce")}
        if all(np.isfinite(value) for value in aucs["z_tilde"]):
            parts.append("Within-class ROC-AUC for flipped vs clean pairs (obs. + / obs. −; 0.5 = chance): "
                         f"Z̃ {aucs['z_tilde'][0]:.2f} / {aucs['z_tilde'][1]:.2f}, per-pair BCE "
                         f"{aucs['bce'][0]:.2f} / {aucs['bce'][1]:.2f}.")
        corrected = [_last_mean(finals, reference, setting, f"correction/accuracy_noisy_{kind}")
                     for kind in ("positive", "negative")]
        predicted = [_last_mean(finals, reference, setting, f"correction/prediction_accuracy_noisy_{kind}")
                     for kind in ("positive", "negative")]
        if all(np.isfinite(value) for value in corrected + predicted):
            parts.append("On flipped pairs the corrected labels are right on "
                         f"{100 * corrected[0]:.0f} % (obs. +) / {100 * corrected[1]:.0f} % (obs. −), the model's own "
                         f"prediction on {100 * predicted[0]:.0f} % / {100 * predicted[1]:.0f} %.")
        sentences.append(" ".join(parts))
    return sentences
