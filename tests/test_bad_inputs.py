"""Reliability sweep: every malformed cohort or config fails through the real CLI with a clear message.

One table (`CASES`) of bad inputs. Each case builds its input in a temporary folder and runs the
command line a user runs (``python -m miracl_grid.data.prepare``, ``python -m miracl_grid.trainables.train``,
``python grid/run.py --dry-run``) in a subprocess; the test asserts a non-zero exit code, an
``error:`` line naming the file / line / column or config field and what was expected (specific
substrings, computed from the input the case wrote), and no Python traceback. The train CLI must
fail before it starts Ray.

Two cohort-level inputs are not errors and are tested in-process at the end: a label without any
train positive (reported in the manifest, training runs, mAP skips labels without test positives)
and a cohort whose every note is empty (a missing modality).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from miracl_grid.data.schema import PHENOTYPE_LABELS, TIMESERIES_HEADER, VARIABLES
from series_layout import series_line

REPOSITORY = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"
RAY_STARTED = "Started a local Ray instance"
TIMEOUT_S = 120

# --------------------------------------------------------------------------- a tiny mimic3 layout
EYE_OPENING = "Glascow coma scale eye opening"
EYE_CATEGORIES = next(v.categories for v in VARIABLES if v.name == EYE_OPENING)


@dataclass
class Layout:
    """A mimic3-benchmarks phenotyping root to write: stay -> split, series lines, labels, note."""

    split: dict[str, str]
    series: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    notes: dict[str, str]
    header: str = ",".join(TIMESERIES_HEADER)

    def listfile_rows(self, split: str) -> list[str]:
        return [stay for stay, side in self.split.items() if side == split]

    def write(self, root: Path, *, extra_rows: dict[str, list[str]] | None = None) -> Path:
        for split in ("train", "test"):
            folder = root / split
            folder.mkdir(parents=True, exist_ok=True)
            stays = self.listfile_rows(split) + list((extra_rows or {}).get(split, []))
            table = pd.DataFrame(np.stack([self.labels[s] for s in stays]), columns=list(PHENOTYPE_LABELS))
            table.insert(0, "period_length", [8.0] * len(stays))
            table.insert(0, "stay", stays)
            table.to_csv(folder / "listfile.csv", index=False)
            for stay in self.listfile_rows(split):
                (folder / stay).write_text(self.header + "\n" + "".join(f"{line}\n" for line in self.series[stay]))
        pd.DataFrame({"stay": list(self.notes), "text": list(self.notes.values())}).to_csv(
            root / "notes.csv", index=False)
        return root


def base_layout(num_train: int = 3, num_test: int = 1) -> Layout:
    """num_train + num_test stays of distinct patients (patient 10 has two train stays)."""
    train = ["10_episode1_timeseries.csv", "10_episode2_timeseries.csv"] + \
        [f"{11 + i}_episode1_timeseries.csv" for i in range(num_train - 2)]
    test = [f"{50 + i}_episode1_timeseries.csv" for i in range(num_test)]
    stays = train + test
    series = {stay: [series_line("0.5", Heart_Rate=str(70 + i), Glascow_coma_scale_eye_opening=EYE_CATEGORIES[0]),
                     series_line("1.5", Glucose="120", pH="7.35"),
                     series_line(f"{2 + i}.0", Heart_Rate="88", Temperature="37.1")]
              for i, stay in enumerate(stays)}
    index = np.arange(len(stays))[:, None] * 7 + np.arange(len(PHENOTYPE_LABELS))[None, :] * 3
    matrix = (index % 4 == 0).astype(np.uint8)
    return Layout(split={**{s: "train" for s in train}, **{s: "test" for s in test}}, series=series,
                  labels={stay: matrix[i] for i, stay in enumerate(stays)},
                  notes={stay: f"history of chronic kidney disease, note {i}" for i, stay in enumerate(stays)})


# --------------------------------------------------------------------------- the case table
@dataclass
class Context:
    tmp: Path            # this case's own folder
    cohort: Path         # a good materialised cohort (shared, read-only)


Builder = Callable[[Context], tuple[list[str], list[str]]]   # -> (command arguments, expected substrings)
CASES: dict[str, Builder] = {}


def case(name: str):
    def register(builder: Builder) -> Builder:
        assert name not in CASES
        CASES[name] = builder
        return builder
    return register


def prepare(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "miracl_grid.data.prepare", "--source", f"mimic3:{root}", "--out", str(out), "--quiet", *extra]


def train(context: Context, *flags: str, data: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "miracl_grid.trainables.train", "--data", str(data or context.cohort),
            "--storage", str(context.tmp / "runs"), "--epochs", "2", "--warmup-epochs", "1", *flags]


def grid(context: Context, *flags: str) -> list[str]:
    return [sys.executable, "grid/run.py", "--data", str(context.cohort), "--storage", str(context.tmp / "runs"),
            "--dry-run", *flags]


def mutated(context: Context, change: Callable[[Layout], None], **write) -> tuple[Path, Layout]:
    layout = base_layout()
    change(layout)
    return layout.write(context.tmp / "source", **write), layout


def set_cell(layout: Layout, stay: str, line: int, column: str, value: str) -> None:
    """Series file ``stay``, file line ``line`` (header = 1), ``column`` := value."""
    cells = layout.series[stay][line - 2].split(",")
    cells[TIMESERIES_HEADER.index(column)] = value
    layout.series[stay][line - 2] = ",".join(cells)


STAY_A, STAY_B, STAY_C = "10_episode1_timeseries.csv", "10_episode2_timeseries.csv", "11_episode1_timeseries.csv"


# ---- data: python -m miracl_grid.data.prepare --source mimic3:ROOT
@case("data-missing-listfile")
def _(context):
    root, _ = mutated(context, lambda layout: None)
    (root / "test" / "listfile.csv").unlink()
    return prepare(root, context.tmp / "out"), [str(root / "test" / "listfile.csv"), "listfile not found",
                                                "expected a CSV with a header line"]


@case("data-missing-series-file")
def _(context):
    root, _ = mutated(context, lambda layout: None)
    (root / "train" / STAY_C).unlink()   # third row of the train listfile = line 4
    return prepare(root, context.tmp / "out"), [f"{root / 'train' / 'listfile.csv'}: line 4",
                                                f"stay {STAY_C!r}", str(root / "train" / STAY_C), "not found"]


@case("data-wrong-series-header")
def _(context):
    def change(layout):
        layout.header = layout.header.replace("Heart Rate", "HeartRate")
    root, _ = mutated(context, change)
    return prepare(root, context.tmp / "out"), [str(root / "train" / STAY_A), "line 1 (header)",
                                                "missing ['Heart Rate']", "unexpected ['HeartRate']"]


@case("data-label-not-binary")
def _(context):
    root, layout = mutated(context, lambda layout: None)
    listfile = root / "train" / "listfile.csv"
    table = pd.read_csv(listfile, dtype=str)
    table.loc[1, "Essential hypertension"] = "2"          # data row 1 = file line 3
    table.to_csv(listfile, index=False)
    return prepare(root, context.tmp / "out"), [f"{listfile}: line 3", "column 'Essential hypertension'",
                                                "expected a label in {0, 1}", "found '2'"]


def _bad_cell_case(name: str, stay: str, line: int, column: str, value: str, expectation: str):
    @case(name)
    def _(context):
        root, _ = mutated(context, lambda layout: set_cell(layout, stay, line, column, value))
        split = base_layout().split[stay]
        return prepare(root, context.tmp / "out"), [f"{root / split / stay}: line {line}", f"column '{column}'",
                                                    f"expected {expectation}", f"found {value!r}"]


_bad_cell_case("data-continuous-nan", STAY_B, 2, "Heart Rate", "nan", "a finite number or an empty cell")
_bad_cell_case("data-continuous-inf", STAY_C, 3, "Glucose", "inf", "a finite number or an empty cell")
_bad_cell_case("data-continuous-text", STAY_A, 3, "pH", "high", "a finite number or an empty cell")
_bad_cell_case("data-unknown-category", STAY_A, 2, EYE_OPENING, "Blinking", f"one of {list(EYE_CATEGORIES)}")
_bad_cell_case("data-unsorted-hours", STAY_B, 3, "Hours", "0.25", "Hours in ascending order")
_bad_cell_case("data-negative-hours", STAY_C, 2, "Hours", "-1.0", "Hours >= 0")


@case("data-duplicate-stay")
def _(context):
    root, _ = mutated(context, lambda layout: None, extra_rows={"train": [STAY_A]})   # rows 1 and 4 -> lines 2, 5
    listfile = root / "train" / "listfile.csv"
    return prepare(root, context.tmp / "out"), [f"duplicate stay id {STAY_A!r}", f"{listfile} line 2",
                                                f"{listfile} line 5", "expected each stay once"]


@case("data-notes-file-missing")
def _(context):
    root, _ = mutated(context, lambda layout: None)
    notes = context.tmp / "elsewhere" / "notes.parquet"
    return prepare(root, context.tmp / "out", "--notes", str(notes)), [str(notes), "notes file not found",
                                                                       "columns stay,text"]


# ---- config: python -m miracl_grid.trainables.train --data COHORT ...
def _config_case(name: str, flags: tuple[str, ...], expected: list[str]):
    @case(name)
    def _(context):
        return train(context, *flags), expected


_config_case("config-unknown-method", ("--method", "nope"),
             ["config field 'method' = 'nope'", "expected one of", "'miracl'", "'asl'"])
_config_case("config-unknown-backbone", ("--backbone", "transformerx"),
             ["config field 'backbone' = 'transformerx'", "expected one of", "'flexcare'", "'medfuse'"])
_config_case("config-rho-pos-one", ("--noise-model", "asymmetric", "--rho-pos", "1.0"),
             ["config field 'rho_pos' = 1.0", "expected a rate in [0, 1)"])
_config_case("config-rho-neg-negative", ("--noise-model", "asymmetric", "--rho-neg", "-0.1"),
             ["config field 'rho_neg' = -0.1", "expected a rate in [0, 1)"])
_config_case("config-alpha-negative", ("--alpha", "-0.5"), ["config field 'alpha' = -0.5", "expected a weight in [0, 1]"])
_config_case("config-lambda-negative", ("--lambda-cons", "-0.1"),
             ["config field 'lambda_cons' = -0.1", "expected a finite number >= 0"])
_config_case("config-warmup-not-below-epochs", ("--epochs", "3", "--warmup-epochs", "3"),
             ["config field 'warmup_epochs' = 3", "warmup_epochs < epochs (3)"])


@case("config-data-not-a-cohort")
def _(context):
    folder = context.tmp / "just_a_folder"
    folder.mkdir()
    return train(context, data=folder), [str(folder), "not a materialised cohort", "no manifest.json"]


@case("config-text-key-missing")
def _(context):
    available = list(json.loads((context.cohort / "manifest.json").read_text())["text"]["features"])
    return train(context, "--text-feature-key", "0123456789abcdef"), [
        str(context.cohort / "manifest.json"), "text feature key '0123456789abcdef' not found",
        f"available: {available}"]


@case("config-text-features-of-another-encoder")
def _(context):
    copy = context.tmp / "cohort_copy"
    shutil.copytree(context.cohort, copy, ignore=shutil.ignore_patterns("source"))
    manifest = json.loads((copy / "manifest.json").read_text())
    key = manifest["text"]["default_key"]
    recorded = manifest["text"]["features"][key]["encoder"]
    meta_path = copy / "text" / key / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["encoder"] = "sentence-transformers/some-other-encoder"
    meta_path.write_text(json.dumps(meta))
    reseal(copy, f"text/{key}/meta.json")   # else the file check names the changed meta.json first
    return train(context, "--text-feature-key", key, data=copy), [
        str(meta_path), "field 'encoder'", "'sentence-transformers/some-other-encoder'", repr(recorded),
        str(copy / "manifest.json")]


_config_case("config-lambda-nan", ("--lambda-cons", "nan"),
             ["config field 'lambda_cons' = nan", "expected a finite number >= 0"])
_config_case("config-temperature-nan", ("--temperature", "nan"),
             ["config field 'temperature' = nan", "expected a finite number > 0"])


# ---- cohort: a materialised directory damaged on disk (tests/test_integrity.py has every file)
def damaged_copy(context: Context) -> Path:
    return Path(shutil.copytree(context.cohort, context.tmp / "damaged", ignore=shutil.ignore_patterns("source")))


def reseal(directory: Path, name: str) -> None:
    """Rewrite the manifest's record of ``name`` and its digest with the production functions."""
    from miracl_grid.data.checksums import file_record
    from miracl_grid.data.materialise import MANIFEST_DIGEST, manifest_digest

    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = file_record(directory / name)
    manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@case("cohort-flipped-labels")
def _(context):
    copy = damaged_copy(context)
    np.save(copy / "labels.npy", (1 - np.load(copy / "labels.npy")).astype(np.uint8))
    return train(context, data=copy), [str(copy / "labels.npy"), "content changed since it was written",
                                       "re-run `python -m miracl_grid.data.prepare`"]


@case("cohort-truncated-series")
def _(context):
    path = truncate(damaged_copy(context) / "series_values.npy")
    return train(context, data=path.parent), [str(path), "bytes, the manifest records", "(truncated?)"]


@case("cohort-truncated-manifest")
def _(context):
    path = truncate(damaged_copy(context) / "manifest.json")
    return train(context, data=path.parent), [str(path), "invalid JSON"]


@case("cohort-grid-truncated-manifest")
def _(context):
    path = truncate(damaged_copy(context) / "manifest.json")
    return grid(context, "--sweep", "lambda_cons", "--data", str(path.parent)), [str(path), "invalid JSON"]


@case("cohort-verify-truncated-parquet")
def _(context):
    path = truncate(damaged_copy(context) / "stays.parquet")
    return [sys.executable, "-m", "miracl_grid.data.prepare", "--verify", str(path.parent)], [str(path), "(truncated?)"]


# ---- grid: python grid/run.py ... --dry-run
_GRID = {
    "grid-unknown-sweep": (("--sweep", "nope"), ["unknown sweep 'nope'", "known: main, lambda_cons"]),
    "grid-unknown-arm": (("--sweep", "main", "--arms", "miracl,unknown"),
                         ["unknown arm(s) 'unknown'", "known:", "miracl"]),
    "grid-old-methods-flag": (("--sweep", "main", "--methods", "miracl"),
                              ["--methods is now --arms", "use --arms miracl"]),
    "grid-unknown-method": (("--sweep", "main", "--set", "method=nosuch"),
                            ["config field 'method' = 'nosuch'", "registered methods", "'miracl', 'sce'"]),
    "grid-unknown-set-field": (("--sweep", "lambda_cons", "--set", "not_a_field=1"),
                               ["--set 'not_a_field=1'", "unknown config field 'not_a_field'"]),
    "grid-symmetric-unequal-rates": (("--sweep", "main", "--noise", "symmetric:0.2,0.3"),
                                     ["noise setting 'symmetric:0.2,0.3'", "rho_pos == rho_neg"]),
}
for _name, (_flags, _expected) in _GRID.items():
    def _grid_case(flags=_flags, expected=_expected):
        return lambda context: (grid(context, *flags), expected)
    case(_name)(_grid_case())


@pytest.fixture(scope="module")
def good_cohort(tmp_path_factory) -> Path:
    """A tiny embedded cohort (40 patients, 12 h), materialised once for the config and grid cases."""
    from miracl_grid.data.prepare import prepare_cohort

    return prepare_cohort("synthetic", tmp_path_factory.mktemp("good_cohort"), patients=40, hours=12,
                          max_tokens=16, max_bins=12, progress=False)


def run_cli(arguments: list[str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run(arguments, cwd=REPOSITORY, env=environment, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_a_clear_message(name, good_cohort, tmp_path):
    arguments, expected = CASES[name](Context(tmp=tmp_path, cohort=good_cohort))
    result = run_cli(arguments)
    stderr = result.stderr
    assert result.returncode != 0, f"{name}: exit 0\nstdout: {result.stdout[-2000:]}\nstderr: {stderr[-2000:]}"
    assert TRACEBACK not in stderr and TRACEBACK not in result.stdout, f"{name}:\n{stderr[-4000:]}"
    assert RAY_STARTED not in stderr + result.stdout, f"{name}: Ray was started before the input was checked"
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, f"{name}: expected one 'error:' line, stderr:\n{stderr[-4000:]}"
    for text in expected:
        assert text in error_lines[0], f"{name}: {text!r} not in {error_lines[0]!r}"


def test_the_table_covers_every_requested_bad_input():
    """Guard against a case silently dropped from the table (ids are the issue's list)."""
    assert len([n for n in CASES if n.startswith("data-")]) == 12
    assert len([n for n in CASES if n.startswith("config-")]) == 12
    assert len([n for n in CASES if n.startswith("cohort-")]) == 5
    assert len([n for n in CASES if n.startswith("grid-")]) == 6


# --------------------------------------------------------------------------- cohort-level inputs (not errors)
TRIAL = dict(epochs=1, warmup_epochs=0, batch_size=8, hidden_size=16, fusion_layers=1, fusion_heads=2,
             num_experts=2, top_k_experts=1, max_note_tokens=16, max_series_bins=12, noise_model="symmetric",
             rho_pos=0.2, rho_neg=0.2, seed=3, method="miracl", gmm_min_group=2)


def run_one_epoch(cohort: Path) -> dict:
    from miracl_grid.trainables.loop import run_training

    history = run_training({"trial": dict(TRIAL), "cohort_dir": str(cohort)}, lambda metrics, folder: None)
    assert [m["epoch"] for m in history] == [1]
    return history[0]


def test_label_without_train_positive_is_reported_and_training_still_runs(tmp_path):
    """Documented handling: counted in the manifest (``labels_without_train_positive``), not an error;
    training runs and mAP skips labels without a test positive (counted in test/labels_without_positive)."""
    from miracl_grid.data.prepare import prepare_cohort

    layout = base_layout(num_train=5, num_test=3)
    empty_everywhere, empty_in_train = PHENOTYPE_LABELS.index("Shock"), PHENOTYPE_LABELS.index("Septicemia (except in labor)")
    for stay, side in layout.split.items():
        layout.labels[stay][empty_everywhere] = 0
        layout.labels[stay][empty_in_train] = 0 if side == "train" else 1
    root = layout.write(tmp_path / "source")
    out = prepare_cohort(f"mimic3:{root}", tmp_path / "cohort", max_tokens=16, max_bins=12, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())

    train = np.stack([layout.labels[s] for s in layout.listfile_rows("train")])
    test = np.stack([layout.labels[s] for s in layout.listfile_rows("test")])
    expected = [name for name, count in zip(PHENOTYPE_LABELS, train.sum(axis=0)) if count == 0]
    assert {PHENOTYPE_LABELS[empty_everywhere], PHENOTYPE_LABELS[empty_in_train]} <= set(expected)
    assert manifest["labels_without_train_positive"] == expected

    metrics = run_one_epoch(out)
    assert metrics["test/labels_without_positive"] == int((test.sum(axis=0) == 0).sum())
    assert 0.0 < metrics["test/mAP"] <= 1.0 and math.isfinite(metrics["train/loss"])


def test_cohort_where_every_note_is_empty_is_a_missing_modality(tmp_path):
    from miracl_grid.data.prepare import prepare_cohort

    layout = base_layout(num_train=4, num_test=2)
    layout.notes = {stay: ("" if i % 2 else "   ") for i, stay in enumerate(layout.split)}
    root = layout.write(tmp_path / "source")
    out = prepare_cohort(f"mimic3:{root}", tmp_path / "cohort", max_tokens=16, max_bins=12, progress=False)
    stays = pd.read_parquet(out / "stays.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(stays) == 6 and not stays["has_note"].any() and stays["has_series"].all()
    assert manifest["missingness"]["all"]["without_note"] == 6
    offsets = np.load(out / "text" / manifest["text"]["default_key"] / "token_offsets.npy")
    np.testing.assert_array_equal(offsets, np.zeros(7, dtype=np.int64))

    metrics = run_one_epoch(out)
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/mAP"] <= 1.0
