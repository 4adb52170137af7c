"""No-leakage proofs (METHOD §1, §2, §8): patient-wise split, noise only on train labels, selection and
correction blind to clean labels, the test split never trained on.

(a) no patient in both splits: the materialised embedded cohort (source split kept) and a MIMIC-IV
    layout whose split `miracl_grid.data.split` assigns, read back from stays.parquet;
(b) noise is injected into exactly the train rows' labels, and the test labels (on disk and in
    evaluation) are the clean ones, byte for byte;
(c) for every noise model the flip mask is exactly the label difference;
(d) methods never receive clean labels: no factory takes them, MIRACL's selection + correction give
    identical corrected labels for two clean matrices sharing one observed matrix, and a whole run
    is identical (except the clean-label diagnostics) on two cohorts whose clean train labels differ
    but whose observed labels are the same;
(e) the model sees test instances only in evaluation, and the pair statistics record train rows only.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import miracl_grid.trainables.loop as loop_module
from miracl_grid.data.noise import NOISE_MODELS, NoiseResult, apply_noise
from miracl_grid.data.schema import PHENOTYPE_LABELS, TIMESERIES_HEADER
from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.methods import build_method
from miracl_grid.trainables.registry import METHODS
from miracl_grid.trainables.metrics import correction_diagnostics
from miracl_grid.trainables.statistics import PairStatistics

TRIAL = dict(epochs=1, warmup_epochs=0, batch_size=16, hidden_size=16, fusion_layers=1, fusion_heads=2,
             num_experts=2, top_k_experts=1, max_note_tokens=16, max_series_bins=12, seed=5,
             method="miracl", noise_model="symmetric", rho_pos=0.4, rho_neg=0.4)
CLEAN_LABEL_NAMES = re.compile(r"clean|truth|true_label|gold", re.IGNORECASE)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """The embedded (synthetic, mimic3-benchmarks layout) cohort, 40 patients, materialised once."""
    from miracl_grid.data.prepare import prepare_cohort

    return prepare_cohort("synthetic", tmp_path_factory.mktemp("leakage_cohort"), patients=40, hours=12,
                          max_tokens=16, max_bins=12, progress=False)


def stays_of(cohort_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(cohort_dir / "stays.parquet")


def split_rows(cohort_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    split = stays_of(cohort_dir)["split"].to_numpy()
    return np.flatnonzero(split == "train"), np.flatnonzero(split == "test")


def run(cohort_dir: Path, **changes) -> list[dict]:
    return loop_module.run_training({"trial": {**TRIAL, **changes}, "cohort_dir": str(cohort_dir)},
                                    lambda metrics, folder: None)


def assert_patient_wise(stays: pd.DataFrame) -> None:
    train = set(stays.loc[stays["split"] == "train", "patient_id"])
    test = set(stays.loc[stays["split"] == "test", "patient_id"])
    assert train and test, "both splits must be populated"
    assert train.isdisjoint(test), f"patients in both splits: {sorted(train & test)[:5]}"
    assert set(stays["split"]) == {"train", "test"}


# --------------------------------------------------------------------------- (a) patient-wise split
def test_embedded_cohort_has_no_patient_in_both_splits(cohort):
    stays = stays_of(cohort)
    assert_patient_wise(stays)
    # the patient id is the <subject> of the stay file name, and the split is the source folder's
    subject = stays["stay"].str.extract(r"^(\d+)_episode\d+_timeseries\.csv$")[0].astype(np.int64)
    np.testing.assert_array_equal(subject.to_numpy(), stays["patient_id"].to_numpy())
    for split in ("train", "test"):
        listed = pd.read_csv(cohort / "source" / split / "listfile.csv")["stay"]
        assert set(listed) == set(stays.loc[stays["split"] == split, "stay"])
    assert stays["patient_id"].duplicated().any(), "the cohort should have patients with several stays"


def write_mimic4_listfile(folder: Path, stays_per_patient: list[int]) -> tuple[Path, dict[str, int]]:
    """A FlexCare-style listfile: patient p has stays_per_patient[p] stays, each with a small series file."""
    series_dir = folder / "ehr"
    series_dir.mkdir(parents=True)
    rows, patient_of = [], {}
    header = ",".join(TIMESERIES_HEADER)
    heart_rate = TIMESERIES_HEADER.index("Heart Rate")
    for patient, count in enumerate(stays_per_patient):
        for episode in range(count):
            stay_id = str(30000 + 10 * patient + episode)
            name = f"{stay_id}.csv"
            cells = [str(episode + 0.5)] + [""] * (len(TIMESERIES_HEADER) - 1)
            cells[heart_rate] = str(70 + patient)
            (series_dir / name).write_text(f"{header}\n{','.join(cells)}\n")
            labels = [(patient * 3 + episode + j) % 5 == 0 for j in range(len(PHENOTYPE_LABELS))]
            rows.append({"subject_id": 1000 + patient, "stay_id": stay_id, "time_series": name,
                         "period_length": 6.0, "past_medical_history": f"patient {patient} episode {episode}",
                         **dict(zip(PHENOTYPE_LABELS, np.asarray(labels, dtype=int)))})
            patient_of[stay_id] = 1000 + patient
    listfile = folder / "listfile.csv"
    pd.DataFrame(rows).to_csv(listfile, index=False)
    return listfile, patient_of


def test_mimic4_cohort_split_by_data_split_keeps_patients_on_one_side(tmp_path):
    from miracl_grid.data.prepare import prepare_cohort

    stays_per_patient = [3, 1, 2, 4, 1, 2, 3, 1, 2, 2, 1, 3]
    listfile, patient_of = write_mimic4_listfile(tmp_path / "mimic4", stays_per_patient)
    out = prepare_cohort(f"mimic4:{listfile},{listfile.parent / 'ehr'}", tmp_path / "cohort", max_tokens=16, max_bins=12, split_seed=4,
                         progress=False)
    stays = stays_of(out)
    assert len(stays) == sum(stays_per_patient)
    # patient ids are the listfile's subject_id of each stay (not re-derived), then no patient crosses
    assert dict(zip(stays["stay"], stays["patient_id"])) == patient_of
    assert_patient_wise(stays)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["split"]["method"] == "GroupShuffleSplit by patient"
    # 20 % of the 12 patients, rounded up, as GroupShuffleSplit does
    assert stays.loc[stays["split"] == "test", "patient_id"].nunique() == 3


# --------------------------------------------------------------------------- (b) noise only on train labels
def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_noise_touches_only_train_labels_and_test_labels_stay_clean(cohort, monkeypatch):
    labels_path = cohort / "labels.npy"
    labels = np.load(labels_path)
    train_rows, test_rows = split_rows(cohort)
    file_before = file_sha256(labels_path)
    test_before = hashlib.sha256(np.ascontiguousarray(labels[test_rows]).tobytes()).hexdigest()

    calls, evaluated = [], []

    def recording_noise(given, *args, **kwargs):
        snapshot = np.array(given, copy=True)
        result = apply_noise(given, *args, **kwargs)
        calls.append({"input": snapshot, "after": np.array(given, copy=True), "args": args, "result": result})
        return result

    real_metrics = loop_module.classification_metrics

    def recording_metrics(probabilities, truth):
        evaluated.append(np.array(truth, copy=True))
        return real_metrics(probabilities, truth)

    monkeypatch.setattr(loop_module, "apply_noise", recording_noise)
    monkeypatch.setattr(loop_module, "classification_metrics", recording_metrics)
    history = run(cohort)

    assert len(calls) == 1
    call = calls[0]
    assert call["input"].shape == (len(train_rows), len(PHENOTYPE_LABELS))
    np.testing.assert_array_equal(call["input"], labels[train_rows])       # exactly the train rows' labels
    np.testing.assert_array_equal(call["after"], call["input"])            # not mutated
    assert call["args"][0] == "symmetric" and call["result"].flipped_pairs > 0
    assert history[-1]["noise/flipped_pairs"] == call["result"].flipped_pairs

    assert file_sha256(labels_path) == file_before
    after = np.load(labels_path)
    assert hashlib.sha256(np.ascontiguousarray(after[test_rows]).tobytes()).hexdigest() == test_before
    # evaluation scores against the clean test labels, in test-row order
    assert len(evaluated) == 1
    np.testing.assert_array_equal(evaluated[0], labels[test_rows])


# --------------------------------------------------------------------------- (c) flip mask
@pytest.mark.parametrize("model", NOISE_MODELS)
def test_flip_mask_is_exactly_the_label_difference(model):
    rng = np.random.default_rng(11)
    labels = (rng.random((300, 25)) < 0.2).astype(np.uint8)
    original = labels.copy()
    result = apply_noise(labels, model, 0.3, 0.3, seed=2, l_avg=None)
    np.testing.assert_array_equal(labels, original)
    assert result.flip_mask.dtype == bool and result.flip_mask.shape == labels.shape
    np.testing.assert_array_equal(result.flip_mask, result.noisy != labels)
    np.testing.assert_array_equal(result.noisy, labels ^ result.flip_mask.astype(np.uint8))
    flipped_positive = int((result.flip_mask & (labels == 1)).sum())
    flipped_negative = int((result.flip_mask & (labels == 0)).sum())
    assert result.realised_rho_pos == pytest.approx(flipped_positive / int(labels.sum()))
    assert result.realised_rho_neg == pytest.approx(flipped_negative / int((labels == 0).sum()))
    if model == "none":
        assert not result.flip_mask.any()
    else:
        assert result.flip_mask.any()


# --------------------------------------------------------------------------- (d) methods never see clean labels
def test_no_method_factory_takes_clean_labels():
    factories = {"build_method": build_method, **{name: record.trainer_class() for name, record in METHODS.items()}}
    for name, factory in factories.items():
        parameters = set(inspect.signature(factory).parameters)
        assert parameters == {"config", "observed", "gather"}, (name, parameters)
        assert not any(CLEAN_LABEL_NAMES.search(p) for p in parameters), (name, parameters)


def fixed_statistics(observed: torch.Tensor, epochs: int, seed: int) -> PairStatistics:
    """Statistics of ``epochs`` closed epochs with fixed probabilities (a noisy version of observed)."""
    generator = torch.Generator().manual_seed(seed)
    statistics = PairStatistics(*observed.shape)
    for _ in range(epochs):
        noise = torch.rand(observed.shape, generator=generator)
        probabilities = (0.7 * observed + 0.3 * noise).clamp(0.01, 0.99)
        statistics.record_batch(torch.arange(observed.shape[0]), probabilities, observed)
        statistics.close_epoch()
    return statistics


def test_miracl_correction_is_identical_for_different_clean_labels_with_the_same_observed():
    generator = torch.Generator().manual_seed(0)
    num_instances, num_labels = 120, 5
    observed = (torch.rand(num_instances, num_labels, generator=generator) < 0.3).float()
    flips_a = torch.rand(observed.shape, generator=generator) < 0.2
    flips_b = torch.rand(observed.shape, generator=generator) < 0.4
    cleans = {"a": (observed.bool() ^ flips_a).float(), "b": (observed.bool() ^ flips_b).float()}
    assert not torch.equal(cleans["a"], cleans["b"])
    config = TrialConfig(method="miracl", epochs=4, warmup_epochs=2, gmm_min_group=5, seed=1)

    outcomes, diagnostics = {}, {}
    for name, clean in cleans.items():
        statistics = fixed_statistics(observed, epochs=2, seed=9)
        method = build_method(config, observed=observed.clone())
        outcome = method.end_epoch(2, statistics)
        outcomes[name] = outcome
        diagnostics[name] = correction_diagnostics(
            corrected=outcome.corrected, observed=observed, clean=clean, flip_mask=observed != clean,
            partition=outcome.partition, predictions=statistics.probabilities)

    corrected_a, corrected_b = outcomes["a"].corrected, outcomes["b"].corrected
    assert corrected_a is not None and not torch.equal(corrected_a, observed), "correction must change labels"
    assert torch.equal(corrected_a, corrected_b)
    assert torch.equal(outcomes["a"].partition, outcomes["b"].partition)
    # the clean labels do reach the (outside) diagnostics, so the two runs were not trivially the same
    assert diagnostics["a"]["correction/accuracy_corrected"] != diagnostics["b"]["correction/accuracy_corrected"]


def test_a_run_depends_on_clean_train_labels_only_through_the_observed_labels(cohort, tmp_path, monkeypatch):
    """Two cohorts that differ only in clean TRAIN labels, given the same observed labels, train identically.

    Every batch carries the clean labels (``batch['labels']``); if a backbone or method read them,
    losses, corrected-set sizes or test scores would differ.
    """
    from miracl_grid.data.materialise import materialise
    from miracl_grid.data.readers import read_mimic3_phenotyping

    train_rows, _ = split_rows(cohort)
    labels = np.load(cohort / "labels.npy")
    # the same source, other clean train labels, materialised as prepare does (a cohort edited in
    # place is refused at load: its files no longer match their records)
    source = read_mimic3_phenotyping(cohort / "source", progress=False)
    np.testing.assert_array_equal(source.labels, labels)
    rng = np.random.default_rng(5)
    source.labels[train_rows] ^= (rng.random((len(train_rows), labels.shape[1])) < 0.25).astype(np.uint8)
    other = materialise(source, tmp_path / "other_clean_labels", max_bins=12, max_tokens=16, progress=False)
    assert (np.load(other / "labels.npy")[train_rows] != labels[train_rows]).any()

    observed = apply_noise(labels[train_rows], "symmetric", 0.3, 0.3, seed=1).noisy

    def same_observed(clean, *args, **kwargs):
        flip = observed != clean
        return NoiseResult(noisy=observed.copy(), flip_mask=flip, rho_pos=0.3, rho_neg=0.3,
                           realised_rho_pos=float("nan"), realised_rho_neg=float("nan"), model="fixed", seed=0)

    monkeypatch.setattr(loop_module, "apply_noise", same_observed)
    first = run(cohort, epochs=2, warmup_epochs=1)
    second = run(other, epochs=2, warmup_epochs=1)
    blind_prefixes = ("train/", "test/", "correction/size_", "correction/gmm_", "correction/negative_")
    assert [m["epoch"] for m in first] == [m["epoch"] for m in second] == [1, 2]
    for before, after in zip(first, second):
        assert before.keys() == after.keys()
        blind = {k: before[k] for k in before if k.startswith(blind_prefixes)}
        assert "test/mAP" in blind and "train/loss" in blind
        assert blind == {k: after[k] for k in blind}
    assert first[-1]["correction/size_noisy"] >= 0 and first[-1]["train/loss_bce_corrected"] > 0
    assert first[-1]["correction/accuracy_corrected"] != second[-1]["correction/accuracy_corrected"]


# --------------------------------------------------------------------------- (e) test split never trained on
def test_test_split_is_never_trained_on(cohort, monkeypatch):
    train_rows, test_rows = split_rows(cohort)
    forwards, recorded = [], []
    real_build = loop_module.build_backbone

    def recording_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: forwards.append(
            (module.training, torch.is_grad_enabled(), inputs[0]["index"].clone())))
        return model

    real_record = PairStatistics.record_batch

    def recording_record(self, positions, probabilities, observed):
        recorded.append(positions.clone())
        return real_record(self, positions, probabilities, observed)

    monkeypatch.setattr(loop_module, "build_backbone", recording_build)
    monkeypatch.setattr(PairStatistics, "record_batch", recording_record)
    epochs = 2
    run(cohort, epochs=epochs, warmup_epochs=1)

    trained = [index for training, grad, index in forwards if training or grad]
    evaluated = [index for training, grad, index in forwards if not (training or grad)]
    trained_rows = torch.cat(trained).numpy()
    assert np.isin(trained_rows, train_rows).all()
    assert not np.isin(trained_rows, test_rows).any()
    # every train row once per epoch; every test row once per epoch, in evaluation only
    np.testing.assert_array_equal(np.sort(trained_rows), np.sort(np.repeat(train_rows, epochs)))
    np.testing.assert_array_equal(np.sort(torch.cat(evaluated).numpy()), np.sort(np.repeat(test_rows, epochs)))
    # the statistics rows are train positions, and they are the rows the model was trained on, batch by batch
    positions = torch.cat(recorded).numpy()
    assert positions.min() >= 0 and positions.max() < len(train_rows)
    np.testing.assert_array_equal(train_rows[positions], trained_rows)
