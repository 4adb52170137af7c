"""``python -m miracl_grid.analysis.report RUN_DIR``: every table and figure a run's results allow, in one report.md.

Reads ``RUN_DIR/results.parquet`` (or the Tune experiment directory, `miracl_grid.analysis.collect`),
decides from the ``sweep`` column which of the paper's outputs apply, and writes
``report.md`` with tables (also as Markdown/CSV/LaTeX under ``tables/``) and figures (PNG and
SVG under ``figures/``):

=================  ===========================================================================
sweep              outputs
=================  ===========================================================================
main               Tables 2/3/10 for mAP, F1, F1_class; Tables 7/8 (significance); Table 6
lambda_cons        Fig. 3 (λ_cons sensitivity) and the table of the curve
alpha              α sensitivity figure and table
ablation           Table 4
stability          Table 9
other names        a method × noise-setting table, plus a sensitivity figure per numeric factor
any sweep with     Fig. 4 (correction accuracy per epoch) and set sizes; Fig. 5/7 histograms
correction data    where trials stored selection artifacts
=================  ===========================================================================

followed by the exact configurations (constant and varying ``config/*`` columns, and one CSV
row per trial), the nominal and realised noise rates per setting, and provenance (code
version, dirty flag, cohort hash, text encoder and revision, library versions).
A sweep with expected cells missing is an error unless ``--allow-partial`` (then the missing
cells are listed and marked in the tables).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from miracl_grid.analysis.collect import (FINISHED_STATUS, METHOD_LABEL, NOISE_SETTING, SEED_COLUMN,
                              IncompleteSweepError, ResultsError, annotate, config_columns, design_factors,
                              expected_cells_from_trials, format_cell, last_epoch, load_results, missing_by_sweep,
                              noise_setting_order, varying_and_constant)
from miracl_grid.analysis.figures import (CORRECTION_CURVES, SET_SIZE_CURVES, correction_accuracy_plot, epoch_panels_plot,
                              has_columns, method_epoch_plot, save_figure, selection_components_plot,
                              selection_histogram_plot, sensitivity_plot, set_size_plot)
from miracl_grid.analysis.labels import ABLATION_LABELS, REFERENCE_METHOD, method_sort_key
from miracl_grid.analysis.mechanism import (CORRECTION_COLUMNS, MEMORISATION_COLUMNS, SET_COLUMNS, auc_columns,
                                diagnostics_table, epoch_peak_table, findings, run_context)
from miracl_grid.analysis.tables import (STABILITY_METRICS, Table, ablation_table, comparison_table, markdown_code,
                             markdown_text, metric_name, noise_rate_table, runtime_table, sensitivity_table,
                             significance_report, slug, stability_table)
from miracl_grid.grid.sweeps import SWEEPS
from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.registry import display_label
from miracl_grid.trainables.selection_artifact import ArtifactError, load_selection_artifact

logger = logging.getLogger(__name__)

REPORT_FILENAME = "report.md"
KNOWN_SWEEPS = tuple(SWEEPS)        # the grid's named sweeps, in their order
COMPARISON_METRICS = ("test/mAP", "test/F1", "test/F1_class")
# The paper's defaults (METHOD §7, the TrialConfig defaults): per-epoch diagnostics of a sensitivity
# sweep are shown at these values.
PAPER_DEFAULTS: dict[str, float] = {f"config/{name}": getattr(TrialConfig(), name) for name in ("lambda_cons", "alpha")}
SEED_LIKE = {SEED_COLUMN, "config/gmm_seed", "config/noise_seed"}
PROVENANCE_COLUMNS = ("provenance/data_source", "provenance/preset", "provenance/code_version",
                      "provenance/code_dirty", "provenance/cohort_hash", "provenance/text_encoder",
                      "provenance/text_encoder_revision", "provenance/config_hash")
MAX_ARTIFACT_FIGURES = 4


class _Writer:
    """Collects Markdown lines and writes tables/figures next to the report."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.context = ""            # run_context of the current sweep: added to captions lacking it
        self.lines: list[str] = []
        self.tables_dir = out_dir / "tables"
        self.figures_dir = out_dir / "figures"

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def heading(self, level: int, text: str) -> None:
        self.lines.extend(["", f"{'#' * level} {text}", ""])

    def table(self, table: Table, prefix: str = "") -> None:
        if prefix:
            table.name = f"{prefix}_{table.name}"
        if self.context and not any("seed(s)" in note for note in table.notes):
            table.notes.append(self.context)
        paths = table.write(self.tables_dir)
        self.lines.append(table.to_markdown())
        links = ", ".join(f"[{kind}]({path.relative_to(self.out_dir).as_posix()})" for kind, path in paths.items()
                          if kind != "md")
        self.lines.extend(["", f"<sub>{links}</sub>", ""])

    def figure(self, figure: Any, name: str, caption: str) -> None:
        if self.context and "seed(s)" not in caption:
            caption = f"{caption} — {self.context}"
        paths = save_figure(figure, self.figures_dir / slug(name))
        png = next(path for path in paths if path.suffix == ".png")
        svg = [path for path in paths if path.suffix == ".svg"]
        caption = markdown_text(caption)
        self.lines.append(f"![{caption}]({png.relative_to(self.out_dir).as_posix()})")
        if svg:
            self.lines.append(f"<sub>{caption} ([svg]({svg[0].relative_to(self.out_dir).as_posix()}))</sub>")
        self.lines.append("")

    def note(self, text: str) -> None:
        self.lines.extend([f"> {text}", ""])

    def write(self) -> Path:
        path = self.out_dir / REPORT_FILENAME
        path.write_text("\n".join(self.lines).strip() + "\n")
        return path


def _value_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "None"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _key_value_table(name: str, title: str, items: Mapping[str, Any], header: tuple[str, str]) -> Table:
    text = pd.DataFrame({header[1]: [_value_text(value) for value in items.values()]},
                        index=pd.Index(list(items), name=header[0]))
    return Table(name, title, text)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def _run_section(writer: _Writer, frame: pd.DataFrame, source: str) -> None:
    writer.heading(2, "Run")
    trials = last_epoch(frame)
    writer.add(f"- data, preset, epochs, seeds: {markdown_text(run_context(trials))}",
               f"- results: {markdown_code(source)}",
               f"- generated: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
               f"- sweeps: {', '.join(markdown_code(name) for name in sorted(frame['sweep'].unique()))}",
               f"- trials: {len(trials)} ({', '.join(f'{markdown_text(status)} {count}' for status, count in trials['status'].value_counts().items())}); "
               f"epoch rows: {len(frame)}")


def _completeness_section(writer: _Writer, missing: list[dict[str, Any]], frame: pd.DataFrame,
                          how: str) -> None:
    writer.heading(2, "Completeness")
    if not missing:
        writer.add(f"All expected cells have a finished trial ({how}).")
        return
    writer.add(f"**{len(missing)} expected cell(s) have no finished trial** ({how}); tables mark the "
               "affected cells with † and empty ones with —:", "")
    writer.add(*[f"- {markdown_text(format_cell(cell))}" for cell in missing[:200]])
    if len(missing) > 200:
        writer.add(f"- … and {len(missing) - 200} more")
    failed = last_epoch(frame).loc[lambda rows: rows["status"] != FINISHED_STATUS, ["trial_id", "status", "epoch"]]
    if not failed.empty:
        writer.add("", "Trials that did not finish:", "")
        writer.add(*[f"- {markdown_code(row.trial_id)}: {markdown_text(row.status)} after epoch {row.epoch}"
                     for row in failed.itertuples()])


def _missing_for(missing: Iterable[Mapping[str, Any]], sweep: str) -> list[dict[str, Any]]:
    return [dict(cell) for cell in missing if cell.get("sweep", sweep) == sweep]


def _main_sections(writer: _Writer, finals: pd.DataFrame, sweep: str, metric: str, paired: bool,
                   missing: list[dict[str, Any]]) -> None:
    metrics = [metric] + [name for name in COMPARISON_METRICS if name != metric]
    for name in metrics:
        if name not in finals.columns or finals[name].notna().sum() == 0:
            continue
        suffix = " (Tables 2/3/10)" if name == "test/mAP" else ""
        writer.heading(3, f"Comparison: test {metric_name(name)}{suffix}")
        writer.table(comparison_table(finals, name, paired=paired, missing=missing), prefix=sweep)
    if REFERENCE_METHOD in set(finals[METHOD_LABEL]):
        for name in metrics:
            if name not in finals.columns or finals[name].notna().sum() == 0:
                continue
            suffix = " (Tables 7/8)" if name == metric else ""
            writer.heading(3, f"Significance vs second-best: test {metric_name(name)}{suffix}")
            writer.table(significance_report(finals, name, paired=paired), prefix=sweep)
    if "time/trial_wall_s" in finals.columns and finals["time/trial_wall_s"].notna().any():
        writer.heading(3, "Computation time (Table 6)")
        writer.table(runtime_table(finals), prefix=sweep)


def _sensitivity_sections(writer: _Writer, finals: pd.DataFrame, sweep: str, parameter: str,
                          metric: str) -> None:
    """Fig. 3-style curve per method that varies `parameter`; methods run at one value only (the
    FlexCare baseline of the λ_cons sweep) are drawn as dashed reference lines."""
    bare = parameter.removeprefix("config/")
    symbol = {"lambda_cons": "λ_cons", "alpha": "α"}.get(bare, bare)
    reference = " (Fig. 3)" if bare == "lambda_cons" else ""
    writer.heading(3, f"Sensitivity to {markdown_text(symbol)}{reference}")
    counts = finals.groupby(METHOD_LABEL)[parameter].nunique()
    swept = sorted(counts.index[counts > 1], key=method_sort_key)
    baseline = finals.loc[finals[METHOD_LABEL].isin(counts.index[counts <= 1])]
    for method in swept:
        subset = finals.loc[finals[METHOD_LABEL] == method]
        label = "" if len(swept) == 1 else f"_{slug(method)}"
        title = f"Impact of {symbol}" + ("" if len(swept) == 1 else f" ({method})")
        figure = sensitivity_plot(subset, bare, metric, output=None, title=title,
                                  baseline=baseline if not baseline.empty else None)
        against = (f"; dashed: {', '.join(sorted(baseline[METHOD_LABEL].unique()))} (no {symbol}) per noise setting"
                   if not baseline.empty else "")
        writer.figure(figure, f"{sweep}_sensitivity_{slug(bare)}{label}",
                      f"{title}: last-epoch test {metric_name(metric)} of {method}, mean ± std across seeds{against} "
                      f"— {run_context(finals)}")
        table = sensitivity_table(subset, bare, metric, name=f"sensitivity_{slug(bare)}{label}_{slug(metric)}")
        writer.table(table, prefix=sweep)


def _comparison_at_default(writer: _Writer, finals: pd.DataFrame, sweep: str, parameter: str, metric: str,
                           paired: bool) -> None:
    """MIRACL at the paper's default of `parameter` against the methods run without it (FlexCare):
    the comparison table with stars and the one-sided t-tests (METHOD §12)."""
    default = PAPER_DEFAULTS.get(parameter)
    counts = finals.groupby(METHOD_LABEL)[parameter].nunique()
    others = finals.loc[finals[METHOD_LABEL].isin(counts.index[counts <= 1])
                        & (finals[METHOD_LABEL] != REFERENCE_METHOD)]
    mine = finals.loc[(finals[METHOD_LABEL] == REFERENCE_METHOD)
                      & np.isclose(finals[parameter].astype(float), default if default is not None else np.nan)]
    if others.empty or mine.empty:
        return
    pair = pd.concat([mine, others])
    symbol = {"config/lambda_cons": "λ_cons", "config/alpha": "α"}.get(parameter, parameter)
    writer.heading(3, f"{REFERENCE_METHOD} (at {symbol} = {default:g}) vs {', '.join(sorted(others[METHOD_LABEL].unique()))}")
    writer.add(f"Last-epoch test {metric_name(metric)} — {run_context(pair)}.", "")
    writer.table(comparison_table(pair, metric, paired=paired, name=f"comparison_default_{slug(metric)}"), prefix=sweep)
    writer.table(significance_report(pair, metric, paired=paired, name=f"significance_default_{slug(metric)}"),
                 prefix=sweep)


# MIRACL's reference arm in the main/λ_cons sweeps (BCE on FlexCare) and in the ablation sweep
COMPARATORS = (display_label("bce"), ABLATION_LABELS["baseline"])
AUC_CHANCE = "chance/auc"


def _held_rows(frame: pd.DataFrame, factors: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Rows for per-epoch diagnostics: every method, with each non-design factor a method varies
    (λ_cons, α) held at the paper default (else its first value); methods run at one value only
    (a baseline) are kept whole."""
    rows = frame
    held = []
    for factor in factors:
        if factor in (METHOD_LABEL, NOISE_SETTING) or factor in SEED_LIKE:
            continue
        counts = rows.groupby(METHOD_LABEL)[factor].nunique()
        varying = counts.index[counts > 1]
        if varying.empty:
            continue
        values = rows.loc[rows[METHOD_LABEL].isin(varying), factor].dropna().unique()
        default = PAPER_DEFAULTS.get(factor)
        numeric = np.issubdtype(np.asarray(values).dtype, np.number)
        keep = default if default is not None and numeric and np.isclose(values.astype(float), default).any() \
            else values[0]
        matches = np.isclose(rows[factor].astype(float), float(keep)) if numeric else rows[factor] == keep
        rows = rows.loc[~rows[METHOD_LABEL].isin(varying) | matches]
        held.append(f"{factor.removeprefix('config/')} = {_value_text(keep)}")
    return rows, held


def _findings_section(writer: _Writer, rows: pd.DataFrame, factors: Sequence[str], metric: str) -> None:
    """"What this run shows": MIRACL − comparator per noise setting, whatever the sign."""
    rows, held = _held_rows(rows, factors)
    present = set(rows[METHOD_LABEL])
    comparator = next((name for name in COMPARATORS if name in present), None)
    if REFERENCE_METHOD not in present or comparator is None:
        return
    pair = rows.loc[rows[METHOD_LABEL].isin([REFERENCE_METHOD, comparator])]
    sentences = findings(pair, reference=REFERENCE_METHOD, comparator=comparator, metric=metric)
    if not sentences:
        return
    writer.heading(3, "What this run shows")
    where = f", {', '.join(held)}" if held else ""
    writer.add(f"Measured, not claimed — {run_context(pair)}{where}:", "")
    writer.add(*[f"- {sentence}" for sentence in sentences], "")


def _diagnostics_sections(writer: _Writer, frame: pd.DataFrame, sweep: str, factors: Sequence[str],
                          run_dir: Path | None, metric: str = "test/mAP") -> None:
    rows, held = _held_rows(frame, factors)
    context = run_context(rows)
    where = f"; shown at {', '.join(held)}" if held else ""
    finals = last_epoch(rows, finished_only=True)
    if has_columns(rows, [metric]):
        writer.heading(3, f"Test {metric_name(metric)} per epoch")
        writer.figure(method_epoch_plot(rows, metric, ylabel=f"test {metric_name(metric)}"),
                      f"{sweep}_epoch_{slug(metric)}",
                      f"Test {metric_name(metric)} per epoch, mean ± std across seeds — {context}{where}")
        writer.table(epoch_peak_table(rows, metric, context=context + where), prefix=sweep)
    if has_columns(rows, ["correction/fit_flipped"]):
        writer.heading(3, "Memorisation of the flipped labels")
        writer.add("Share of train pairs whose observed label the model fits, (p > 0.5) == ỹ: flipped pairs "
                   "(solid; fitting them is memorising the noise) and clean pairs (dotted).", "")
        writer.figure(method_epoch_plot(rows, "correction/fit_flipped", ylabel="share of pairs fitting ỹ",
                                        second="correction/fit_clean", second_label="(clean pairs)"),
                      f"{sweep}_memorisation", f"Memorisation per epoch, mean ± std across seeds — {context}{where}")
        writer.table(diagnostics_table(finals, MEMORISATION_COLUMNS, name="memorisation",
                                       title="Memorisation at the last epoch",
                                       note=f"Last-epoch share of flipped / clean train pairs with (p > 0.5) == ỹ; "
                                            f"mean ± std (ddof 0) across seeds — {context}{where}."), prefix=sweep)
    miracl = rows.loc[rows[METHOD_LABEL] == REFERENCE_METHOD] if REFERENCE_METHOD in set(rows[METHOD_LABEL]) else rows
    mine = f"{REFERENCE_METHOD} — {run_context(miracl)}{where}"
    columns = [column for column, _, _ in CORRECTION_CURVES]
    if has_columns(miracl, columns):
        writer.heading(3, "Correction diagnostics (Fig. 4)")
        writer.add("Per epoch on the train split: accuracy of corrected labels on pairs the noise left unchanged "
                   "(blue), on flipped pairs after correction (orange), and of the model's own prediction on "
                   "flipped pairs (green). The observed label is wrong on every flipped pair by definition, so "
                   "the fair baseline for the corrected labels is the green curve, not 0.", "")
        writer.figure(correction_accuracy_plot(miracl), f"{sweep}_correction_accuracy",
                      f"Correction accuracy per epoch, mean ± std across seeds — {mine}")
    honest = [("flipped, observed +", [("correction/accuracy_noisy_positive", "corrected label", "tab:orange", False),
                                       ("correction/prediction_accuracy_noisy_positive", "model prediction",
                                        "tab:green", False)]),
              ("flipped, observed −", [("correction/accuracy_noisy_negative", "corrected label", "tab:orange", False),
                                       ("correction/prediction_accuracy_noisy_negative", "model prediction",
                                        "tab:green", False)]),
              ("soft-label error", [("correction/soft_error_corrected", "|ỹ_corr − y|", "tab:orange", False),
                                    ("correction/soft_error_observed", "|ỹ − y| (observed)", "gray", True)])]
    if has_columns(miracl, ["correction/accuracy_noisy_positive", "correction/prediction_accuracy_noisy_positive"]):
        writer.heading(3, "Flipped pairs: corrected label vs the model's own prediction")
        writer.add("Accuracy against the clean label on truly flipped train pairs, split by observed class, and the "
                   "mean soft-label error over all train pairs of the corrected labels vs the observed ones.", "")
        writer.figure(epoch_panels_plot(miracl, honest, ylabel="accuracy / error"), f"{sweep}_flipped_pairs",
                      f"Flipped pairs per epoch, mean ± std across seeds — {mine}")
        writer.table(diagnostics_table(last_epoch(miracl, finished_only=True), CORRECTION_COLUMNS,
                                       name="flipped_pairs", title="Flipped pairs at the last epoch",
                                       note=f"Last epoch, mean ± std (ddof 0) across seeds — {mine}."), prefix=sweep)
    quality = [(f"{text}: {name}", [(f"correction/noisy_set_{name}_{suffix}", f"noisy-set {name}", colour, False),
                                   (f"correction/{chance}_{suffix}", chance_label, "gray", True)])
               for suffix, text in (("pos", "observed +"), ("neg", "observed −"))
               for name, colour, chance, chance_label in (
                   ("precision", "tab:brown", "flip_rate", "chance: the class's flip rate"),
                   ("recall", "tab:purple", "noisy_share", "chance: share put in the noisy set"))]
    if has_columns(miracl, ["correction/noisy_set_precision_pos", "correction/noisy_set_precision_neg"]):
        writer.heading(3, "Selection quality per observed class")
        writer.add("Precision of the noisy set against the class's own flip rate (what a random set of the same "
                   "size would reach) and recall against the share of the class put in the noisy set (a random "
                   "set's recall); then the three set sizes per class.", "")
        writer.figure(epoch_panels_plot(miracl, quality), f"{sweep}_selection_quality",
                      f"Noisy-set precision and recall per observed class with chance lines — {mine}")
        sizes = [(text, [(f"correction/size_{name}_{suffix}", name, colour, False)
                         for name, colour in (("clean", "tab:blue"), ("uncertain", "tab:gray"), ("noisy", "tab:red"))])
                 for suffix, text in (("pos", "observed +"), ("neg", "observed −"))]
        writer.figure(epoch_panels_plot(miracl, sizes, ylabel="pairs in set"), f"{sweep}_set_sizes_by_class",
                      f"Set sizes per observed class — {mine}")
    if has_columns(rows, [column for column, _ in SET_COLUMNS]):
        writer.table(diagnostics_table(finals, SET_COLUMNS, name="selection_sets",
                                       title="Selection sets, Z⁻ and same-patient batches at the last epoch",
                                       note="Per observed class: flip rate (= chance precision), share in the noisy "
                                            "set (= chance recall), noisy-set precision and recall; share of observed "
                                            "negatives inside Z⁻ (Eq. 6); share of stays whose batch holds another stay "
                                            f"of the same patient (Eq. 9 positives). Mean ± std (ddof 0) — {context}{where}."),
                     prefix=sweep)
    aucs = auc_columns()
    if has_columns(rows, [column for column, _ in aucs]):
        writer.heading(3, "Selection signals: within-class ROC-AUC for flipped vs clean pairs")
        panels = [(text, [(f"correction/auc_{signal}_{suffix}", label, colour, False)
                          for (signal, label), colour in zip(
                              (("rank", "rank R"), ("difficulty_durations", "difficulty (durations)"),
                               ("difficulty_events", "difficulty (events)"), ("bce", "per-pair BCE"),
                               ("z_tilde", "Z̃")), ("tab:blue", "tab:green", "tab:olive", "tab:orange", "tab:red"))]
                   + [(AUC_CHANCE, "chance 0.5", "gray", True)])
                  for suffix, text in (("pos", "observed +"), ("neg", "observed −"))]
        writer.figure(epoch_panels_plot(miracl.assign(**{AUC_CHANCE: 0.5}), panels, ylabel="ROC-AUC"),
                      f"{sweep}_selection_auc",
                      f"Within-class ROC-AUC of each selection signal per epoch (larger = more likely flipped) — {mine}")
        writer.table(diagnostics_table(finals, aucs, name="selection_auc", decimals=2,
                                       title="Within-class ROC-AUC of the selection signals at the last epoch",
                                       note="Pairs of one observed class pooled over labels; flipped = positive; "
                                            "0.5 = chance, below 0.5 = anti-informative. Z̃ exists only where MIRACL "
                                            f"selects. Mean ± std (ddof 0) — {context}{where}."), prefix=sweep)
    if has_columns(miracl, [column for column, _, _ in SET_SIZE_CURVES]):
        writer.heading(3, "Selection set sizes per epoch")
        writer.add("Sizes of the clean / uncertain / noisy sets and the noisy set's recall and precision "
                   "against the true flips.", "")
        writer.figure(set_size_plot(miracl), f"{sweep}_set_sizes", f"Set sizes per epoch — {mine}")
    _artifact_sections(writer, miracl, sweep, run_dir)


def _artifact_sections(writer: _Writer, rows: pd.DataFrame, sweep: str, run_dir: Path | None) -> None:
    column = "artifact/selection_path"
    if column not in rows.columns:
        return
    stored = rows.loc[rows[column].fillna("").astype(str) != ""]
    if stored.empty:
        return
    writer.heading(3, "Selection-metric distributions (Fig. 5/7)")
    shown = 0
    for setting in noise_setting_order(stored):
        if shown >= MAX_ARTIFACT_FIGURES:
            writer.note(f"further artifacts not shown (limit {MAX_ARTIFACT_FIGURES})")
            break
        subset = stored.loc[stored[NOISE_SETTING] == setting].sort_values([SEED_COLUMN, "epoch"])
        first_trial = subset["trial_id"].iloc[0]
        row = subset.loc[subset["trial_id"] == first_trial].iloc[-1]
        path = Path(str(row[column]))
        if not path.is_absolute() and run_dir is not None:
            path = run_dir / path
        try:
            artifact = load_selection_artifact(path)
        except ArtifactError as error:
            writer.note(markdown_text(f"{row[METHOD_LABEL]}, {setting}: {error}"))
            continue
        caption = (f"{row[METHOD_LABEL]}, {setting}, seed {_value_text(row[SEED_COLUMN])}, epoch "
                   f"{artifact.epoch if artifact.epoch is not None else row['epoch']}: Z̃ histograms by partition "
                   "with the fitted 2-component GMM")
        name = f"{sweep}_selection_{slug(setting)}"
        writer.figure(selection_histogram_plot(artifact, title=caption), name, caption)
        if artifact.flipped is not None and artifact.components:
            writer.figure(selection_components_plot(artifact, 0), f"{name}_components",
                          f"{row[METHOD_LABEL]}, {setting}: selection-metric components, clean vs flipped pairs")
        shown += 1


def _config_section(writer: _Writer, frame: pd.DataFrame) -> None:
    writer.heading(2, "Configurations")
    finals = last_epoch(frame)
    for sweep, group in finals.groupby("sweep", sort=True):
        columns = config_columns(group)
        varying, constant = varying_and_constant(group, columns)
        writer.heading(3, f"Sweep {markdown_code(sweep)}")
        listing = group[["trial_id", "status", "epoch", *columns]]
        path = writer.tables_dir / f"{slug(sweep)}_trial_configs.csv"
        writer.tables_dir.mkdir(parents=True, exist_ok=True)
        listing.to_csv(path, index=False)
        writer.add(f"{len(group)} trials; full config of every trial: "
                   f"[{path.relative_to(writer.out_dir).as_posix()}]({path.relative_to(writer.out_dir).as_posix()}).", "")
        if varying:
            shown = [column for column in varying if column not in SEED_LIKE]
            writer.add("Varying fields: " + "; ".join(
                f"{markdown_code(column.removeprefix('config/'))} ∈ "
                f"{{{markdown_text(', '.join(_value_text(value) for value in dict.fromkeys(group[column].tolist())))}}}"
                for column in varying), "")
            if shown:
                combos = (group[shown].astype(object).map(_value_text).value_counts(sort=False).reset_index(name="trials"))
                combos.columns = [column.removeprefix("config/") for column in shown] + ["trials"]
                table = Table(f"{sweep}_varying_configs", f"Distinct configurations of sweep {sweep}",
                              combos.set_index(combos.columns[0]).astype(str))
                writer.add("<details><summary>distinct combinations of the varying fields "
                           f"({len(combos)})</summary>", "")
                writer.table(table)
                writer.add("</details>", "")
        constant_table = _key_value_table(f"{sweep}_constant_config", f"Constant fields of sweep {sweep}",
                                          {key.removeprefix("config/"): value for key, value in constant.items()},
                                          ("field", "value"))
        writer.add(f"<details><summary>constant fields ({len(constant)})</summary>", "")
        writer.table(constant_table)
        writer.add("</details>", "")


def _noise_section(writer: _Writer, finals: pd.DataFrame) -> None:
    writer.heading(2, "Noise settings and realised rates")
    writer.table(noise_rate_table(finals))


def _provenance_section(writer: _Writer, finals: pd.DataFrame) -> None:
    writer.heading(2, "Provenance")
    present = [column for column in PROVENANCE_COLUMNS if column in finals.columns]
    if not present and "provenance/versions" not in finals.columns:
        writer.add("The results carry no provenance columns.")
        return
    items: dict[str, str] = {}
    for column in present:
        counts = finals[column].astype(object).map(_value_text).value_counts()
        if column == "provenance/config_hash":
            items[column.removeprefix("provenance/")] = f"{len(counts)} distinct"
            continue
        items[column.removeprefix("provenance/")] = "; ".join(
            f"{value}" + (f" ({count} trials)" if len(counts) > 1 else "") for value, count in counts.items())
    writer.table(_key_value_table("provenance", "Provenance", items, ("field", "value(s)")))
    warnings = []
    if "provenance/code_dirty" in finals.columns and finals["provenance/code_dirty"].astype(object).map(
            lambda value: str(value).lower() in ("true", "1")).any():
        warnings.append("some trials ran from a working tree with uncommitted changes (code_dirty)")
    for column in ("provenance/code_version", "provenance/cohort_hash"):
        if column in finals.columns and finals[column].nunique(dropna=False) > 1:
            warnings.append(f"trials differ in {column.removeprefix('provenance/')}")
    for warning in warnings:
        writer.note(f"**Warning:** {warning}.")
    if "provenance/versions" in finals.columns:
        versions: dict[str, set[str]] = {}
        for blob in finals["provenance/versions"].dropna().unique():
            try:
                parsed = json.loads(blob) if isinstance(blob, str) else dict(blob)
            except (TypeError, ValueError):
                logger.warning("provenance/versions value is not JSON: %r", blob)
                continue
            for library, version in parsed.items():
                versions.setdefault(str(library), set()).add(str(version))
        if versions:
            writer.heading(3, "Library versions")
            writer.table(_key_value_table("versions", "Library versions",
                                          {library: ", ".join(sorted(values)) for library, values in sorted(versions.items())},
                                          ("library", "version")))


def _sweep_kind(sweep: str, finals: pd.DataFrame, factors: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, parameter) sections that apply to one sweep (module doc table)."""
    if sweep == "main":
        return [("comparison", "")]
    if sweep == "lambda_cons":
        return [("sensitivity", "config/lambda_cons")]
    if sweep == "alpha":
        return [("sensitivity", "config/alpha")]
    if sweep == "ablation":
        return [("ablation", "")]
    if sweep == "stability":
        return [("stability", "")]
    sections = [("comparison", "")]
    for factor in factors:
        if factor.startswith("config/") and factor not in SEED_LIKE and pd.api.types.is_numeric_dtype(finals[factor]):
            sections.append(("sensitivity", factor))
    if "config/gmm_seed" in factors:
        sections.append(("stability", ""))
    return sections


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def build_report(frame: pd.DataFrame, out_dir: str | Path, *, allow_partial: bool = False,
                 metric: str = "test/mAP", paired: bool = False,
                 expected_cells: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None,
                 run_dir: str | Path | None = None, source: str = "",
                 expected_description: str = "expected cells as given by the caller") -> Path:
    """Write ``report.md`` (plus ``tables/`` and ``figures/``) for a results frame; returns its path.

    frame: results (all epochs; `load_results` output). metric: the primary metric (tables come
    for mAP, F1 and F1_class; sensitivity and significance use `metric` first). expected_cells:
    as in `check_complete` (default: inferred per sweep). Raises `IncompleteSweepError` when
    cells are missing and not `allow_partial`; `ResultsError` for an empty frame or unknown metric.
    """
    if frame.empty:
        raise ResultsError("the results contain no rows")
    if metric not in frame.columns:
        metrics = [column for column in frame.columns if column.startswith("test/")]
        raise ResultsError(f"metric '{metric}' is not in the results (test metrics present: {', '.join(metrics) or 'none'})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(run_dir) if run_dir is not None else None
    frame = annotate(frame)
    how = expected_description
    if expected_cells is None:
        how = ("expected cells = the product of each sweep's observed methods, noise settings, seeds and "
               "other design factors")
    if expected_cells is not None and not isinstance(expected_cells, pd.DataFrame):
        expected_cells = pd.DataFrame([dict(cell) for cell in expected_cells])
    missing = missing_by_sweep(frame, expected_cells, allow_partial=allow_partial)
    finals = last_epoch(frame, finished_only=True)
    if finals.empty:
        raise ResultsError("no trial has finished (status TERMINATED); nothing to report")

    writer = _Writer(out_dir)
    writer.add("# MIRACL grid report")
    _run_section(writer, frame, source or str(run_dir or ""))
    _completeness_section(writer, missing, frame, how)
    for sweep in sorted(frame["sweep"].unique(), key=lambda name: (name not in KNOWN_SWEEPS,
                                                                   KNOWN_SWEEPS.index(name) if name in KNOWN_SWEEPS else 0, name)):
        sweep_finals = finals.loc[finals["sweep"] == sweep]
        sweep_rows = frame.loc[(frame["sweep"] == sweep) & frame["trial_id"].isin(sweep_finals["trial_id"])]
        writer.heading(2, f"Sweep: {markdown_text(sweep)}")
        writer.context = run_context(sweep_finals)
        if sweep_finals.empty:
            writer.add("No finished trial in this sweep.")
            continue
        factors = design_factors(sweep_finals)
        sweep_missing = _missing_for(missing, sweep)
        _findings_section(writer, sweep_rows, factors, metric)
        for kind, parameter in _sweep_kind(sweep, sweep_finals, factors):
            if kind == "comparison":
                _main_sections(writer, sweep_finals, sweep, metric, paired, sweep_missing)
            elif kind == "sensitivity":
                if parameter not in sweep_finals.columns:
                    writer.note(f"{markdown_code(parameter)} is not in the results; no sensitivity curve.")
                    continue
                if sweep_finals.groupby(METHOD_LABEL)[parameter].nunique().max() < 2:
                    writer.note(f"{markdown_code(parameter)} does not vary in this sweep; no sensitivity curve.")
                else:
                    _sensitivity_sections(writer, sweep_finals, sweep, parameter, metric)
                _comparison_at_default(writer, sweep_finals, sweep, parameter, metric, paired)
            elif kind == "ablation":
                writer.heading(3, f"Ablation: test {metric_name(metric)} (Table 4)")
                writer.table(ablation_table(sweep_finals, metric, missing=sweep_missing), prefix=sweep)
            elif kind == "stability":
                writer.heading(3, "Stability under GMM initialisation seeds (Table 9)")
                metrics = [name for name in dict.fromkeys([metric, *STABILITY_METRICS]) if name in sweep_finals.columns]
                writer.table(stability_table(sweep_finals, metrics), prefix=sweep)
        _diagnostics_sections(writer, sweep_rows, sweep, factors, run_dir, metric)
    writer.context = ""
    _config_section(writer, frame)
    _noise_section(writer, finals)
    _provenance_section(writer, finals)
    path = writer.write()
    logger.info("report written to %s", path)
    return path


def write_report(run_dir: str | Path, *, allow_partial: bool = False, metric: str = "test/mAP",
                 out: str | Path | None = None, paired: bool = False,
                 expected_cells: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None) -> Path:
    """Load `run_dir` (results.parquet or Tune directory) and write ``report.md`` under `out`
    (default: `run_dir`, or the folder of a results file). Returns the report's path.
    Expected cells default to the sweep's registered trials (``trials.parquet``) where the grid
    wrote them, else they are inferred from the results."""
    run_dir = Path(run_dir)
    frame, trials = load_results(run_dir)
    base = run_dir if run_dir.is_dir() else run_dir.parent
    description = "expected cells as given by the caller"
    if expected_cells is None and trials is not None:
        expected_cells = expected_cells_from_trials(trials)
        description = (f"expected cells = every trial registered by the sweep's commands "
                       f"({len(trials)} in trials.parquet), finished or not")
    return build_report(frame, Path(out) if out is not None else base, allow_partial=allow_partial,
                        metric=metric, paired=paired, expected_cells=expected_cells, run_dir=base,
                        source=frame.attrs.get("source", str(run_dir)), expected_description=description)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m miracl_grid.analysis.report RUN_DIR [--allow-partial] [--metric M] [--out DIR] [--paired]``."""
    parser = argparse.ArgumentParser(prog="python -m miracl_grid.analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="run directory holding results.parquet (or a Ray Tune experiment dir)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="report a sweep with missing cells (listed and marked) instead of failing")
    parser.add_argument("--metric", default="test/mAP", help="primary metric column (default test/mAP)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR)")
    parser.add_argument("--paired", action="store_true",
                        help="paired t-test over shared seeds instead of the paper's two-sample test")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_dir = Path(arguments.run_dir)
    if not run_dir.exists():
        print(f"error: run directory '{run_dir}' does not exist", file=sys.stderr)
        return 2
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        print(f"error: run directory '{run_dir}' is empty (no results.parquet, no Tune trials)", file=sys.stderr)
        return 2
    try:
        path = write_report(run_dir, allow_partial=arguments.allow_partial, metric=arguments.metric,
                            out=arguments.out, paired=arguments.paired)
    except IncompleteSweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except ResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
