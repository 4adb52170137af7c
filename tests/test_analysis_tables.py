"""miracl_grid.analysis.tables: hand-computed means/stds (ddof 0), bold winners, stars, Table 4 / 9, rendering."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from miracl_grid.analysis.tables import (ablation_table, comparison_table, noise_rate_table, sensitivity_table,
                             significance_report, stability_table, summary_statistics)

SEEDS = (30, 40, 100)
MIRACL = ("miracl", "flexcare", "MIRACL")
FLEXCARE = ("bce", "flexcare", "FlexCare")
ASL = ("asl", "flexcare", "ASL")


def finals_frame(values_by_arm, noise=("symmetric", 0.2, 0.2), seeds=SEEDS, sweep="main", metric="test/mAP", **config):
    rows = []
    for (method, backbone, variant), values in values_by_arm.items():
        for seed, value in zip(seeds, values):
            row = {"trial_id": f"{sweep}_{method}_{variant}_{noise[0]}{noise[1]}_{seed}", "sweep": sweep, "epoch": 3,
                   "status": "TERMINATED", "config/method": method, "config/backbone": backbone,
                   "config/variant": variant, "config/noise_model": noise[0], "config/rho_pos": noise[1],
                   "config/rho_neg": noise[2], "config/seed": seed, metric: value}
            row.update({f"config/{key}": item for key, item in config.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def two_settings():
    return pd.concat([
        finals_frame({MIRACL: [0.50, 0.52, 0.54], FLEXCARE: [0.40, 0.41, 0.42], ASL: [0.45, 0.45, 0.48]}),
        finals_frame({MIRACL: [0.55, 0.56, 0.57], FLEXCARE: [0.60, 0.61, 0.62], ASL: [0.1, 0.2, 0.3]},
                     noise=("asymmetric", 0.0, 0.4)),
    ], ignore_index=True)


def test_summary_statistics_mean_and_population_std():
    summary = summary_statistics(two_settings(), "test/mAP").set_index(["method_label", "noise_setting"])
    # by hand: deviations of [0.50, 0.52, 0.54] are ±0.02, 0 -> std = sqrt(0.0008 / 3)
    assert summary.loc[("MIRACL", "Sym. 20%"), "mean"] == pytest.approx(0.52)
    assert summary.loc[("MIRACL", "Sym. 20%"), "std"] == pytest.approx(math.sqrt(0.0008 / 3))
    # [0.45, 0.45, 0.48]: deviations -0.01, -0.01, 0.02 -> std = sqrt(0.0006 / 3)
    assert summary.loc[("ASL", "Sym. 20%"), "std"] == pytest.approx(math.sqrt(0.0006 / 3))
    assert summary.loc[("ASL", "Asym. (0,40)"), "std"] == pytest.approx(np.std([0.1, 0.2, 0.3]))
    assert (summary["n"] == 3).all()


def test_comparison_table_cells_bold_and_stars():
    table = comparison_table(two_settings())
    assert table.text.index.tolist() == ["ASL", "FlexCare", "MIRACL"]          # paper row order, MIRACL last
    assert table.text.columns.tolist() == ["Sym. 20%", "Asym. (0,40)"]
    p_value = stats.ttest_ind([0.50, 0.52, 0.54], [0.45, 0.45, 0.48], equal_var=True, alternative="greater").pvalue
    assert 0.001 <= p_value < 0.01
    assert table.text.at["MIRACL", "Sym. 20%"] == "0.520 (0.016)**"
    assert table.text.at["ASL", "Sym. 20%"] == "0.460 (0.014)"
    assert table.text.at["FlexCare", "Sym. 20%"] == "0.410 (0.008)"
    assert table.text.at["MIRACL", "Asym. (0,40)"] == "0.560 (0.008)"            # loses: no stars
    assert table.bold.to_dict() == {"Sym. 20%": {"ASL": False, "FlexCare": False, "MIRACL": True},
                                    "Asym. (0,40)": {"ASL": False, "FlexCare": True, "MIRACL": False}}
    values = table.values.set_index(["method_label", "noise_setting"])
    assert values.loc[("MIRACL", "Sym. 20%"), "p_value"] == pytest.approx(p_value, rel=1e-12)
    assert values.loc[("MIRACL", "Sym. 20%"), "comparator"] == "ASL"
    assert bool(values.loc[("FlexCare", "Asym. (0,40)"), "is_best"])
    markdown = table.to_markdown()
    assert "| MIRACL | **0.520 (0.016)\\*\\*** | 0.560 (0.008) |" in markdown
    assert "| FlexCare | 0.410 (0.008) | **0.610 (0.008)** |" in markdown


def test_ties_at_display_precision_are_all_bold():
    frame = finals_frame({MIRACL: [0.5001, 0.5001, 0.5001], FLEXCARE: [0.5002, 0.5002, 0.5002]})
    assert comparison_table(frame).bold["Sym. 20%"].tolist() == [True, True]


def test_partial_and_missing_cells_are_marked():
    frame = two_settings()
    frame = frame.loc[~((frame["config/method"] == "asl") & (frame["config/noise_model"] == "asymmetric"))]
    frame = frame.loc[~((frame["config/method"] == "bce") & (frame["config/seed"] == 100)
                        & (frame["config/noise_model"] == "symmetric"))]
    missing = [{"method_label": "FlexCare", "noise_setting": "Sym. 20%", "config/seed": 100}]
    table = comparison_table(frame, missing=missing)
    assert table.text.at["ASL", "Asym. (0,40)"] == "—"
    assert table.text.at["FlexCare", "Sym. 20%"] == "0.405 (0.005)†"
    assert any("†" in note for note in table.notes)


def test_significance_report_columns():
    table = significance_report(two_settings())
    assert table.text.loc["Sym. 20%", "Second-best"] == "ASL"
    assert table.text.loc["Sym. 20%", "Significance"] == "**"
    p_value = stats.ttest_ind([0.50, 0.52, 0.54], [0.45, 0.45, 0.48], equal_var=True, alternative="greater").pvalue
    assert table.text.loc["Sym. 20%", "p-value"] == f"{p_value:.5f}"
    assert table.text.loc["Asym. (0,40)", "Second-best"] == "FlexCare"
    assert table.text.loc["Asym. (0,40)", "Significance"] == ""


def test_ablation_table_rows_in_paper_order():
    arms = {("miracl", "flexcare", "full"): [0.56, 0.56, 0.56], ("bce", "flexcare", "baseline"): [0.54, 0.545, 0.55],
            ("miracl", "flexcare", "rank_only"): [0.559, 0.559, 0.559], ("miracl", "flexcare", "con_reg"): [0.55] * 3}
    table = ablation_table(finals_frame(arms, sweep="ablation"))
    assert table.text.index.tolist() == ["Baseline", "+Con.Reg.", "w/ Rank only", "MIRACL"]
    assert table.text.at["Baseline", "Sym. 20%"] == f"0.545 ± {np.std([0.54, 0.545, 0.55]):.3f}"
    assert table.bold["Sym. 20%"].tolist() == [False, False, False, True]


def test_stability_table_cv_and_range():
    values = [0.5433, 0.5450, 0.5470, 0.5488, 0.5499]
    frame = finals_frame({MIRACL: values}, seeds=(30,) * 5, sweep="stability")
    frame["config/gmm_seed"] = range(5)
    frame["trial_id"] = [f"g{seed}" for seed in range(5)]
    frame["test/F1"] = 0.58
    table = stability_table(frame)
    mean, std = np.mean(values), np.std(values)
    assert table.text.loc["mAP", "Mean ± Std"] == f"{mean:.4f} ± {std:.4f}"
    assert table.text.loc["mAP", "CV"] == f"{100 * std / mean:.2f}%"
    assert table.text.loc["mAP", "Range"] == "0.5433–0.5499"
    assert table.text.loc["F1", "CV"] == "0.00%"
    assert "F1_class" not in table.text.index            # column absent -> row left out
    record = table.values.set_index("metric").loc["test/mAP"]
    assert record["cv"] == pytest.approx(std / mean) and record["n"] == 5


def test_sensitivity_table_rows_are_parameter_values():
    frame = pd.concat([finals_frame({MIRACL: [0.5, 0.6, 0.7]}, sweep="lambda_cons", lambda_cons=lam)
                       .assign(trial_id=lambda rows, lam=lam: rows["trial_id"] + f"_{lam}")
                       for lam in (0.0, 0.05, 0.5)], ignore_index=True)
    frame.loc[frame["config/lambda_cons"] == 0.05, "test/mAP"] += 0.1
    table = sensitivity_table(frame, "lambda_cons")
    assert table.text.index.tolist() == ["0", "0.05", "0.5"]
    assert table.text.loc["0.05", "Sym. 20%"] == f"0.700 ({np.std([0.5, 0.6, 0.7]):.3f})"
    assert table.bold["Sym. 20%"].tolist() == [False, True, False]


def test_noise_rate_table_reports_nominal_and_realised_rates():
    frame = finals_frame({MIRACL: [0.5, 0.5, 0.5]}, noise=("balanced", 0.2, 0.915 / 20.425))
    frame["noise/realised_rho_pos"] = [0.199, 0.200, 0.201]
    frame["noise/realised_rho_neg"] = [0.0448, 0.0448, 0.0448]
    table = noise_rate_table(frame)
    row = table.text.loc["Bal. (20,4.48)"]
    assert row["nominal ρ+ (%)"] == "20" and row["nominal ρ− (%)"] == "4.48"
    assert row["realised ρ+ (%)"] == "20.00 [19.90, 20.10]"
    assert row["realised ρ− (%)"] == "4.48"


def test_write_produces_markdown_csv_latex(tmp_path):
    paths = comparison_table(two_settings()).write(tmp_path)
    assert set(paths) == {"md", "csv", "tex", "values"}
    csv = pd.read_csv(paths["csv"])
    assert csv.columns.tolist() == ["Model", "Sym. 20%", "Asym. (0,40)"]
    assert csv.loc[csv["Model"] == "MIRACL", "Sym. 20%"].item() == "0.520 (0.016)**"
    latex = paths["tex"].read_text()
    assert r"\textbf{0.520 (0.016)$^{**}$}" in latex and r"\begin{tabular}{lrr}" in latex
