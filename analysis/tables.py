"""Paper-style tables from last-epoch results (METHOD §12; paper Tables 2–4, 6–10).

Every builder takes ``finals`` (one row per trial, `miracl_grid.analysis.collect.last_epoch` output) and
returns a `Table`: a wide frame of cell texts, a same-shaped frame of bold flags, and a long
frame of the numbers behind the cells. `Table.write(directory)` saves Markdown, CSV (the cell
texts), ``*_values.csv`` (the numbers) and a LaTeX tabular.

Conventions (the paper's): mean (std) across seeds with ``np.std`` (ddof 0); the best mean of
each column in bold, compared at the displayed precision (ties are all bold); significance
stars on MIRACL's cell from `miracl_grid.analysis.significance` (MIRACL vs the best other method).
A cell of a partial run with fewer seeds than expected carries '†'; one without any finished
trial shows '—'.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from miracl_grid.analysis.collect import METHOD_LABEL, NOISE_SETTING, ensure_annotated, noise_setting_order
from miracl_grid.analysis.labels import REFERENCE_METHOD, ablation_sort_key, method_sort_key, percent_text
from miracl_grid.analysis.significance import significance_table

logger = logging.getLogger(__name__)

MISSING_TEXT = "—"
PARTIAL_MARK = "†"
METRIC_NAMES: dict[str, str] = {"test/mAP": "mAP", "test/F1": "F1", "test/F1_class": "F1_class"}
STABILITY_METRICS: tuple[str, ...] = ("test/mAP", "test/F1", "test/F1_class")
_LATEX_REPLACEMENTS: dict[str, str] = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                                       "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                                       "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "--", "–": "--",
                                       "†": r"$^\dagger$", "ρ": r"$\rho$", "−": "-", "λ": r"$\lambda$",
                                       "α": r"$\alpha$"}
_LATEX_SPECIALS = re.compile("|".join(re.escape(key) for key in _LATEX_REPLACEMENTS))


def metric_name(metric: str) -> str:
    """'test/mAP' -> 'mAP'; other columns keep their name."""
    return METRIC_NAMES.get(metric, metric)


_MARKDOWN_SPECIALS = re.compile(r"([\\`*\[\]<>|~&#])")


def markdown_text(value: Any) -> str:
    """Text from configs, data or provenance made inert in Markdown: Markdown/HTML specials are
    backslash-escaped (not ``_``: field names keep their look; at worst it italicises) and line
    breaks become spaces, so a value cannot end a table cell, start a
    heading or list, open a link or image, or inject HTML into report.md."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(str(value).splitlines()))


def markdown_code(value: Any) -> str:
    """A value as an inline code span (no escapes apply inside one): backticks and line breaks,
    the only ways out of it, are replaced."""
    return "`" + " ".join(str(value).splitlines()).replace("`", "'") + "`"


def slug(text: str) -> str:
    """File-name-safe form: 'test/F1_class' -> 'test_F1_class'."""
    text = "".join(character if character.isalnum() or character in "-_." else "_" for character in text)
    return re.sub(r"_+", "_", text.replace(".", "_")).strip("_")


# --------------------------------------------------------------------------------------------
# The table object and its renderers
# --------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A rendered table. `text`: row labels × column labels of plain cell strings (index name
    is the header of the first column); `bold`: same shape, True where the cell is bold;
    `values`: long numeric form (CSV); `notes`: caption lines under the table."""
    name: str
    title: str
    text: pd.DataFrame
    bold: pd.DataFrame | None = None
    values: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    def _bold(self, row: int, column: int) -> bool:
        return bool(self.bold is not None and self.bold.iat[row, column])

    def to_markdown(self) -> str:
        """GitHub Markdown table (bold as ``**…**``; every cell through `markdown_text`, so
        significance stars read ``\\*``)."""
        def cell(text: Any, bold: bool = False) -> str:
            body = markdown_text(text)
            return f"**{body}**" if bold and body else body
        header = [self.text.index.name or "", *map(str, self.text.columns)]
        lines = ["| " + " | ".join(cell(item) for item in header) + " |",
                 "|" + "|".join([" --- "] + [" ---: "] * len(self.text.columns)) + "|"]
        for row_number, (label, row) in enumerate(self.text.iterrows()):
            cells = [cell(label)] + [cell(value, self._bold(row_number, column_number))
                                     for column_number, value in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        body = "\n".join(lines)
        if self.notes:
            body += "\n\n" + "\n".join(f"*{note}*" if note else "" for note in self.notes)
        return body

    def to_latex(self) -> str:
        """A ``tabular`` (booktabs rules) with bold as ``\\textbf`` and stars as superscripts."""
        def escape(text: Any) -> str:
            value = _LATEX_SPECIALS.sub(lambda match: _LATEX_REPLACEMENTS[match.group(0)], str(text))
            return re.sub(r"\*+", lambda match: f"$^{{{match.group(0)}}}$", value)

        def cell(text: Any, bold: bool) -> str:
            value = escape(text)
            return f"\\textbf{{{value}}}" if bold and value else value
        columns = "l" + "r" * len(self.text.columns)
        header = " & ".join(escape(item) for item in [self.text.index.name or "", *self.text.columns])
        rows = [" & ".join([escape(label)] + [cell(value, self._bold(row_number, column_number))
                                             for column_number, value in enumerate(row)]) + r" \\"
                for row_number, (label, row) in enumerate(self.text.iterrows())]
        return "\n".join([f"% {self.title}", f"\\begin{{tabular}}{{{columns}}}", r"\toprule",
                          header + r" \\", r"\midrule", *rows, r"\bottomrule", r"\end{tabular}", ""])

    def to_csv_frame(self) -> pd.DataFrame:
        """The cell texts with the row labels as the first column (CSV form)."""
        return self.text.reset_index()

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write ``NAME.md``, ``NAME.csv``, ``NAME.tex`` and (when there are numbers)
        ``NAME_values.csv`` under `directory`; returns {format: path}."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = slug(self.name)        # names carry sweep names from the results: no path separators
        paths = {"md": directory / f"{name}.md", "csv": directory / f"{name}.csv", "tex": directory / f"{name}.tex"}
        paths["md"].write_text(f"### {markdown_text(self.title)}\n\n{self.to_markdown()}\n")
        self.to_csv_frame().to_csv(paths["csv"], index=False)
        paths["tex"].write_text(self.to_latex())
        if self.values is not None:
            paths["values"] = directory / f"{name}_values.csv"
            self.values.to_csv(paths["values"], index=False)
        return paths


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def summary_statistics(finals: pd.DataFrame, metric: str, rows: str = METHOD_LABEL,
                       columns: str = NOISE_SETTING) -> pd.DataFrame:
    """Long frame: one row per (rows, columns) with mean, std (ddof 0), n, min, max of `metric`
    across trials (seeds); NaN metric values are left out of every statistic."""
    finals = ensure_annotated(finals)
    if metric not in finals.columns:
        raise KeyError(f"metric column '{metric}' is not in the results")
    grouped = finals.dropna(subset=[metric]).groupby([rows, columns], sort=False, dropna=False)[metric]
    summary = grouped.agg(mean="mean", std=lambda values: float(np.std(values.to_numpy(), ddof=0)),
                          n="count", min="min", max="max").reset_index()
    summary["n"] = summary["n"].astype(int)
    return summary


def _best_flags(means: pd.DataFrame, decimals: int) -> pd.DataFrame:
    """True where a cell's mean, rounded to `decimals`, equals its column's rounded maximum."""
    rounded = means.round(decimals)
    return rounded.eq(rounded.max(axis=0), axis=1) & rounded.notna()


def _format_mean_std(mean: float, std: float, decimals: int, style: str) -> str:
    if not np.isfinite(mean):
        return MISSING_TEXT
    if style == "pm":
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return f"{mean:.{decimals}f} ({std:.{decimals}f})"


def _partial_cells(missing: Iterable[Mapping[str, Any]] | None, rows: str, columns: str) -> set[tuple[str, str]]:
    marks: set[tuple[str, str]] = set()
    for cell in missing or ():
        if rows in cell and columns in cell:
            marks.add((str(cell[rows]), str(cell[columns])))
    return marks


def _grid_table(summary: pd.DataFrame, rows: str, columns: str, row_order: Sequence[str],
                column_order: Sequence[str], decimals: int, style: str,
                partial: set[tuple[str, str]], suffix: Callable[[str, str], str] | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    means = summary.pivot(index=rows, columns=columns, values="mean").reindex(index=row_order,
                                                                               columns=column_order)
    stds = summary.pivot(index=rows, columns=columns, values="std").reindex(index=row_order,
                                                                             columns=column_order)
    text = pd.DataFrame(index=pd.Index(row_order, name=rows), columns=list(column_order), dtype=object)
    for row in row_order:
        for column in column_order:
            value = _format_mean_std(means.at[row, column], stds.at[row, column], decimals, style)
            if value != MISSING_TEXT:
                if suffix is not None:
                    value += suffix(row, column)
                if (str(row), str(column)) in partial:
                    value += PARTIAL_MARK
            text.at[row, column] = value
    bold = _best_flags(means.astype(float), decimals)
    return text, bold


# --------------------------------------------------------------------------------------------
# Tables 2/3/10: method × noise setting
# --------------------------------------------------------------------------------------------
def comparison_table(finals: pd.DataFrame, metric: str = "test/mAP", *, reference: str = REFERENCE_METHOD,
                     paired: bool = False, decimals: int = 3, name: str | None = None,
                     title: str | None = None, missing: Iterable[Mapping[str, Any]] | None = None) -> Table:
    """Tables 2/3/10: rows = methods (paper order, MIRACL last), columns = noise settings,
    cells ``mean (std)`` of the last-epoch `metric` across seeds (ddof 0), best of each column
    bold, stars on the reference's cell from `significance_table` (one-sided t-test vs the best
    other method). `missing`: cells listed by `check_complete` (marked '†')."""
    finals = ensure_annotated(finals)
    summary = summary_statistics(finals, metric)
    row_order = sorted(summary[METHOD_LABEL].unique(), key=method_sort_key)
    column_order = [setting for setting in noise_setting_order(finals)
                    if setting in set(summary[NOISE_SETTING])]
    tests = significance_table(finals, metric, reference=reference, paired=paired)
    stars = dict(zip(tests[NOISE_SETTING], tests["stars"]))
    text, bold = _grid_table(summary, METHOD_LABEL, NOISE_SETTING, row_order, column_order, decimals, "paren",
                             _partial_cells(missing, METHOD_LABEL, NOISE_SETTING),
                             lambda row, column: stars.get(column, "") if row == reference else "")
    text.index.name = "Model"
    values = summary.merge(tests[[NOISE_SETTING, "comparator", "p_value", "stars"]], on=NOISE_SETTING, how="left")
    values.loc[values[METHOD_LABEL] != reference, ["comparator", "p_value", "stars"]] = np.nan
    values["is_best"] = [bool(bold.at[row, column]) for row, column in
                         zip(values[METHOD_LABEL], values[NOISE_SETTING])]
    values.insert(0, "metric", metric)
    test_name = "paired t-test over shared seeds" if paired else "two-sample Student's t-test, equal variances"
    notes = [f"Last-epoch test {metric_name(metric)}: mean (std, ddof 0) across seeds; best mean per column "
             f"in bold. Stars on {reference}: one-sided {test_name} vs the best other method "
             "(* p<0.05, ** p<0.01, *** p<0.001)."]
    if missing:
        notes.append(f"{PARTIAL_MARK} fewer seeds than expected; {MISSING_TEXT} no finished trial.")
    return Table(name or f"comparison_{slug(metric)}",
                 title or f"Comparison of methods: last-epoch test {metric_name(metric)} (Tables 2/3/10)",
                 text, bold, values, notes)


def significance_report(finals: pd.DataFrame, metric: str = "test/mAP", *, reference: str = REFERENCE_METHOD,
                        paired: bool = False, decimals: int = 5, name: str | None = None) -> Table:
    """Tables 7/8: per noise setting the best other method, its and MIRACL's mean, the one-sided
    p-value, stars and (for degenerate cases) the reason the p-value is NaN/0/1."""
    tests = significance_table(finals, metric, reference=reference, paired=paired)
    def p_text(value: float) -> str:
        return "NaN" if not np.isfinite(value) else f"{value:.{decimals}f}"
    text = pd.DataFrame({
        "Second-best": tests["comparator"].replace("", MISSING_TEXT).tolist(),
        f"{reference} mean": [f"{value:.4f}" if np.isfinite(value) else MISSING_TEXT
                              for value in tests["reference_mean"]],
        "Second-best mean": [f"{value:.4f}" if np.isfinite(value) else MISSING_TEXT
                             for value in tests["comparator_mean"]],
        "n": [f"{a}/{b}" for a, b in zip(tests["n_reference"], tests["n_comparator"])],
        "p-value": [p_text(value) for value in tests["p_value"]],
        "Significance": tests["stars"].tolist(),
        "Note": tests["reason"].tolist(),
    }, index=pd.Index(tests[NOISE_SETTING].tolist(), name="Noise setting"))
    test_name = "paired t-test over shared seeds" if paired else "two-sample Student's t-test (equal variances)"
    notes = [f"One-sided {test_name} of {reference} > best other method on last-epoch test "
             f"{metric_name(metric)}; n = {reference}/other values. Degenerate cases: 'n<2' → p NaN; "
             "'zero variance' → p 0 (MIRACL mean greater) or 1 (smaller)."]
    values = tests.copy()
    values.insert(0, "metric", metric)
    return Table(name or f"significance_{slug(metric)}",
                 f"Significance of {reference} vs the second-best method: test {metric_name(metric)} "
                 "(Tables 7/8)", text, None, values, notes)


# --------------------------------------------------------------------------------------------
# Table 4: ablation variants × noise settings
# --------------------------------------------------------------------------------------------
def ablation_table(finals: pd.DataFrame, metric: str = "test/mAP", *, decimals: int = 3,
                   name: str | None = None, missing: Iterable[Mapping[str, Any]] | None = None) -> Table:
    """Table 4: rows = ablation variants (Baseline, +Con.Reg., w/ Loss/Difficulty/Rank only,
    MIRACL), columns = noise settings, ``mean ± std`` (ddof 0), best of each column bold."""
    finals = ensure_annotated(finals)
    summary = summary_statistics(finals, metric)
    row_order = sorted(summary[METHOD_LABEL].unique(), key=ablation_sort_key)
    column_order = [setting for setting in noise_setting_order(finals)
                    if setting in set(summary[NOISE_SETTING])]
    text, bold = _grid_table(summary, METHOD_LABEL, NOISE_SETTING, row_order, column_order, decimals, "pm",
                             _partial_cells(missing, METHOD_LABEL, NOISE_SETTING))
    text.index.name = "MIRACL variant"
    values = summary.copy()
    values.insert(0, "metric", metric)
    values["is_best"] = [bool(bold.at[row, column]) for row, column in
                         zip(values[METHOD_LABEL], values[NOISE_SETTING])]
    notes = [f"Last-epoch test {metric_name(metric)}: mean ± std (ddof 0) across seeds; best per column in bold."]
    return Table(name or f"ablation_{slug(metric)}", f"Ablation of MIRACL: test {metric_name(metric)} (Table 4)",
                 text, bold, values, notes)


# --------------------------------------------------------------------------------------------
# Sensitivity curve table (Fig. 3 numbers): parameter value × noise setting
# --------------------------------------------------------------------------------------------
def sensitivity_table(finals: pd.DataFrame, parameter: str = "lambda_cons", metric: str = "test/mAP", *,
                      decimals: int = 3, name: str | None = None) -> Table:
    """The numbers behind a sensitivity figure: rows = values of ``config/<parameter>``,
    columns = noise settings, ``mean (std)`` across seeds (ddof 0), best per column bold."""
    finals = ensure_annotated(finals)
    column = parameter if parameter.startswith("config/") else f"config/{parameter}"
    if column not in finals.columns:
        raise KeyError(f"parameter column '{column}' is not in the results")
    frame = finals.assign(**{column: finals[column].astype(float)})
    summary = summary_statistics(frame, metric, rows=column)
    row_values = sorted(summary[column].unique())
    column_order = [setting for setting in noise_setting_order(finals) if setting in set(summary[NOISE_SETTING])]
    text, bold = _grid_table(summary, column, NOISE_SETTING, row_values, column_order, decimals, "paren", set())
    text.index = pd.Index([f"{value:g}" for value in row_values], name=parameter.removeprefix("config/"))
    bold.index = text.index
    values = summary.copy()
    values.insert(0, "metric", metric)
    notes = [f"Last-epoch test {metric_name(metric)}: mean (std, ddof 0) across seeds for each "
             f"{parameter.removeprefix('config/')}; best per column in bold."]
    return Table(name or f"sensitivity_{slug(parameter.removeprefix('config/'))}_{slug(metric)}",
                 f"Sensitivity to {parameter.removeprefix('config/')}: test {metric_name(metric)}",
                 text, bold, values, notes)


# --------------------------------------------------------------------------------------------
# Table 9: stability across GMM seeds
# --------------------------------------------------------------------------------------------
def stability_statistics(values: np.ndarray) -> dict[str, float]:
    """mean, std (ddof 0), cv = std/mean, min, max, n of a 1-D sample (NaN dropped)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": math.nan, "std": math.nan, "cv": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = float(values.mean())
    std = float(np.std(values, ddof=0))
    return {"mean": mean, "std": std, "cv": std / mean if mean != 0 else math.nan,
            "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}


def stability_table(finals: pd.DataFrame, metrics: Sequence[str] = STABILITY_METRICS, *,
                    decimals: int = 4, name: str | None = None) -> Table:
    """Table 9: per metric mean ± std (ddof 0), coefficient of variation (std/mean, %), range
    (min–max) and n across the trials in `finals` (the GMM seeds). Several methods or noise
    settings in `finals` give one block of rows each (row label 'Sym. 20% · mAP')."""
    finals = ensure_annotated(finals)
    groups = list(finals.groupby([METHOD_LABEL, NOISE_SETTING], sort=False))
    rows, labels, records = [], [], []
    for (method, setting), group in groups:
        for metric in metrics:
            if metric not in group.columns:
                continue
            statistics = stability_statistics(group[metric].to_numpy())
            prefix = "" if len(groups) == 1 else f"{method}, {setting} · "
            labels.append(prefix + metric_name(metric))
            rows.append({
                "Mean ± Std": _format_mean_std(statistics["mean"], statistics["std"], decimals, "pm"),
                "CV": MISSING_TEXT if not np.isfinite(statistics["cv"]) else f"{100 * statistics['cv']:.2f}%",
                "Range": MISSING_TEXT if statistics["n"] == 0
                else f"{statistics['min']:.{decimals}f}–{statistics['max']:.{decimals}f}",
                "n": str(statistics["n"])})
            records.append({METHOD_LABEL: method, NOISE_SETTING: setting, "metric": metric, **statistics})
    text = pd.DataFrame(rows, index=pd.Index(labels, name="Metric"), columns=["Mean ± Std", "CV", "Range", "n"])
    notes = ["Across GMM initialisation seeds (config/gmm_seed), model seed and noise fixed; std ddof 0, "
             "CV = std/mean."]
    return Table(name or "stability", "Stability of MIRACL under GMM initialisation seeds (Table 9)",
                 text, None, pd.DataFrame(records), notes)


# --------------------------------------------------------------------------------------------
# Realised noise rates and computation time
# --------------------------------------------------------------------------------------------
def noise_rate_table(finals: pd.DataFrame, name: str = "noise_rates") -> Table:
    """Per noise setting: nominal ρ+ and ρ− (%), realised ρ+ and ρ− (%) as mean [min, max]
    across trials, mean number of flipped train pairs, number of trials (METHOD §2)."""
    finals = ensure_annotated(finals)
    rows, labels, records = [], [], []
    def spread(values: pd.Series) -> str:
        values = values.dropna().astype(float) * 100.0
        if values.empty:
            return MISSING_TEXT
        if np.isclose(values.min(), values.max()):
            return f"{values.mean():.2f}"
        return f"{values.mean():.2f} [{values.min():.2f}, {values.max():.2f}]"
    for setting in noise_setting_order(finals):
        group = finals.loc[finals[NOISE_SETTING] == setting]
        record = {NOISE_SETTING: setting, "trials": len(group),
                  "rho_pos": float(group["config/rho_pos"].iloc[0]),
                  "rho_neg": float(group["config/rho_neg"].iloc[0])}
        for column in ("noise/realised_rho_pos", "noise/realised_rho_neg", "noise/rho_neg_nominal",
                       "noise/flipped_pairs"):
            record[column] = float(group[column].mean()) if column in group.columns else math.nan
        nominal_negative = record["noise/rho_neg_nominal"]
        if not np.isfinite(nominal_negative):
            nominal_negative = record["rho_neg"]
        labels.append(setting)
        rows.append({
            "nominal ρ+ (%)": percent_text(record["rho_pos"]),
            "nominal ρ− (%)": f"{100 * nominal_negative:.2f}",
            "realised ρ+ (%)": spread(group["noise/realised_rho_pos"]) if "noise/realised_rho_pos" in group else MISSING_TEXT,
            "realised ρ− (%)": spread(group["noise/realised_rho_neg"]) if "noise/realised_rho_neg" in group else MISSING_TEXT,
            "flipped pairs": MISSING_TEXT if not np.isfinite(record["noise/flipped_pairs"])
            else f"{record['noise/flipped_pairs']:.0f}",
            "trials": str(len(group))})
        records.append(record)
    text = pd.DataFrame(rows, index=pd.Index(labels, name="Noise setting"))
    notes = ["Realised rates are counted on the train split (mean [min, max] over trials; one value when all agree)."]
    return Table(name, "Noise settings: nominal and realised flip rates", text, None, pd.DataFrame(records), notes)


def runtime_table(finals: pd.DataFrame, name: str = "runtime", decimals: int = 3) -> Table:
    """Table 6-style computation time: rows = methods, columns = noise settings, cells the wall
    time of one trial in hours, mean ± std (ddof 0) across trials (``time/trial_wall_s``)."""
    finals = ensure_annotated(finals)
    if "time/trial_wall_s" not in finals.columns:
        raise KeyError("results have no 'time/trial_wall_s' column")
    frame = finals.assign(**{"time/trial_wall_h": finals["time/trial_wall_s"].astype(float) / 3600.0})
    summary = summary_statistics(frame, "time/trial_wall_h")
    row_order = sorted(summary[METHOD_LABEL].unique(), key=method_sort_key)
    column_order = [setting for setting in noise_setting_order(finals) if setting in set(summary[NOISE_SETTING])]
    text, _ = _grid_table(summary, METHOD_LABEL, NOISE_SETTING, row_order, column_order, decimals, "pm", set())
    text.index.name = "Model"
    return Table(name, "Computation time per trial in hours (Table 6)", text, None, summary,
                 ["Wall time of one trial (all epochs, incl. selection and evaluation), hours; "
                  "mean ± std (ddof 0) across trials."])
