"""`python -m miracl_grid.data.prepare` / `prepare_cohort`: sources, exit codes, logging, end to end."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import miracl_grid.data.materialise as materialise_module
from miracl_grid.data.dataset import CohortData, CohortDataset, collate
from miracl_grid.data.errors import CohortError
from miracl_grid.data.materialise import load_manifest
from miracl_grid.data.prepare import main, parse_source, prepare_cohort
from miracl_grid.data.schema import DIAGNOSIS_LABELS, TIMESERIES_HEADER
from fake_text import make_fake_text_features

@pytest.fixture
def fake_encoder(monkeypatch):
    monkeypatch.setattr(materialise_module, "_ensure_text_features",
                        make_fake_text_features(dim=2, values="ones", key_prefix="fake", revision="0"))


@pytest.mark.parametrize("text, expected", [
    ("synthetic", ("synthetic", [])),
    ("mimic3:/data/phenotyping", ("mimic3", ["/data/phenotyping"])),
    ("mimic4:/d/list.csv", ("mimic4", ["/d/list.csv"])),
    ("mimic4:/d/list.csv,/d/ehr", ("mimic4", ["/d/list.csv", "/d/ehr"])),
])
def test_parse_source(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize("text", ["mimic3", "mimic3:", "eicu:/x", "mimic4:a,b,c", "synthetic:x"])
def test_parse_source_rejects(text):
    with pytest.raises(CohortError, match="expected synthetic"):
        parse_source(text)


def write_mimic4(folder: Path, labels: list[list[int]]) -> Path:
    (folder / "ehr").mkdir(parents=True)
    header = ",".join(TIMESERIES_HEADER)
    names = []
    for index in range(len(labels)):
        name = f"{index}_episode1_timeseries.csv"
        (folder / "ehr" / name).write_text(f"{header}\n0.5{',' * 9}{80 + index}{',' * 8}\n")
        names.append(name)
    table = pd.DataFrame({"subject_id": np.arange(len(labels)) // 2 + 100, "stay_id": np.arange(len(labels)) + 5000,
                          "time_series": names, "period_length": 2.0,
                          "past_medical_history": [f"note number {i}" for i in range(len(labels))]})
    for column in DIAGNOSIS_LABELS:  # the MIMIC-IV diagnosis task; the first two carry the given labels
        table[column] = 0
    for column, values in zip(DIAGNOSIS_LABELS, np.asarray(labels).T):
        table[column] = values
    table.to_csv(folder / "list.csv", index=False)
    return folder / "list.csv"


def test_cli_bad_input_exits_2_with_the_message(tmp_path, capsys, fake_encoder):
    listfile = write_mimic4(tmp_path / "src", [[1, 0], [0, 2], [1, 1], [0, 0]])
    code = main(["--source", f"mimic4:{listfile}", "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert (f"list.csv: line 3, column '{DIAGNOSIS_LABELS[1]}': expected a label in {{-2, -1, 0, 1}}, found '2'"
            in captured.err)
    assert "Traceback" not in captured.err and captured.out == ""
    assert main(["--source", "nonsense", "--out", str(tmp_path / "out"), "--quiet"]) == 2


def test_prepare_mimic4_assigns_a_patient_split(tmp_path, fake_encoder):
    labels = [[1, -1], [0, 1], [1, 1], [0, 0], [-1, 0], [1, 0], [0, 1], [1, 1], [0, 0], [1, 0]]
    listfile = write_mimic4(tmp_path / "src", labels)
    out = prepare_cohort(f"mimic4:{listfile},{tmp_path / 'src' / 'ehr'}", tmp_path / "out", split_seed=1,
                         max_tokens=8, progress=False)
    manifest = load_manifest(out)
    assert manifest["num_stays"] == 10 and manifest["num_patients"] == 5
    assert manifest["source"]["uncertain_labels_read_as_zero"] == 2
    assert manifest["source"]["split"]["seed"] == 1
    stays = pd.read_parquet(out / "stays.parquet")
    assert (stays.groupby("patient_id")["split"].nunique() == 1).all()
    assert stays.loc[stays["split"] == "test", "patient_id"].nunique() == 1  # ceil(0.2 * 5)
    expected = np.zeros((len(labels), len(DIAGNOSIS_LABELS)), dtype=np.uint8)
    expected[:, :2] = np.maximum(np.asarray(labels), 0)
    np.testing.assert_array_equal(np.load(out / "labels.npy"), expected)


def test_cli_synthetic_logs_stages_and_reuse(tmp_path, caplog, capsys, fake_encoder):
    arguments = ["--source", "synthetic", "--out", str(tmp_path / "c"), "--patients", "12", "--hours", "8",
                 "--max-tokens", "16", "--quiet"]
    with caplog.at_level(logging.INFO, logger="miracl_grid.data.prepare"):
        assert main(arguments) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c")
    messages = [r.getMessage() for r in caplog.records if r.name == "miracl_grid.data.prepare"]
    for stage in ("generate", "read", "discretise", "write", "text"):
        assert any(m.startswith(f"stage {stage}: ") and m.endswith(" s") for m in messages), stage
    assert any(m.startswith("encoded ") and " notes in " in m for m in messages)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="miracl_grid.data.prepare"):
        assert main(arguments) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "miracl_grid.data.prepare"]
    assert "text features fake-16 reused" in messages
    manifest = load_manifest(tmp_path / "c")
    assert manifest["reused"] == {"cohort": True, "text": True}
    assert manifest["source"]["format"] == "mimic3-benchmarks-phenotyping"
    assert manifest["source"]["synthetic"]["num_patients"] == 12


def test_end_to_end_tiny_synthetic_with_the_real_encoder(tmp_path):
    out = prepare_cohort("synthetic", tmp_path / "c", patients=8, hours=6, max_tokens=24, progress=False)
    manifest = load_manifest(out)
    first_hash = manifest["cohort_hash"]
    assert manifest["reused"] == {"cohort": False, "text": False}
    data = CohortData(out)
    assert data.note_dim == manifest["text"]["features"][data.text_key]["dim"] > 0
    assert data.label_embeddings().shape == (25, data.note_dim)
    batch = collate([item for item in CohortDataset(data, "train", max_note_tokens=10)])
    assert batch["series"].shape[2] == 76 and batch["note"].shape[1] <= 10
    assert batch["labels"].shape[1] == 25
    assert (batch["note_length"] > 0).tolist() == data.stays.loc[data.train_rows, "has_note"].tolist()
    again = prepare_cohort("synthetic", tmp_path / "c", patients=8, hours=6, max_tokens=24, progress=False)
    manifest = load_manifest(again)
    assert manifest["cohort_hash"] == first_hash and manifest["reused"] == {"cohort": True, "text": True}


def test_mimic4_diagnosis_task_folder_materialises_with_its_split_and_trains(tmp_path):
    """DIA as FlexCare writes it (train/val/test listfiles, data/ehr, -1/-2 labels, stays without series or
    note) -> a cohort with the shipped split that trains one epoch."""
    from test_bad_inputs import run_one_epoch
    from test_readers import MIMIC4_VALUES, SPLIT_ROWS, write_mimic4_task

    task = write_mimic4_task(tmp_path / "data")
    out = prepare_cohort(f"mimic4:{task}", tmp_path / "cohort", max_tokens=16, max_bins=12, split_seed=5,
                         progress=False)
    manifest = load_manifest(out)
    stays = pd.read_parquet(out / "stays.parquet")
    order = SPLIT_ROWS["train"] + SPLIT_ROWS["val"] + SPLIT_ROWS["test"]
    assert dict(zip(stays["stay"], stays["split"])) == {str(3000 + r): ("test" if r in SPLIT_ROWS["test"] else "train")
                                                        for r in order}
    assert manifest["source"]["task"] == "diagnosis" and manifest["source"]["split"]["stays_per_file"] == {
        "train": 3, "val": 1, "test": 2}
    labels = np.load(out / "labels.npy")
    assert labels.shape == (6, len(DIAGNOSIS_LABELS))
    source_row = stays["stay"].astype(int).to_numpy() - 3000  # row of mimic4_table() of each cohort stay
    expected = np.zeros((6, len(DIAGNOSIS_LABELS)), dtype=np.uint8)
    expected[:, :3] = MIMIC4_VALUES[source_row] == 1  # -1 and -2 read as 0
    np.testing.assert_array_equal(labels, expected)
    assert not stays["has_series"].all() and not stays["has_note"].all()
    metrics = run_one_epoch(out)
    assert np.isfinite(metrics["train/loss"])
