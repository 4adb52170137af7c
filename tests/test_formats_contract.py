"""Contract of the file formats between the layers: a real trial's files, written by the
production code path (the grid's per-trial loop config, the loop, the checkpoint store), read
back by the one reader of each format — the sweep folder (`grid.results`), results.parquet
(`analysis.collect.load_results`), the selection artifact (`trainables.selection_artifact`),
the text-feature cache (`data.text_features`) — and drawn into the report (Fig. 5)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from miracl_grid.analysis.collect import load_results
from miracl_grid.analysis.report import write_report
from miracl_grid.data.dataset import CohortData
from miracl_grid.data.noise import apply_noise
from miracl_grid.data.text_features import TextFeatures, load_text_features
from miracl_grid.grid.folder import SweepFolder
from miracl_grid.grid.results import FINISHED_STATUS, write_results
from miracl_grid.grid.runner import trial_loop_config
from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.loop import run_with_store
from miracl_grid.trainables.selection import EPSILON
from miracl_grid.trainables.selection_artifact import load_selection_artifact

TINY = dict(epochs=3, warmup_epochs=1, batch_size=32, hidden_size=32, fusion_layers=1, fusion_heads=2,
            num_experts=4, top_k_experts=2, max_note_tokens=32, max_series_bins=24, cosine_t_max=2,
            rho_pos=0.4, rho_neg=0.4, seed=30, lambda_cons=0.1, artifact_groups=2)
REPORTED_PREFIXES = ("test/", "train/", "correction/", "noise/", "artifact/")


@pytest.fixture(scope="module")
def real_sweep(tiny_cohort, tmp_path_factory):
    """One MIRACL trial run in-process into a sweep folder exactly as the grid lays it out."""
    folder = SweepFolder(str(tmp_path_factory.mktemp("sweep") / "lambda_cons"))
    manifest = json.loads((tiny_cohort / "manifest.json").read_text())
    folder.claim(sweep="lambda_cons", cohort_hash=manifest["cohort_hash"])
    config = TrialConfig.from_dict(TINY).to_flat_dict()
    identity = folder.register("miracl_sym40-40_lam0.1_s30", "lambda_cons", config,
                               {"provenance/cohort_hash": manifest["cohort_hash"]})
    runtime = {"experiment_dir": folder.uri, "cohort_dir": str(tiny_cohort), "cpus_per_worker": 1,
               "gpus_per_worker": 0}
    loop_config = trial_loop_config({"id": identity, "name": "miracl_sym40-40_lam0.1_s30", "config": config}, runtime)
    reported: list[dict] = []
    run_with_store(loop_config, folder.checkpoint_store(identity), reported.append)
    write_results(folder)
    return folder, reported


def _same(found, expected) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(found, float) and math.isnan(found)
    return found == expected


def test_results_hold_every_reported_epoch_once_with_its_values(real_sweep):
    folder, reported = real_sweep
    frame, trials = load_results(folder.uri)
    assert frame["epoch"].tolist() == [1, 2, 3]
    assert frame["is_last_epoch"].tolist() == [False, False, True]
    assert set(frame["status"]) == {FINISHED_STATUS} and trials["status"].tolist() == [FINISHED_STATUS]
    for row, metrics in zip(frame.to_dict("records"), reported):
        for key, value in metrics.items():
            if key.startswith(REPORTED_PREFIXES):
                assert _same(row[key], value), key


def test_the_trials_selection_artifact_reads_back_with_its_true_flips(real_sweep, tiny_cohort):
    folder, reported = real_sweep
    paths = [metrics["artifact/selection_path"] for metrics in reported]
    assert all(paths)                                   # selection at the end of every epoch ≥ t_w = 1
    artifact = load_selection_artifact(paths[-1])
    assert artifact.epoch == 3 and artifact.num_groups == 2 * TINY["artifact_groups"]
    data = CohortData(tiny_cohort)
    assert artifact.label_names.tolist() == list(data.label_names)
    clean = data.labels[data.rows("train")]
    config = TrialConfig.from_dict(TINY)
    noise = apply_noise(clean, config.noise_model, config.rho_pos, config.rho_neg,
                        seed=config.effective_noise_seed, l_avg=data.manifest["l_avg_train"])
    assert set(artifact.components) == {"loss_values", "rank_values", "difficulty_values"}
    for group in range(artifact.num_groups):
        label, observed_class = int(artifact.label_index[group]), int(artifact.observed_class[group])
        members = noise.noisy[:, label] == observed_class
        span = artifact.group_slice(group)
        # the group holds every pair observed in that class; its flips are the pairs whose clean label differs
        assert span.stop - span.start == members.sum()
        assert artifact.flipped[span].sum() == (clean[members, label] != observed_class).sum()
        # Eq. 2: Z̃ = group-renormalised α·R̃ + (1−α)·D̃ of the stored components
        z = config.alpha * artifact.components["rank_values"][span] \
            + (1 - config.alpha) * artifact.components["difficulty_values"][span]
        if z.size:
            expected = (z - z.min()) / (z.max() - z.min() + EPSILON)
            np.testing.assert_allclose(artifact.z_values[span], expected, rtol=0, atol=1e-12)


def test_a_real_sweeps_report_draws_fig5(real_sweep):
    folder, _ = real_sweep
    text = write_report(folder.uri).read_text()
    figures = folder.local_dir() / "figures"
    assert "Selection-metric distributions (Fig. 5/7)" in text
    assert (figures / "lambda_cons_selection_Sym_40_components.png").is_file()
    assert "lambda_cons_selection_Sym_40_components.png" in text


def test_the_cohorts_text_features_are_read_by_the_one_reader(tiny_cohort):
    data = CohortData(tiny_cohort)
    features = data.text()
    assert isinstance(features, TextFeatures)
    again = load_text_features(tiny_cohort, data.text_key, num_notes=data.num_stays)
    np.testing.assert_array_equal(features.token_offsets, again.token_offsets)
    assert features.meta == again.meta and features.dim == again.dim == data.note_dim
    notes = np.diff(features.token_offsets) > 0
    assert notes.tolist() == data.stays["has_note"].tolist()        # the writer's empty notes have 0 tokens
