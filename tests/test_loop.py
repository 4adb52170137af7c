"""The per-worker loop run in-process (no Ray): determinism, resume, every method, correction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from miracl_grid.trainables.loop import load_training_state, run_training
from miracl_grid.trainables.registry import METHODS

TINY = dict(epochs=3, warmup_epochs=1, batch_size=32, hidden_size=32, fusion_layers=1, fusion_heads=2,
            num_experts=4, top_k_experts=2, max_note_tokens=32, max_series_bins=24, cosine_t_max=2,
            rho_pos=0.4, rho_neg=0.4, seed=30)


def _run(cohort, tmp_path=None, resume=None, **changes):
    trial = {**TINY, **changes}
    reports, checkpoints = [], {}

    def report(metrics, folder):
        reports.append(metrics)
        if folder and tmp_path is not None:
            import shutil
            target = tmp_path / f"epoch{metrics['epoch']}"
            shutil.copytree(folder, target)
            checkpoints[metrics["epoch"]] = target

    history = run_training({"trial": trial, "cohort_dir": str(cohort)}, report, resume)
    return history, reports, checkpoints


def _comparable(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), key
        else:
            assert x == y, key


def test_same_config_and_seed_give_identical_metrics(tiny_cohort):
    first, reports, _ = _run(tiny_cohort)
    second, _, _ = _run(tiny_cohort)
    assert len(first) == len(reports) == TINY["epochs"]
    _same(_comparable(first[-1]), _comparable(second[-1]))
    assert 0.0 < first[-1]["test/mAP"] <= 1.0


def test_resume_from_mid_run_checkpoint_reproduces_last_epoch(tiny_cohort, tmp_path):
    uninterrupted, _, checkpoints = _run(tiny_cohort, tmp_path)
    state = load_training_state(checkpoints[2])
    assert state.epoch == 2 and state.method["corrected"] is not None
    resumed, reports, _ = _run(tiny_cohort, resume=state)
    assert [m["epoch"] for m in reports] == [3]
    _same(_comparable(uninterrupted[-1]), _comparable(resumed[-1]))


def test_noise_metrics_match_the_injected_rates(tiny_cohort):
    history, _, _ = _run(tiny_cohort, epochs=1, warmup_epochs=0, rho_pos=0.0, rho_neg=0.2,
                         noise_model="asymmetric", method="bce")
    last = history[-1]
    assert last["noise/realised_rho_pos"] == 0.0
    assert abs(last["noise/realised_rho_neg"] - 0.2) < 0.05
    # no correction for BCE: corrected-label metrics are NaN, observed accuracy is 1 - flipped share
    assert math.isnan(last["correction/accuracy_corrected"])
    assert last["correction/active"] is False


@pytest.mark.parametrize("method,backbone", [(m, "flexcare") for m in sorted(METHODS) if m != "cbmlc"]
                         + [("bce", "medfuse"), ("bce", "m3care"), ("cbmlc", "cbmlc")])
def test_every_method_and_backbone_trains_two_epochs(tiny_cohort, method, backbone):
    history, _, _ = _run(tiny_cohort, epochs=2, warmup_epochs=1, method=method, backbone=backbone)
    assert [m["epoch"] for m in history] == [1, 2]
    for metrics in history:
        assert np.isfinite(metrics["train/loss"]), metrics
        assert 0.0 <= metrics["test/mAP"] <= 1.0
    active = history[-1]["correction/active"]
    assert active is (method == "miracl")


def test_miracl_correction_reports_partition_and_artifact(tiny_cohort, tmp_path):
    trial = {**TINY, "artifact_groups": 2}
    reports = []
    run_training({"trial": trial, "cohort_dir": str(tiny_cohort), "artifact_dir": str(tmp_path)},
                 lambda m, f: reports.append(m))
    last = reports[-1]
    sizes = last["correction/size_clean"] + last["correction/size_uncertain"] + last["correction/size_noisy"]
    labels = np.load(tiny_cohort / "labels.npy")
    import pandas as pd
    train = (pd.read_parquet(tiny_cohort / "stays.parquet")["split"] == "train").sum()
    assert sizes == train * labels.shape[1]
    with np.load(last["artifact/selection_path"]) as artifact:
        assert artifact["label_index"].shape == (4,)
        assert artifact["z_offsets"][-1] == len(artifact["z_values"]) == len(artifact["partition"])
        assert np.all((artifact["z_values"] >= 0) & (artifact["z_values"] <= 1))


def test_selection_pass_eval_changes_the_statistics_not_the_training(tiny_cohort):
    """selection_pass='eval' records p from an eval-mode pass after the epoch: epoch 1 trains
    identically (same test mAP) but the statistics — and so every diagnostic built on them —
    differ; after warm-up the corrected labels differ too."""
    train, _, _ = _run(tiny_cohort, epochs=2, warmup_epochs=1)
    evaluated, _, _ = _run(tiny_cohort, epochs=2, warmup_epochs=1, selection_pass="eval")
    assert evaluated[0]["test/mAP"] == train[0]["test/mAP"]
    assert evaluated[0]["correction/fit_flipped"] != train[0]["correction/fit_flipped"]
    assert evaluated[0]["correction/auc_bce_pos"] != train[0]["correction/auc_bce_pos"]
    assert evaluated[1]["correction/accuracy_corrected"] != train[1]["correction/accuracy_corrected"]


def test_every_epoch_reports_the_mechanism_diagnostics(tiny_cohort):
    history, _, _ = _run(tiny_cohort, epochs=3, warmup_epochs=2)
    warmup, corrected = history[0], history[-1]        # selection starts at the end of warm-up (epoch 2)
    for key in ("correction/fit_flipped", "correction/fit_clean", "train/same_patient_share", "correction/flip_rate_pos",
                "correction/auc_rank_pos", "correction/auc_bce_neg", "correction/auc_difficulty_events_neg",
                "correction/soft_error_observed", "correction/prediction_accuracy_noisy_positive"):
        assert 0.0 <= warmup[key] <= 1.0 and 0.0 <= corrected[key] <= 1.0, key
    assert math.isnan(warmup["correction/auc_z_tilde_pos"]) and 0.0 <= corrected["correction/auc_z_tilde_pos"] <= 1.0
    assert math.isnan(warmup["correction/negatives_in_z_minus"])
    assert 0.0 <= corrected["correction/negatives_in_z_minus"] <= 1.0
    assert corrected["correction/size_noisy_pos"] + corrected["correction/size_noisy_neg"] == \
        corrected["correction/size_noisy"]


def test_a_balanced_trial_refuses_a_rho_neg_its_cohort_does_not_give(tiny_cohort):
    from miracl_grid.data.materialise import load_manifest
    from miracl_grid.data.noise import NoiseError, balanced_rho_neg

    manifest = load_manifest(tiny_cohort)
    derived = balanced_rho_neg(0.2, manifest["l_avg_train"], manifest["num_labels"])
    with pytest.raises(NoiseError, match="rho_neg"):
        _run(tiny_cohort, epochs=1, warmup_epochs=0, method="bce", noise_model="balanced", rho_pos=0.2, rho_neg=0.2)
    history, _, _ = _run(tiny_cohort, epochs=1, warmup_epochs=0, method="bce", noise_model="balanced",
                         rho_pos=0.2, rho_neg=derived)
    assert history[-1]["noise/rho_neg_nominal"] == derived


def test_the_single_trial_cli_refuses_a_hand_set_balanced_rho_neg_before_ray(tiny_cohort, capsys):
    from miracl_grid.trainables.train import main

    assert main(["--data", str(tiny_cohort), "--noise-model", "balanced", "--rho-pos", "0.2", "--rho-neg", "0.2"]) == 2
    assert "config field 'rho_neg' = 0.2: balanced noise" in capsys.readouterr().err
