"""The method registry (`miracl_grid.trainables.registry`): complete records, one source for the
trainer, the grid and the analysis, and a method added by one record (SCE) running end to end."""
from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.registry import (BACKBONE_LABELS, METHODS, MethodRecord, RegistryError, display_label,
                                             method_record, register, table_rows)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=2, warmup_epochs=1, batch_size=32, hidden_size=32, fusion_layers=1, fusion_heads=2,
            num_experts=4, top_k_experts=2, max_note_tokens=32, max_series_bins=24, cosine_t_max=2)


def test_every_record_names_real_config_fields_and_resolves():
    fields = set(TrialConfig.field_names())
    for record in METHODS.values():
        assert set(record.hyperparameters) <= fields, record.name
        assert record.default_backbone in BACKBONE_LABELS and set(record.row_backbones) <= set(BACKBONE_LABELS)
        assert inspect.isclass(record.trainer_class())
        if record.loss:
            parameters = inspect.signature(record.loss_function()).parameters
            assert set(record.loss_fields) <= set(parameters) and "reduction" in parameters, record.name


def test_backbone_labels_cover_the_backbone_modules():
    from miracl_grid.trainables.backbones import BACKBONES

    assert set(BACKBONE_LABELS) == set(BACKBONES)


def test_labels_and_table_order_are_the_papers():
    assert table_rows() == ("ASL", "Focal", "GCE", "MLLSC", "MultiT", "MedFuse", "M3Care", "FlexCare", "CbMLC",
                            "SCE", "MIRACL")
    assert display_label("bce") == "FlexCare" and display_label("bce", "medfuse") == "MedFuse"
    assert display_label("asl", "m3care") == "ASL/M3Care" and display_label("cbmlc") == "CbMLC"
    assert display_label("not_registered", "medfuse") == "not_registered/MedFuse"


def test_bad_records_and_names_are_refused():
    with pytest.raises(RegistryError, match="already registered"):
        register(dataclasses.replace(METHODS["bce"]))
    with pytest.raises(RegistryError, match="pair loss"):
        register(MethodRecord("nothing", "Nothing", 9))
    with pytest.raises(RegistryError, match="default backbone"):
        register(MethodRecord("odd", "Odd", 9, loss="x:y", backbones=("cbmlc",)))
    with pytest.raises(RegistryError, match="known: asl"):
        method_record("nosuch")
    assert "nothing" not in METHODS and "odd" not in METHODS


def test_the_registry_imports_no_torch():
    code = ("import sys, miracl_grid.trainables.registry, miracl_grid.analysis.labels; "
            "sys.exit(1 if 'torch' in sys.modules or 'ray' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def test_an_added_method_trains_and_reaches_the_tables(tiny_cohort):
    """SCE is one `register(...)` record plus `losses.symmetric_cross_entropy` and nothing else: the
    grid expands it as an arm, the loop trains it (2 epochs), the analysis names and orders it."""
    from miracl_grid.analysis.tables import comparison_table
    from miracl_grid.grid.sweeps import expand_sweep
    from miracl_grid.trainables.loop import run_training

    trials = expand_sweep("main", l_avg=4.575, num_labels=25, arms="miracl,sce", seeds=[30],
                          noise="symmetric:0.4", overrides=TINY)
    assert [trial.name for trial in trials] == ["miracl_sym40-40_s30", "sce_sym40-40_s30"]
    rows = []
    for trial in trials:
        history = run_training({"trial": trial.config, "cohort_dir": str(tiny_cohort)}, lambda *_: None, None)
        assert [metrics["epoch"] for metrics in history] == [1, 2]
        assert 0.0 < history[-1]["test/mAP"] <= 1.0 and history[-1]["train/loss"] > 0
        rows += [{**metrics, "trial_id": trial.name, "sweep": "main", "status": "TERMINATED",
                  "is_last_epoch": metrics["epoch"] == 2, **{f"config/{k}": v for k, v in trial.config.items()}}
                 for metrics in history]
    frame = pd.DataFrame(rows)
    table = comparison_table(frame.loc[frame['is_last_epoch']])
    assert list(table.text.index) == ["SCE", "MIRACL"]
    assert list(table.text.columns) == ["Sym. 40%"]
