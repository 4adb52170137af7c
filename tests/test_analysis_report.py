"""miracl_grid.analysis.report: sections chosen from the sweeps, CLI exit codes, partial runs, import hygiene."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from miracl_grid.analysis.collect import IncompleteSweepError
from miracl_grid.analysis.report import main, write_report

REPO = Path(__file__).resolve().parents[1]
PROVENANCE = {"provenance/code_version": "0123abcd", "provenance/code_dirty": False, "provenance/cohort_hash": "c0ffee",
              "provenance/text_encoder": "all-MiniLM-L6-v2", "provenance/text_encoder_revision": "rev42",
              "provenance/versions": json.dumps({"torch": "2.13.0", "numpy": "2.4.6"})}


def row(trial_id, sweep, method, backbone, variant, noise, seed, epoch, value, **config):
    record = {"trial_id": trial_id, "sweep": sweep, "experiment": "test", "epoch": epoch, "is_last_epoch": epoch == 2,
              "status": "TERMINATED", "config/method": method, "config/backbone": backbone, "config/variant": variant,
              "config/noise_model": noise[0], "config/rho_pos": noise[1], "config/rho_neg": noise[2],
              "config/seed": seed, "config/epochs": 2, "config/lambda_cons": 0.1, "config/alpha": 0.5,
              "test/mAP": value, "test/F1": value + 0.05, "test/F1_class": value - 0.1,
              "noise/realised_rho_pos": noise[1], "noise/realised_rho_neg": noise[2], "time/trial_wall_s": 60.0,
              **PROVENANCE}
    record.update({f"config/{key}": item for key, item in config.items()})
    return record


def main_and_lambda_frame():
    rows = []
    noises = (("symmetric", 0.2, 0.2), ("symmetric", 0.4, 0.4))
    for noise in noises:
        for arm, bonus in ((("miracl", "flexcare", "MIRACL"), 0.05), (("bce", "flexcare", "FlexCare"), 0.0),
                           (("bce", "medfuse", "MedFuse"), -0.02)):
            for seed in (30, 40, 100):
                for epoch in (1, 2):
                    value = 0.5 - noise[1] / 2 + bonus + seed / 1e4
                    extra = {}
                    if arm[0] == "miracl" and epoch == 2:
                        extra = {"correction/accuracy_clean_pairs": 0.95, "correction/accuracy_noisy_corrected": 0.7,
                                 "correction/size_clean": 900.0, "correction/size_uncertain": 50.0,
                                 "correction/size_noisy": 50.0}
                    record = row(f"{arm[0]}-{arm[1]}-{noise[1]}-{seed}", "main", *arm, noise, seed, epoch, value)
                    record["correction/accuracy_noisy_uncorrected"] = 0.4
                    rows.append({**record, **extra})
        for lam in (0.0, 0.05, 0.5):
            for seed in (30, 40):
                for epoch in (1, 2):
                    rows.append(row(f"lam{lam}-{noise[1]}-{seed}", "lambda_cons", "miracl", "flexcare", "MIRACL",
                                    noise, seed, epoch, 0.4 + lam / 10 + seed / 1e4, lambda_cons=lam))
    return pd.DataFrame(rows)


@pytest.fixture()
def run_dir(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    main_and_lambda_frame().to_parquet(directory / "results.parquet")
    return directory


def test_report_has_the_sections_the_sweeps_allow(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    text = path.read_text()
    for header in ("# MIRACL grid report", "## Completeness", "## Sweep: main",
                   "### Comparison: test mAP (Tables 2/3/10)", "### Comparison: test F1",
                   "### Comparison: test F1_class", "### Significance vs second-best: test mAP (Tables 7/8)",
                   "### Computation time (Table 6)", "### Correction diagnostics (Fig. 4)",
                   "## Sweep: lambda_cons", "### Sensitivity to λ_cons (Fig. 3)", "## Configurations",
                   "## Noise settings and realised rates", "## Provenance", "### Library versions"):
        assert f"\n{header}\n" in f"\n{text}\n", header
    for absent in ("Table 4", "Table 9", "Sensitivity to α", "Fig. 5/7"):
        assert absent not in text
    assert text.index("## Sweep: main") < text.index("## Sweep: lambda_cons")
    assert "| MIRACL | **0.456 (0.003)\\*\\*\\*** |" in text          # 0.5-0.1+0.05+mean(30,40,100)/1e4 = 0.4557; σ ddof 0
    assert "0123abcd" in text and "c0ffee" in text and "rev42" in text and "2.13.0" in text
    assert "`lambda_cons` ∈ {0, 0.05, 0.5}" in text
    figure = run_dir / "figures" / "lambda_cons_sensitivity_lambda_cons.png"
    assert figure.is_file() and figure.stat().st_size > 1000
    assert (run_dir / "figures" / "lambda_cons_sensitivity_lambda_cons.svg").is_file()
    assert (run_dir / "tables" / "main_comparison_test_mAP.csv").is_file()
    assert "(figures/lambda_cons_sensitivity_lambda_cons.png)" in text


def test_missing_cells_fail_unless_partial(run_dir, tmp_path):
    frame = pd.read_parquet(run_dir / "results.parquet")
    frame = frame.loc[frame["trial_id"] != "bce-flexcare-0.4-40"]
    partial = tmp_path / "partial"
    partial.mkdir()
    frame.to_parquet(partial / "results.parquet")
    with pytest.raises(IncompleteSweepError, match="FlexCare"):
        write_report(partial)
    assert main([str(partial)]) == 3
    out = tmp_path / "elsewhere"
    assert main([str(partial), "--allow-partial", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "1 expected cell(s) have no finished trial" in text
    assert "method_label=FlexCare, noise_setting=Sym. 40%, config/seed=40" in text
    assert "†" in text
    assert not (partial / "report.md").exists()


def test_cli_errors_on_missing_or_empty_directory(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    (empty / "notes.txt").write_text("x")
    assert main([str(empty)]) == 2
    assert "neither results.parquet" in capsys.readouterr().err


def test_cli_prints_report_path_and_rejects_unknown_metric(run_dir, capsys):
    assert main([str(run_dir), "--metric", "test/nope"]) == 2
    assert "test/nope" in capsys.readouterr().err
    assert main([str(run_dir), "--metric", "test/F1"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.md")


def test_other_sweeps_select_their_tables(tmp_path):
    rows = []
    for variant, method, bonus in (("baseline", "bce", 0.0), ("full", "miracl", 0.02)):
        for seed in (30, 40):
            rows.append(row(f"{variant}{seed}", "ablation", method, "flexcare", variant, ("symmetric", 0.2, 0.2),
                            seed, 2, 0.5 + bonus + (seed - 30) / 500))          # [0.50, 0.52] + bonus
    for gmm_seed in range(5):
        rows.append(row(f"g{gmm_seed}", "stability", "miracl", "flexcare", "MIRACL", ("symmetric", 0.2, 0.2), 30, 2,
                        0.54 + gmm_seed / 1000, gmm_seed=gmm_seed, noise_seed=30))
    directory = tmp_path / "run"
    directory.mkdir()
    pd.DataFrame(rows).to_parquet(directory / "results.parquet")
    text = write_report(directory).read_text()
    assert "### Ablation: test mAP (Table 4)" in text
    assert "### Stability under GMM initialisation seeds (Table 9)" in text
    assert "| Baseline | 0.510 ± 0.010 |" in text and "| MIRACL | **0.530 ± 0.010** |" in text
    assert f"{np.mean([0.54, 0.541, 0.542, 0.543, 0.544]):.4f} ± {np.std([0.54, 0.541, 0.542, 0.543, 0.544]):.4f}" in text
    assert "Tables 2/3" not in text and "Fig. 3" not in text


def test_analysis_imports_neither_torch_nor_ray():
    code = ("import sys, miracl_grid.analysis.report, miracl_grid.analysis.figures, miracl_grid.analysis.tables, miracl_grid.analysis.collect, miracl_grid.analysis.significance; "
            "bad = [name for name in ('torch', 'ray') if name in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def lambda_with_baseline_frame(epochs=4):
    """λ_cons sweep: MIRACL at λ ∈ {0, 0.1} and FlexCare (λ left at 0.1), 3 seeds, 2 noise settings.
    FlexCare's test mAP peaks at epoch 2 and falls; MIRACL's rises to its last epoch."""
    rows = []
    for noise in (("symmetric", 0.2, 0.2), ("symmetric", 0.4, 0.4)):
        for arm, lams in ((("miracl", "flexcare", "MIRACL"), (0.0, 0.1)), (("bce", "flexcare", "FlexCare"), (0.1,))):
            for lam in lams:
                for seed in (30, 40, 100):
                    for epoch in range(1, epochs + 1):
                        if arm[0] == "bce":
                            value = 0.40 - noise[1] / 4 + (0.05 if epoch == 2 else 0.0) + seed / 1e4
                        else:
                            value = 0.40 - noise[1] / 4 + 0.01 * epoch + lam / 10 + seed / 1e4
                        record = row(f"{arm[0]}-{lam}-{noise[1]}-{seed}", "lambda_cons", *arm, noise, seed, epoch,
                                     value, lambda_cons=lam, epochs=epochs)
                        record.update({"is_last_epoch": epoch == epochs,
                                       "provenance/data_source": "synthetic cohort (350 patients, 606 stays)",
                                       "provenance/preset": "quick",
                                       "correction/fit_flipped": (0.2 if arm[0] == "miracl" else 0.1 * epoch),
                                       "correction/fit_clean": 0.9, "train/same_patient_share": 0.03,
                                       "correction/flip_rate_pos": 0.5, "correction/flip_rate_neg": 0.1,
                                       "correction/auc_bce_pos": 0.6, "correction/auc_bce_neg": 0.62,
                                       "correction/auc_rank_pos": 0.65, "correction/auc_rank_neg": 0.55})
                        if arm[0] == "miracl" and epoch >= 2:
                            record.update({"correction/auc_z_tilde_pos": 0.7, "correction/auc_z_tilde_neg": 0.64,
                                           "correction/accuracy_noisy_positive": 0.3,
                                           "correction/accuracy_noisy_negative": 0.2,
                                           "correction/prediction_accuracy_noisy_positive": 0.5,
                                           "correction/prediction_accuracy_noisy_negative": 0.4,
                                           "correction/soft_error_corrected": 0.15,
                                           "correction/soft_error_observed": noise[1],
                                           "correction/noisy_set_precision_pos": 0.7,
                                           "correction/noisy_set_precision_neg": 0.2,
                                           "correction/noisy_set_recall_pos": 0.3,
                                           "correction/noisy_set_recall_neg": 0.4,
                                           "correction/noisy_share_pos": 0.2, "correction/noisy_share_neg": 0.25,
                                           "correction/negatives_in_z_minus": 1.0,
                                           **{f"correction/size_{name}_{suffix}": 10.0 for name in
                                              ("clean", "uncertain", "noisy") for suffix in ("pos", "neg")}})
                        rows.append(record)
    return pd.DataFrame(rows)


def test_lambda_sweep_report_explains_itself(tmp_path):
    from scipy import stats

    directory = tmp_path / "run"
    directory.mkdir()
    frame = lambda_with_baseline_frame()
    frame.to_parquet(directory / "results.parquet")
    text = write_report(directory).read_text()          # FlexCare is not expected at every λ_cons
    for header in ("### What this run shows", "### Sensitivity to λ_cons (Fig. 3)",
                   "### MIRACL (at λ_cons = 0.1) vs FlexCare", "### Test mAP per epoch",
                   "### Memorisation of the flipped labels", "### Flipped pairs: corrected label vs the model's own prediction",
                   "### Selection quality per observed class",
                   "### Selection signals: within-class ROC-AUC for flipped vs clean pairs"):
        assert f"\n{header}\n" in text, header
    context = "synthetic cohort (350 patients, 606 stays) · preset quick · 4 epochs · 3 seed(s)"
    assert context in text
    assert all(context in line for line in text.splitlines() if line.startswith("<sub>") and "svg" in line)
    # the generated paragraph: gap and one-sided p at Sym. 40 %, measured from the rows themselves
    finals = frame.loc[frame["epoch"] == 4]
    mine = finals.loc[(finals["config/method"] == "miracl") & (finals["config/lambda_cons"] == 0.1)
                      & (finals["config/rho_pos"] == 0.4), "test/mAP"].to_numpy()
    theirs = finals.loc[(finals["config/method"] == "bce") & (finals["config/rho_pos"] == 0.4), "test/mAP"].to_numpy()
    p_value = stats.ttest_ind(mine, theirs, equal_var=True, alternative="greater").pvalue
    line = next(line for line in text.splitlines() if line.startswith("- **Sym. 40%**"))
    assert f"gap {mine.mean() - theirs.mean():+.3f}" in line
    assert f"p = {p_value:.3g}" in line or (p_value < 1e-4 and "p < 1e-4" in line)
    assert "FlexCare peaks at epoch 2" in line and "40 % (FlexCare), 20 % (MIRACL)" in line
    assert "Z̃ 0.70 / 0.64, per-pair BCE 0.60 / 0.62" in line
    assert "right on 30 % (obs. +) / 20 % (obs. −), the model's own prediction on 50 % / 40 %" in line
    # peak vs last table: FlexCare at Sym. 20 %: peak at epoch 2 is 0.05 above its last epoch
    assert "| FlexCare · Sym. 20% |" in text and "+0.050" in text
    for figure in ("lambda_cons_epoch_test_mAP", "lambda_cons_memorisation", "lambda_cons_flipped_pairs",
                   "lambda_cons_selection_quality", "lambda_cons_selection_auc", "lambda_cons_sensitivity_lambda_cons"):
        assert (directory / "figures" / f"{figure}.png").is_file(), figure
    values = pd.read_csv(directory / "tables" / "lambda_cons_significance_default_test_mAP_values.csv")
    assert set(values["comparator"]) == {"FlexCare"}
    assert values["p_value"].iloc[-1] == pytest.approx(p_value)


def test_lambda_sweep_at_one_value_still_compares_with_flexcare(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    frame = lambda_with_baseline_frame()
    frame = frame.loc[(frame["config/method"] == "bce") | (frame["config/lambda_cons"] == 0.1)]
    frame.to_parquet(directory / "results.parquet")
    text = write_report(directory).read_text()
    assert "`config/lambda_cons` does not vary in this sweep; no sensitivity curve." in text
    assert "\n### MIRACL (at λ_cons = 0.1) vs FlexCare\n" in text
    table = pd.read_csv(directory / "tables" / "lambda_cons_comparison_default_test_mAP.csv")
    assert table["Model"].tolist() == ["FlexCare", "MIRACL"]          # MIRACL once, not also as a baseline


def test_strings_from_results_cannot_inject_markdown_or_html(tmp_path):
    """Config, data and provenance strings reach report.md escaped (no HTML, no new lines/headings,
    no broken table cells) and never become file paths."""
    import re

    hostile = "<img src=x onerror=alert(1)>|`x`\n# injected [link](http://evil) **bold**"
    frame = main_and_lambda_frame()
    frame = frame[frame["sweep"] == "lambda_cons"].copy()
    frame["provenance/code_version"] = hostile
    frame["config/variant"] = "MIRACL"
    frame["config/text_feature_key"] = hostile
    frame.loc[frame["trial_id"] == frame["trial_id"].iloc[0], "status"] = hostile
    run = tmp_path / "run"
    run.mkdir()
    frame.to_parquet(run / "results.parquet")
    text = write_report(run, allow_partial=True).read_text()
    assert "<img" not in text.replace("\\<img", "")
    assert not any(line.lstrip().startswith("# injected") for line in text.splitlines())
    assert "[link](http://evil)" not in text and "\\[link\\]" in text
    widths, width = [], None                     # unescaped pipes per row, per table
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            count = len(re.findall(r"(?<!\\)\|", line))
            width = count if width is None else width
            assert count == width, line          # a value never opens or closes a cell
        elif width is not None:
            widths.append(width)
            width = None
    assert widths
    assert all(path.resolve().is_relative_to(run.resolve()) for path in run.rglob("*"))
