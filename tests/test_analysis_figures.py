"""miracl_grid.analysis.figures / miracl_grid.trainables.selection_artifact: sensitivity curves, Fig. 4 curves, GMM histograms from an npz."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from miracl_grid.trainables.selection_artifact import ArtifactError, load_selection_artifact, write_selection_artifact
from miracl_grid.analysis.figures import (correction_accuracy_plot, selection_components_plot, selection_histogram_plot,
                              sensitivity_plot, set_size_plot)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAMBDAS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)


def lambda_frame(noises=((0.2, 0.2), (0.4, 0.4)), seeds=(30, 40, 100)):
    rows = []
    for rho, _ in noises:
        for lam in LAMBDAS:
            for seed in seeds:
                for epoch in (1, 2):
                    rows.append({"trial_id": f"{rho}_{lam}_{seed}", "sweep": "lambda_cons", "epoch": epoch,
                                 "status": "TERMINATED", "config/method": "miracl", "config/backbone": "flexcare",
                                 "config/variant": "MIRACL", "config/noise_model": "symmetric",
                                 "config/rho_pos": rho, "config/rho_neg": rho, "config/seed": seed,
                                 "config/lambda_cons": lam,
                                 "test/mAP": (0.6 - rho + lam / 10 + seed / 1e4) if epoch == 2 else 0.0})
    return pd.DataFrame(rows)


def test_sensitivity_plot_one_line_per_noise_level_and_zero_on_axis(tmp_path):
    figure = sensitivity_plot(lambda_frame(), "lambda_cons", "test/mAP", "noise setting", output=tmp_path / "fig3")
    assert len(figure.axes) == 1
    axes = figure.axes[0]
    assert len(axes.lines) == 2
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["Sym. 20%", "Sym. 40%"]
    low, high = axes.get_xlim()
    assert low <= 0.0 <= high and high >= 0.5
    assert axes.get_xscale() == "symlog"
    # each line: last-epoch mean across seeds (epoch-1 zeros must not enter)
    x, y = axes.lines[0].get_data()
    assert list(x) == list(LAMBDAS)
    expected = [0.6 - 0.2 + lam / 10 + np.mean([30, 40, 100]) / 1e4 for lam in LAMBDAS]
    assert np.allclose(y, expected)
    png = (tmp_path / "fig3.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert (tmp_path / "fig3.svg").read_text().lstrip().startswith("<?xml")


def test_sensitivity_plot_linear_axis_for_alpha():
    frame = lambda_frame(noises=((0.2, 0.2),)).rename(columns={"config/lambda_cons": "config/alpha"})
    frame["config/alpha"] = frame["config/alpha"].map(dict(zip(LAMBDAS, (0, 0.25, 0.5, 0.75, 1.0, 0.6))))
    axes = sensitivity_plot(frame, "alpha").axes[0]
    assert axes.get_xscale() == "linear" and len(axes.lines) == 1
    assert axes.get_xlim()[0] <= 0.0


def test_sensitivity_plot_missing_column_is_a_clear_error():
    with pytest.raises(KeyError, match="config/alpha"):
        sensitivity_plot(lambda_frame().drop(columns=["config/lambda_cons"]), "alpha")


def epoch_frame():
    rows = []
    for seed in (30, 40):
        for epoch in range(1, 6):
            active = epoch > 2
            rows.append({"trial_id": f"m{seed}", "sweep": "main", "epoch": epoch, "status": "TERMINATED",
                         "config/method": "miracl", "config/backbone": "flexcare", "config/variant": "MIRACL",
                         "config/noise_model": "symmetric", "config/rho_pos": 0.2, "config/rho_neg": 0.2,
                         "config/seed": seed,
                         "correction/accuracy_clean_pairs": 0.9 + 0.01 * epoch if active else np.nan,
                         "correction/accuracy_noisy_corrected": 0.5 + 0.05 * epoch if active else np.nan,
                         "correction/accuracy_noisy_uncorrected": 0.3 + seed / 1000,
                         "correction/size_clean": 800.0 if active else np.nan,
                         "correction/size_uncertain": 100.0 if active else np.nan,
                         "correction/size_noisy": 100.0 if active else np.nan,
                         "correction/noisy_set_recall": 0.6 if active else np.nan,
                         "correction/noisy_set_precision": 0.7 if active else np.nan})
    return pd.DataFrame(rows)


def test_correction_accuracy_plot_three_coloured_curves():
    figure = correction_accuracy_plot(epoch_frame())
    assert len(figure.axes) == 1
    lines = figure.axes[0].lines
    assert [line.get_color() for line in lines] == ["tab:blue", "tab:orange", "tab:green"]
    x, y = lines[2].get_data()
    assert list(x) == [1, 2, 3, 4, 5] and np.allclose(y, 0.3 + 0.035)        # mean of the two seeds
    x, y = lines[1].get_data()
    assert np.isnan(y[:2]).all() and np.allclose(y[2:], [0.65, 0.7, 0.75])


def test_set_size_plot_and_no_data_error():
    figure = set_size_plot(epoch_frame())
    assert len(figure.axes) == 2 and len(figure.axes[0].lines) == 3 and len(figure.axes[1].lines) == 2
    with pytest.raises(ValueError, match="correction/accuracy"):
        correction_accuracy_plot(epoch_frame().drop(columns=[c for c in epoch_frame() if c.startswith("correction/")]))


def fake_artifact(path, groups=3, seed=0, flips=True):
    rng = np.random.default_rng(seed)
    z_values, partitions, flipped = [], [], []
    for group in range(groups):
        values = np.clip(np.concatenate([rng.normal(0.2, 0.05, 60 + group), rng.normal(0.8, 0.05, 15)]), 0, 1)
        z_values.append(values)
        partitions.append(np.where(values < 0.2, 0, np.where(values < 0.8, 1, 2)))
        flipped.append((values > 0.5) & flips)
    offsets = np.cumsum([0] + [len(values) for values in z_values])
    return write_selection_artifact(
        path, label_index=np.arange(groups) + 3, observed_class=np.array([1, 0, 1][:groups]),
        z_values=np.concatenate(z_values), z_offsets=offsets,
        means=np.tile([0.8, 0.2], (groups, 1)), variances=np.full((groups, 2), 0.0025),
        weights=np.tile([0.2, 0.8], (groups, 1)), partition=np.concatenate(partitions), epoch=np.int64(12),
        label_names=np.array([f"phenotype {index}" for index in range(10)]), flipped=np.concatenate(flipped),
        rank_values=np.concatenate(z_values), difficulty_values=np.concatenate([values[::-1] for values in z_values]))


def test_artifact_round_trip(tmp_path):
    artifact = load_selection_artifact(fake_artifact(tmp_path / "sel.npz"))
    assert artifact.num_groups == 3 and artifact.epoch == 12
    assert artifact.z_offsets.tolist() == [0, 75, 151, 228]
    assert artifact.group_name(1) == "phenotype 4 (negative)"
    assert set(artifact.components) == {"rank_values", "difficulty_values"}


def test_artifact_validation_names_the_array(tmp_path):
    path = fake_artifact(tmp_path / "sel.npz")
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["z_offsets"] = arrays["z_offsets"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ArtifactError, match="z_offsets"):
        load_selection_artifact(tmp_path / "bad.npz")
    del arrays["means"]
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(ArtifactError, match="missing array.*means"):
        load_selection_artifact(tmp_path / "bad2.npz")
    del arrays["z_offsets"]
    with pytest.raises(ArtifactError, match="z_offsets"):      # the writer runs the reader's checks
        write_selection_artifact(tmp_path / "bad3.npz", **arrays, z_offsets=np.array([0, 3]),
                                 means=np.zeros((3, 2)))
    assert not (tmp_path / "bad3.npz").exists()


def test_selection_histogram_overlays_the_gmm_densities(tmp_path):
    path = fake_artifact(tmp_path / "sel.npz")
    figure = selection_histogram_plot(path, output=tmp_path / "fig7")
    assert len(figure.axes) == 3
    axes = figure.axes[0]
    components = [line for line in axes.lines if line.get_linestyle() == "--"]
    mixture = [line for line in axes.lines if line.get_color() == "black" and line.get_linestyle() == "-"]
    assert len(components) == 2 and len(mixture) == 1
    x, y = mixture[0].get_data()
    expected = 0.8 * stats.norm.pdf(x, 0.2, 0.05) + 0.2 * stats.norm.pdf(x, 0.8, 0.05)
    assert np.allclose(y, expected, rtol=1e-5)
    x, y = components[0].get_data()                      # first component = the clean (lower-mean) one
    assert np.allclose(y, 0.8 * stats.norm.pdf(x, 0.2, 0.05), rtol=1e-5)
    assert len(axes.patches) > 0                         # the histogram bars
    assert (tmp_path / "fig7.png").read_bytes().startswith(PNG_MAGIC)
    assert len(selection_histogram_plot(path, groups=[2]).axes) == 1
    assert len(selection_histogram_plot(path, colour_by="truth").axes) == 3


def test_selection_components_plot_panels(tmp_path):
    figure = selection_components_plot(fake_artifact(tmp_path / "sel.npz"), 1)
    assert [axes.get_title() for axes in figure.axes] == ["rank", "difficulty", "Z̃"]


def test_selection_components_plot_group_without_flips_draws_the_clean_side_only(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # an empty side's density would be 0/0
        figure = selection_components_plot(fake_artifact(tmp_path / "sel.npz", flips=False), 1)
    labels = {patch.get_label() for axes in figure.axes for patch in axes.patches}
    assert labels == {"clean"}
