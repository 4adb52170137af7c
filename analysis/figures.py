"""Figures of the paper from a run's results (Fig. 3, 4, 5, 7), PNG and SVG.

Matplotlib's object API only (``matplotlib.figure.Figure`` rendered by the Agg canvas): no
pyplot state, no GUI backend, nothing to close. Every plotting function returns the `Figure`;
with ``output=STEM`` it also writes ``STEM.png`` and ``STEM.svg``.

- `sensitivity_plot`: Fig. 3 — last-epoch metric against λ_cons (or α), mean ± std band
  (ddof 0) across seeds, one line per noise level. The x axis is symmetric-log (linear within
  the smallest positive value, so 0 is shown) when the positive values span a decade or more,
  linear otherwise.
- `correction_accuracy_plot`: Fig. 4 — per epoch, accuracy of the corrected labels on
  clean pairs (blue), on flipped pairs after correction (orange) and of the uncorrected
  prediction on flipped pairs (green); mean ± std across seeds; one panel per
  (method, noise setting).
- `set_size_plot`: sizes of the clean/uncertain/noisy sets per epoch (METHOD §8), with the
  noisy set's recall and precision on a second row.
- `selection_histogram_plot`: Fig. 5/7 — per chosen group (label, observed class), the
  histogram of the selection metric Z̃ split by partition (or by the true flip) with the fitted
  two-component GMM densities overlaid (`miracl_grid.trainables.selection_artifact` for the ``.npz`` layout).
- `selection_components_plot`: Fig. 5 — loss / rank / difficulty / Z̃ of one group, clean vs
  flipped pairs (needs the optional component and ``flipped`` arrays).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from miracl_grid.trainables.selection_artifact import PARTITION_NAMES, SelectionArtifact, load_selection_artifact
from miracl_grid.analysis.collect import METHOD_LABEL, NOISE_SETTING, ensure_annotated, last_epoch, noise_setting_order
from miracl_grid.analysis.labels import method_sort_key
from miracl_grid.analysis.tables import metric_name

logger = logging.getLogger(__name__)

FIGURE_FORMATS: tuple[str, ...] = ("png", "svg")
CORRECTION_CURVES: tuple[tuple[str, str, str], ...] = (
    ("correction/accuracy_clean_pairs", "clean pairs (corrected)", "tab:blue"),
    ("correction/accuracy_noisy_corrected", "noisy pairs, corrected", "tab:orange"),
    ("correction/accuracy_noisy_uncorrected", "noisy pairs, uncorrected", "tab:green"),
)
SET_SIZE_CURVES: tuple[tuple[str, str, str], ...] = (
    ("correction/size_clean", "clean", "tab:blue"),
    ("correction/size_uncertain", "uncertain", "tab:gray"),
    ("correction/size_noisy", "noisy", "tab:red"),
)
SET_QUALITY_CURVES: tuple[tuple[str, str, str], ...] = (
    ("correction/noisy_set_recall", "noisy-set recall", "tab:purple"),
    ("correction/noisy_set_precision", "noisy-set precision", "tab:brown"),
)
PARTITION_COLOURS: tuple[str, ...] = ("tab:blue", "tab:gray", "tab:red")


def save_figure(figure: Figure, output: str | Path, formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write `figure` as ``output.<format>`` for each format; returns the paths."""
    stem = Path(output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in formats:
        path = stem.with_name(f"{stem.name}.{extension}")
        figure.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _column(name: str) -> str:
    """Accept 'noise setting' / 'noise_setting' / 'method label' and config fields by bare name."""
    normal = name.replace(" ", "_")
    return normal


def _grid(count: int, columns: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list]:
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = [figure.add_subplot(rows, columns, index + 1) for index in range(count)]
    return figure, axes


# --------------------------------------------------------------------------------------------
# Fig. 3: sensitivity curves
# --------------------------------------------------------------------------------------------
def use_symlog(values: np.ndarray) -> bool:
    """Symmetric-log x when the positive values span at least a decade (λ_cons: 0.01..0.5)."""
    positive = np.asarray(values, dtype=float)
    positive = positive[positive > 0]
    return positive.size >= 2 and positive.max() / positive.min() >= 10.0


def sensitivity_plot(frame: pd.DataFrame, parameter: str = "lambda_cons", metric: str = "test/mAP",
                     group: str = NOISE_SETTING, *, output: str | Path | None = None,
                     title: str | None = None, baseline: pd.DataFrame | None = None) -> Figure:
    """Fig. 3: last-epoch `metric` against ``config/<parameter>``, one line per `group` value.

    frame: results (all epochs or last epochs; each trial's last epoch is used). Each line is
    the mean across seeds at each parameter value (markers), with a ± std band (ddof 0). One
    axes; x ticks at the swept values; the x axis always shows 0 (symlog, linear threshold =
    the smallest positive value, when the values span a decade; else linear).
    baseline: rows of a reference method without the parameter (FlexCare in the λ_cons sweep),
    drawn per `group` value as a dashed horizontal line at its last-epoch mean across seeds.
    """
    finals = last_epoch(ensure_annotated(frame))
    column = parameter if parameter.startswith("config/") else f"config/{parameter}"
    group = _column(group)
    for needed in (column, metric, group):
        if needed not in finals.columns:
            raise KeyError(f"sensitivity_plot: column '{needed}' is not in the results")
    finals = finals.dropna(subset=[metric, column])
    if finals.empty:
        raise ValueError(f"sensitivity_plot: no finite '{metric}' values to plot")
    finals = finals.assign(**{column: finals[column].astype(float)})
    order = noise_setting_order(finals) if group == NOISE_SETTING else sorted(finals[group].astype(str).unique())
    figure = Figure(figsize=(5.6, 4.0), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    for value in order:
        subset = finals.loc[finals[group].astype(str) == str(value)]
        summary = subset.groupby(column)[metric].agg(
            mean="mean", std=lambda series: float(np.std(series.to_numpy(), ddof=0))).sort_index()
        x = summary.index.to_numpy(dtype=float)
        line, = axes.plot(x, summary["mean"].to_numpy(), marker="o", label=str(value))
        axes.fill_between(x, (summary["mean"] - summary["std"]).to_numpy(),
                          (summary["mean"] + summary["std"]).to_numpy(), color=line.get_color(), alpha=0.2,
                          linewidth=0)
    if baseline is not None and not baseline.empty:
        references = last_epoch(ensure_annotated(baseline)).dropna(subset=[metric])
        colours = {str(value): line.get_color() for value, line in zip(order, axes.lines)}
        for value in order:
            subset = references.loc[references[group].astype(str) == str(value)]
            if subset.empty:
                continue
            method = ", ".join(sorted(subset[METHOD_LABEL].unique()))
            axes.axhline(float(subset[metric].mean()), color=colours.get(str(value), "gray"), linestyle="--",
                         linewidth=1.0, label=f"{value}: {method} (n={len(subset)})")
    values = np.sort(finals[column].unique())
    if use_symlog(values):
        axes.set_xscale("symlog", linthresh=float(values[values > 0].min()), linscale=0.5)
    axes.set_xticks(values)
    axes.set_xticklabels([f"{value:g}" for value in values])
    low, high = axes.get_xlim()
    if low > 0:
        axes.set_xlim(0.0 if axes.get_xscale() == "symlog" else -0.05 * high, high)
    parameter_name = column.removeprefix("config/")
    axes.set_xlabel({"lambda_cons": "λ_cons", "alpha": "α"}.get(parameter_name, parameter_name))
    axes.set_ylabel(f"test {metric_name(metric)} (last epoch)")
    axes.set_title(title or f"Impact of {axes.get_xlabel()}")
    axes.grid(True, alpha=0.3)
    axes.legend(title=group.replace("_", " "), fontsize="small")
    if output is not None:
        save_figure(figure, output)
    return figure


# --------------------------------------------------------------------------------------------
# Fig. 4 and set sizes: per-epoch curves
# --------------------------------------------------------------------------------------------
def _panels(frame: pd.DataFrame, columns: Sequence[str], methods: Sequence[str] | None) -> list[tuple[str, str, pd.DataFrame]]:
    frame = ensure_annotated(frame)
    present = [column for column in columns if column in frame.columns]
    if not present:
        return []
    rows = frame.loc[frame[present].notna().any(axis=1)]
    if methods is not None:
        rows = rows.loc[rows[METHOD_LABEL].isin(list(methods))]
    panels = []
    for method in sorted(rows[METHOD_LABEL].unique(), key=method_sort_key):
        for setting in noise_setting_order(rows):
            subset = rows.loc[(rows[METHOD_LABEL] == method) & (rows[NOISE_SETTING] == setting)]
            if not subset.empty:
                panels.append((method, setting, subset))
    return panels


def _epoch_curves(axes, subset: pd.DataFrame, curves: Sequence[tuple[str, str, str]]) -> None:
    for column, label, colour in curves:
        if column not in subset.columns or subset[column].notna().sum() == 0:
            continue
        summary = subset.groupby("epoch")[column].agg(
            mean="mean", std=lambda series: float(np.std(series.dropna().to_numpy(), ddof=0))
            if series.notna().any() else math.nan).sort_index()
        epochs = summary.index.to_numpy(dtype=float)
        axes.plot(epochs, summary["mean"].to_numpy(dtype=float), color=colour, label=label, marker=".")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.fill_between(epochs, (summary["mean"] - summary["std"]).to_numpy(dtype=float),
                          (summary["mean"] + summary["std"]).to_numpy(dtype=float), color=colour, alpha=0.2,
                          linewidth=0)


def has_columns(frame: pd.DataFrame, columns: Sequence[str]) -> bool:
    """True when some row has a finite value in one of `columns`."""
    present = [column for column in columns if column in frame.columns]
    return bool(present) and bool(frame[present].notna().any(axis=None))


def correction_accuracy_plot(frame: pd.DataFrame, *, methods: Sequence[str] | None = None,
                             output: str | Path | None = None, max_columns: int = 3) -> Figure:
    """Fig. 4: correction accuracy per epoch — clean pairs (blue), flipped pairs after correction
    (orange), flipped pairs without correction (green); mean ± std across seeds; one panel per
    (method, noise setting) that has correction metrics. frame: all epochs of the results."""
    columns = [column for column, _, _ in CORRECTION_CURVES]
    panels = _panels(frame, columns, methods)
    if not panels:
        raise ValueError("correction_accuracy_plot: no correction/accuracy_* values in the results")
    figure, axes_list = _grid(len(panels), max_columns)
    for axes, (method, setting, subset) in zip(axes_list, panels):
        _epoch_curves(axes, subset, CORRECTION_CURVES)
        axes.set_title(f"{method}, {setting}", fontsize="medium")
        axes.set_xlabel("epoch")
        axes.set_ylabel("accuracy vs clean labels")
        axes.grid(True, alpha=0.3)
    axes_list[0].legend(fontsize="small")
    if output is not None:
        save_figure(figure, output)
    return figure


def set_size_plot(frame: pd.DataFrame, *, methods: Sequence[str] | None = None,
                  output: str | Path | None = None, max_columns: int = 3) -> Figure:
    """Sizes of the clean / uncertain / noisy sets per epoch (top row of each panel pair) and
    the noisy set's recall / precision against the true flips (bottom), mean ± std across seeds."""
    columns = [column for column, _, _ in SET_SIZE_CURVES]
    panels = _panels(frame, columns, methods)
    if not panels:
        raise ValueError("set_size_plot: no correction/size_* values in the results")
    count = len(panels)
    width = max(1, min(max_columns, count))
    rows = math.ceil(count / width)
    figure = Figure(figsize=(4.2 * width, 5.6 * rows), layout="constrained")
    for index, (method, setting, subset) in enumerate(panels):
        row, column = divmod(index, width)
        sizes = figure.add_subplot(2 * rows, width, 2 * row * width + column + 1)
        _epoch_curves(sizes, subset, SET_SIZE_CURVES)
        sizes.set_title(f"{method}, {setting}", fontsize="medium")
        sizes.set_ylabel("pairs in set")
        sizes.grid(True, alpha=0.3)
        quality = figure.add_subplot(2 * rows, width, (2 * row + 1) * width + column + 1, sharex=sizes)
        _epoch_curves(quality, subset, SET_QUALITY_CURVES)
        quality.set_xlabel("epoch")
        quality.set_ylabel("share")
        quality.set_ylim(-0.02, 1.02)
        quality.grid(True, alpha=0.3)
        if index == 0:
            sizes.legend(fontsize="small")
            if quality.lines:
                quality.legend(fontsize="small")
    if output is not None:
        save_figure(figure, output)
    return figure


# --------------------------------------------------------------------------------------------
# Fig. 5 / 7: selection-metric histograms with the GMM fit
# --------------------------------------------------------------------------------------------
def gmm_densities(x: np.ndarray, means: np.ndarray, variances: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted component densities w_k·N(x; μ_k, σ_k²), shape (K, len(x)), components sorted by
    mean (row 0 = the 'clean' component, Eq. 3)."""
    order = np.argsort(means)
    means, variances, weights = means[order], variances[order], weights[order]
    return weights[:, None] * stats.norm.pdf(x[None, :], loc=means[:, None], scale=np.sqrt(variances)[:, None])


def _as_artifact(artifact: SelectionArtifact | str | Path) -> SelectionArtifact:
    return artifact if isinstance(artifact, SelectionArtifact) else load_selection_artifact(artifact)


def selection_histogram_plot(artifact: SelectionArtifact | str | Path, groups: Sequence[int] | None = None, *,
                             max_groups: int = 10, bins: int = 40, colour_by: str = "partition",
                             output: str | Path | None = None, max_columns: int = 5,
                             title: str | None = None) -> Figure:
    """Fig. 5/7: one panel per group: stacked density histogram of Z̃ split by the GMM partition
    (clean / uncertain / noisy; ``colour_by="truth"``: by the stored true flips) with the two
    weighted GMM component densities (dashed) and their mixture (black) overlaid, and the
    component means as dotted vertical lines. groups: group indices of the artifact (default:
    the first `max_groups`)."""
    artifact = _as_artifact(artifact)
    if artifact.num_groups == 0:
        raise ValueError(f"{artifact.path}: the artifact holds no groups")
    chosen = list(range(min(max_groups, artifact.num_groups))) if groups is None else list(groups)
    if colour_by == "truth" and artifact.flipped is None:
        raise ValueError(f"{artifact.path}: colour_by='truth' needs the optional 'flipped' array")
    figure, axes_list = _grid(len(chosen), max_columns, width=3.6, height=2.9)
    for axes, group in zip(axes_list, chosen):
        span = artifact.group_slice(group)
        values = artifact.z_values[span]
        edges = np.linspace(min(0.0, values.min(initial=0.0)), max(1.0, values.max(initial=1.0)), bins + 1)
        if colour_by == "truth":
            truth = artifact.flipped[span]
            parts, labels, colours = [values[~truth], values[truth]], ["clean", "flipped"], ["tab:blue", "tab:red"]
        else:
            split = artifact.partition[span]
            parts = [values[split == code] for code in range(len(PARTITION_NAMES))]
            labels, colours = list(PARTITION_NAMES), list(PARTITION_COLOURS)
        if values.size:
            axes.hist(parts, bins=edges, stacked=True, density=True, color=colours, label=labels, alpha=0.6)
        grid = np.linspace(edges[0], edges[-1], 400)
        densities = gmm_densities(grid, artifact.means[group], artifact.variances[group], artifact.weights[group])
        for density, name in zip(densities, ("clean component", "noisy component")):
            axes.plot(grid, density, linestyle="--", linewidth=1.2, label=name)
        axes.plot(grid, densities.sum(axis=0), color="black", linewidth=1.2, label="GMM")
        for mean in np.sort(artifact.means[group]):
            axes.axvline(mean, color="black", linestyle=":", linewidth=0.8)
        axes.set_title(artifact.group_name(group), fontsize="small")
        axes.set_xlabel("Z̃")
        axes.set_ylabel("density")
    axes_list[0].legend(fontsize="x-small")
    suffix = f" (epoch {artifact.epoch})" if artifact.epoch is not None else ""
    figure.suptitle(title or f"Selection metric and 2-component GMM fits{suffix}", fontsize="medium")
    if output is not None:
        save_figure(figure, output)
    return figure


def selection_components_plot(artifact: SelectionArtifact | str | Path, group: int = 0, *, bins: int = 40,
                              output: str | Path | None = None) -> Figure:
    """Fig. 5: histograms of the loss, rank and difficulty components and of Z̃ for one group,
    clean vs truly flipped pairs (needs the optional ``*_values`` and ``flipped`` arrays)."""
    artifact = _as_artifact(artifact)
    if artifact.flipped is None:
        raise ValueError(f"{artifact.path}: selection_components_plot needs the optional 'flipped' array")
    panels = [(name.removesuffix("_values"), values[artifact.group_slice(group)])
              for name, values in (artifact.components or {}).items()]
    panels.append(("Z̃", artifact.z_values[artifact.group_slice(group)]))
    truth = artifact.flipped[artifact.group_slice(group)]
    figure, axes_list = _grid(len(panels), 4, width=3.4, height=2.8)
    for axes, (name, values) in zip(axes_list, panels):
        edges = np.linspace(np.nanmin(values, initial=0.0), np.nanmax(values, initial=1.0), bins + 1)
        # a side without pairs (a group with no flip, or only flips) has no density: not drawn
        sides = [(part, label, colour) for part, label, colour in
                 ((values[~truth], "clean", "tab:blue"), (values[truth], "flipped", "tab:red")) if part.size]
        if sides:
            parts, labels, colours = (list(column) for column in zip(*sides))
            axes.hist(parts, bins=edges, color=colours, alpha=0.6, label=labels, density=True,
                      histtype="stepfilled")
        axes.set_title(name, fontsize="small")
    axes_list[0].legend(fontsize="x-small")
    figure.suptitle(f"Selection metrics, {artifact.group_name(group)}", fontsize="medium")
    if output is not None:
        save_figure(figure, output)
    return figure


# --------------------------------------------------------------------------------------------
# Mechanism diagnostics: per-epoch curves by method, panel grids with chance lines
# --------------------------------------------------------------------------------------------
CHANCE_STYLE = {"linestyle": "--", "linewidth": 1.0}
METHOD_COLOURS: tuple[str, ...] = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown",
                                   "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def _mean_std_by_epoch(subset: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per epoch: mean and std (ddof 0) of `column` across the rows (seeds), NaN-aware."""
    return subset.groupby("epoch")[column].agg(
        mean="mean", std=lambda series: float(np.std(series.dropna().to_numpy(), ddof=0))
        if series.notna().any() else math.nan).sort_index()


def _band(axes, summary: pd.DataFrame, colour: str, label: str, **style) -> None:
    epochs = summary.index.to_numpy(dtype=float)
    mean = summary["mean"].to_numpy(dtype=float)
    axes.plot(epochs, mean, color=colour, label=label, **style)
    axes.fill_between(epochs, mean - summary["std"].to_numpy(dtype=float), mean + summary["std"].to_numpy(dtype=float),
                      color=colour, alpha=0.15, linewidth=0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def method_epoch_plot(frame: pd.DataFrame, column: str, *, ylabel: str, second: str | None = None,
                      second_label: str = "", reference: float | None = None, reference_label: str = "",
                      title: str = "", output: str | Path | None = None, max_columns: int = 3) -> Figure:
    """One panel per noise setting; per method the per-epoch mean ± std (ddof 0) across seeds of
    `column` (solid) and optionally of `second` (dotted, same colour); an optional horizontal
    `reference` line (dashed grey, e.g. chance). frame: all epochs of the rows to compare."""
    frame = ensure_annotated(frame)
    if column not in frame.columns or frame[column].notna().sum() == 0:
        raise ValueError(f"method_epoch_plot: no '{column}' values in the results")
    settings = noise_setting_order(frame)
    methods = sorted(frame[METHOD_LABEL].unique(), key=method_sort_key)
    figure, axes_list = _grid(len(settings), max_columns)
    for axes, setting in zip(axes_list, settings):
        rows = frame.loc[frame[NOISE_SETTING] == setting]
        for index, method in enumerate(methods):
            subset = rows.loc[rows[METHOD_LABEL] == method]
            if subset.empty or subset[column].notna().sum() == 0:
                continue
            colour = METHOD_COLOURS[index % len(METHOD_COLOURS)]
            _band(axes, _mean_std_by_epoch(subset, column), colour, method, marker=".")
            if second is not None and second in subset.columns and subset[second].notna().any():
                _band(axes, _mean_std_by_epoch(subset, second), colour, f"{method} {second_label}".strip(),
                      linestyle=":")
        if reference is not None:
            axes.axhline(reference, color="gray", label=reference_label or None, **CHANCE_STYLE)
        axes.set_title(setting, fontsize="medium")
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
    axes_list[0].legend(fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize="medium")
    if output is not None:
        save_figure(figure, output)
    return figure


def epoch_panels_plot(frame: pd.DataFrame, panels: Sequence[tuple[str, Sequence[tuple[str, str, str, bool]]]], *,
                      title: str = "", ylabel: str = "share", output: str | Path | None = None) -> Figure:
    """A grid: one row per noise setting, one column per panel ``(panel title, curves)``; each
    curve ``(column, label, colour, is_chance)`` is the per-epoch mean ± std (ddof 0) across
    seeds; chance curves are dashed without a band. frame: all epochs of one method's rows."""
    frame = ensure_annotated(frame)
    present = [column for _, curves in panels for column, _, _, _ in curves if column in frame.columns]
    if not present or frame[present].notna().sum().sum() == 0:
        raise ValueError(f"epoch_panels_plot: none of {present or [c for _, cs in panels for c, *_ in cs]} has values")
    settings = noise_setting_order(frame)
    figure = Figure(figsize=(3.8 * len(panels), 3.0 * len(settings)), layout="constrained")
    for row, setting in enumerate(settings):
        rows = frame.loc[frame[NOISE_SETTING] == setting]
        for column_index, (panel_title, curves) in enumerate(panels):
            axes = figure.add_subplot(len(settings), len(panels), row * len(panels) + column_index + 1)
            for column, label, colour, is_chance in curves:
                if column not in rows.columns or rows[column].notna().sum() == 0:
                    continue
                summary = _mean_std_by_epoch(rows, column)
                if is_chance:
                    axes.plot(summary.index.to_numpy(dtype=float), summary["mean"].to_numpy(dtype=float),
                              color=colour, label=label, **CHANCE_STYLE)
                else:
                    _band(axes, summary, colour, label, marker=".")
            axes.set_title(f"{setting}: {panel_title}", fontsize="small")
            axes.set_xlabel("epoch")
            axes.set_ylabel(ylabel if column_index == 0 else "")
            axes.grid(True, alpha=0.3)
            if row == 0 and axes.lines:
                axes.legend(fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize="medium")
    if output is not None:
        save_figure(figure, output)
    return figure
