"""Fault injection on a materialised cohort: nothing on disk is trusted as it lies (issue 11).

Each test damages a good cohort the way a user, a disk or a second process could, and checks
that loading (`CohortData`, what every trial start runs), ``python -m miracl_grid.data.prepare --verify`` and a
re-run of ``prepare`` notice it and name the file. "Resealed" cases also rewrite the manifest's
file records and digest with the production functions (`file_record`, `manifest_digest`), as a
careless tool would: then the content checks (derived fields, patient-wise split) must still hold.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import miracl_grid.data.checksums as checksums_module
import miracl_grid.data.materialise as materialise_module
from miracl_grid.data.checksums import file_record
from miracl_grid.data.dataset import CohortData
from miracl_grid.data.errors import CohortError
from miracl_grid.data.locking import LOCK_FILE, _process_start, exclusive_writer
from miracl_grid.data.materialise import MANIFEST_DIGEST, derived_fields, load_manifest, manifest_digest
from miracl_grid.data.prepare import main, prepare_cohort
from fake_text import make_fake_text_features

REPOSITORY = Path(__file__).resolve().parents[1]
PREPARE = dict(patients=40, hours=8, seed=3, max_tokens=8, max_bins=8, progress=False)


@pytest.fixture
def fake_encoder(monkeypatch):
    monkeypatch.setattr(materialise_module, "_ensure_text_features",
                        make_fake_text_features(dim=2, values="modulo", key_prefix="fake", revision="0"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One good embedded cohort (40 patients, fake text features), materialised once per module."""
    patch = pytest.MonkeyPatch()
    patch.setattr(materialise_module, "_ensure_text_features",
                  make_fake_text_features(dim=2, values="modulo", key_prefix="fake", revision="0"))
    try:
        return prepare_cohort("synthetic", tmp_path_factory.mktemp("pristine"), **PREPARE)
    finally:
        patch.undo()


@pytest.fixture
def cohort(pristine, tmp_path) -> Path:
    """A private copy of the good cohort to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "cohort", ignore=shutil.ignore_patterns(LOCK_FILE + "*")))


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def reseal(directory: Path, manifest: dict | None = None, *, files=()) -> None:
    """Rewrite the records of ``files`` and the manifest's digest (a tool that 'fixes up' the hashes)."""
    manifest = manifest or manifest_of(directory)
    for name in files:
        manifest["files"][name] = file_record(directory / name)
    manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))


def text_dir(directory: Path) -> Path:
    return directory / "text" / manifest_of(directory)["text"]["default_key"]


def verify_cli(directory: Path, capsys) -> tuple[int, str]:
    code = main(["--verify", str(directory)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


# --------------------------------------------------------------------------- content changed on disk
def test_a_good_cohort_passes_every_check(cohort, capsys):
    CohortData(cohort)
    CohortData(cohort, verify="full")
    code = main(["--verify", str(cohort)])
    assert code == 0 and "ok (" in capsys.readouterr().out
    recorded = set(manifest_of(cohort)["files"])
    on_disk = {path.relative_to(cohort).as_posix() for path in cohort.rglob("*") if path.is_file()
               and not path.relative_to(cohort).as_posix().startswith("source/")
               and path.name != "manifest.json" and not path.name.startswith(LOCK_FILE)}
    assert recorded == on_disk     # every file a trial reads, text features included, has a record


def test_flipped_labels_are_refused_at_trial_start(cohort, capsys):
    labels = np.load(cohort / "labels.npy")
    np.save(cohort / "labels.npy", (1 - labels).astype(np.uint8))     # same shape, same size
    for depth in ("quick", "full"):
        with pytest.raises(CohortError, match=f"{cohort / 'labels.npy'}: content changed since it was written"):
            CohortData(cohort, verify=depth)
    code, err = verify_cli(cohort, capsys)
    assert code == 2 and err.startswith(f"error: {cohort / 'labels.npy'}: content changed")


def test_an_edited_manifest_is_refused(cohort):
    manifest = manifest_of(cohort)
    manifest["l_avg_train"] = 0.788 * manifest["num_labels"]
    (cohort / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(CohortError, match=f"{cohort / 'manifest.json'}: content changed .*'manifest_sha256'"):
        CohortData(cohort)


@pytest.mark.parametrize("field, change", [
    ("l_avg_train", lambda m: m.__setitem__("l_avg_train", m["l_avg_train"] * 3)),
    ("num_patients", lambda m: m.__setitem__("num_patients", m["num_patients"] + 1)),
    ("split_sizes.test", lambda m: m["split_sizes"].__setitem__("test", m["split_sizes"]["test"] - 1)),
    ("label_counts.train", lambda m: m["label_counts"]["train"].__setitem__(0, 0)),
    ("missingness.all.without_note", lambda m: m["missingness"]["all"].__setitem__("without_note", -1)),
    ("series.total_bins", lambda m: m["series"].__setitem__("total_bins", 1)),
])
def test_a_resealed_manifest_edit_is_caught_by_the_derived_fields(cohort, field, change):
    manifest = manifest_of(cohort)
    change(manifest)
    reseal(cohort, manifest)
    with pytest.raises(CohortError, match=f"manifest.json: field '{field}' = .*but the cohort's arrays"):
        CohortData(cohort)


def moved_test_stay(directory: Path) -> tuple[pd.DataFrame, int]:
    """stays.parquet with one stay of a test patient moved to train (the patient then crosses)."""
    stays = pd.read_parquet(directory / "stays.parquet")
    test = stays[stays["split"] == "test"]
    patient = test["patient_id"].value_counts().index[0]
    if (test["patient_id"] == patient).sum() < 2:
        pytest.skip("no test patient with two stays in this cohort")
    row = int(test.index[test["patient_id"] == patient][0])
    stays.loc[row, "split"] = "train"
    return stays, int(patient)


def test_a_test_stay_moved_to_train_is_refused(cohort):
    stays, _ = moved_test_stay(cohort)
    stays.to_parquet(cohort / "stays.parquet", index=False)
    with pytest.raises(CohortError, match=f"{cohort / 'stays.parquet'}: .*content changed"):
        CohortData(cohort)


def test_a_resealed_split_leak_is_caught_by_the_patient_check(cohort):
    """Even with consistent records and recomputed derived fields, a patient in both splits is refused."""
    stays, patient = moved_test_stay(cohort)
    stays.to_parquet(cohort / "stays.parquet", index=False)
    manifest = materialise_module._merge(manifest_of(cohort), derived_fields(
        stays, np.load(cohort / "labels.npy"), manifest_of(cohort)["label_names"],
        np.load(cohort / "series_offsets.npy")))
    reseal(cohort, manifest, files=["stays.parquet"])
    with pytest.raises(CohortError, match=f"{cohort / 'stays.parquet'}: patient {patient} has stays in both "
                                          "train and test"):
        CohortData(cohort)


def test_changed_text_features_are_refused(cohort, capsys):
    features = text_dir(cohort) / "token_features.npy"
    array = np.load(features)
    array[0, 0] += 1
    np.save(features, array)
    with pytest.raises(CohortError, match=f"{features}: content changed"):
        CohortData(cohort)
    code, err = verify_cli(cohort, capsys)
    assert code == 2 and f"error: {features}" in err


def test_quick_check_samples_large_files_and_full_check_reads_them_whole(tmp_path, fake_encoder, monkeypatch):
    """Large files (> SMALL_FILE_BYTES) are sampled by the quick check: a change inside a sampled block
    is caught at trial start, one between blocks only by the full check (on reuse, --verify)."""
    monkeypatch.setattr(checksums_module, "SMALL_FILE_BYTES", 1024)
    monkeypatch.setattr(checksums_module, "SAMPLE_BLOCK_BYTES", 16)
    monkeypatch.setattr(checksums_module, "SAMPLE_BLOCKS", 4)
    out = prepare_cohort("synthetic", tmp_path / "c", **PREPARE)
    values = out / "series_values.npy"
    record = manifest_of(out)["files"]["series_values.npy"]
    assert record["size"] > 1024 and "sample_sha256" in record
    starts = checksums_module._sample_offsets(record["size"])
    assert len(starts) == 4 and starts[0] == 0 and starts[-1] == record["size"] - 16

    def flip(position: int) -> None:
        with open(values, "r+b") as handle:
            handle.seek(position)
            byte = handle.read(1)
            handle.seek(position)
            handle.write(bytes([byte[0] ^ 0xFF]))

    between = int(starts[1]) + 16 + 1                     # after block 1, before block 2
    assert between < starts[2]
    flip(between)
    CohortData(out, verify="quick")                        # documented: the quick check samples
    with pytest.raises(CohortError, match="series_values.npy: content changed .*\\(sha256"):
        CohortData(out, verify="full")
    flip(between)                                          # restored
    flip(int(starts[2]) + 3)                               # inside a sampled block
    with pytest.raises(CohortError, match="series_values.npy: content changed .*sampled sha256"):
        CohortData(out, verify="quick")


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/hostname"])
def test_a_record_outside_the_cohort_directory_is_refused(cohort, name):
    manifest = manifest_of(cohort)
    manifest["files"][name] = {"size": 1, "sha256": "0" * 64}
    reseal(cohort, manifest)
    with pytest.raises(CohortError, match=f"field 'files' names {name!r}, outside the cohort directory"):
        CohortData(cohort)


# --------------------------------------------------------------------------- truncated files
def cohort_files(directory: Path) -> list[str]:
    key = manifest_of(directory)["text"]["default_key"]
    return ["manifest.json", "stays.parquet", "labels.npy", "series_values.npy", "series_offsets.npy",
            f"text/{key}/token_features.npy", f"text/{key}/token_offsets.npy", f"text/{key}/meta.json"]


@pytest.mark.parametrize("position", range(8))
def test_a_truncated_file_gives_the_clean_error(cohort, capsys, position):
    name = cohort_files(cohort)[position]
    path = cohort / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CohortError, match=str(path)):
        CohortData(cohort)
    code, err = verify_cli(cohort, capsys)
    assert code == 2 and err.startswith(f"error: {path}: ")


@pytest.mark.parametrize("name", ["stays.parquet", "labels.npy", "series_values.npy"])
def test_a_truncated_file_with_a_resealed_record_still_gives_the_clean_error(cohort, name):
    path = cohort / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reseal(cohort, files=[name])
    with pytest.raises(CohortError, match=f"{path}: cannot be read"):
        CohortData(cohort)


def test_a_cohort_of_the_old_format_is_refused_with_the_remedy(cohort):
    manifest = manifest_of(cohort)
    manifest["format_version"] = 1
    del manifest["files"]
    (cohort / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CohortError, match="'format_version': expected 2, found 1; re-run `python -m miracl_grid.data.prepare`"):
        load_manifest(cohort)


# --------------------------------------------------------------------------- re-running prepare
def test_prepare_over_damaged_arrays_rewrites_them_and_says_so(tmp_path, fake_encoder, caplog):
    out = prepare_cohort("synthetic", tmp_path / "c", **PREPARE)
    labels = np.load(out / "labels.npy")
    np.save(out / "labels.npy", (1 - labels).astype(np.uint8))
    with caplog.at_level(logging.WARNING, logger="miracl_grid.data.materialise"):
        prepare_cohort("synthetic", out, **PREPARE)
    assert any(str(out / "labels.npy") in record.getMessage() and "writing the cohort anew" in record.getMessage()
               for record in caplog.records)
    assert manifest_of(out)["reused"]["cohort"] is False
    np.testing.assert_array_equal(np.load(out / "labels.npy"), labels)
    CohortData(out, verify="full")


def test_prepare_over_an_edited_manifest_rewrites_the_cohort(tmp_path, fake_encoder, caplog):
    out = prepare_cohort("synthetic", tmp_path / "c", **PREPARE)
    manifest = manifest_of(out)
    good = manifest["l_avg_train"]
    manifest["l_avg_train"] = 5.0
    (out / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="miracl_grid.data.materialise"):
        prepare_cohort("synthetic", out, **PREPARE)
    assert any("manifest_sha256" in record.getMessage() for record in caplog.records)
    assert manifest_of(out)["reused"]["cohort"] is False and manifest_of(out)["l_avg_train"] == good


def test_prepare_over_damaged_text_features_recomputes_only_them(tmp_path, fake_encoder, caplog):
    out = prepare_cohort("synthetic", tmp_path / "c", **PREPARE)
    offsets = text_dir(out) / "token_offsets.npy"
    offsets.write_bytes(offsets.read_bytes()[:-8])
    stamp = (out / "series_values.npy").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="miracl_grid.data.materialise"):
        prepare_cohort("synthetic", out, **PREPARE)
    assert any(str(offsets) in record.getMessage() and "removing these text features" in record.getMessage()
               for record in caplog.records)
    assert manifest_of(out)["reused"] == {"cohort": True, "text": False}
    assert (out / "series_values.npy").stat().st_mtime_ns == stamp
    CohortData(out, verify="full")


def test_prepare_removes_text_features_the_manifest_does_not_record(tmp_path, fake_encoder, caplog):
    """A text/KEY left by an interrupted write (no manifest record) is never reused unchecked."""
    out = prepare_cohort("synthetic", tmp_path / "c", **PREPARE)
    stray = out / "text" / "stray-key"
    shutil.copytree(text_dir(out), stray)
    with caplog.at_level(logging.WARNING, logger="miracl_grid.data.materialise"):
        prepare_cohort("synthetic", out, **PREPARE)
    assert not stray.exists()
    assert any("stray-key: not recorded" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------- one writer
HOLD_LOCK = """
import sys
from miracl_grid.data.locking import exclusive_writer
with exclusive_writer(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, fake_encoder):
    out = tmp_path / "c"
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=environment, cwd=REPOSITORY)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CohortError, match=rf"{out / LOCK_FILE}: .* is being written by pid {holder.pid} "
                                              rf"on host .* expected a single writer"):
            prepare_cohort("synthetic", out, **PREPARE)
        assert not (out / "source").exists() and not (out / "manifest.json").exists()   # nothing interleaved
        code = main(["--source", "synthetic", "--out", str(out), "--patients", "40", "--quiet"])
        assert code == 2
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and not (out / LOCK_FILE).exists()
    prepare_cohort("synthetic", out, **PREPARE)      # the first writer is done: now it may write
    assert not (out / LOCK_FILE).exists()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("owner", ["dead", "reused_pid"])
def test_a_stale_lock_of_this_host_is_taken_over(tmp_path, fake_encoder, caplog, owner):
    out = tmp_path / "c"
    out.mkdir()
    pid, started = (dead_pid(), None) if owner == "dead" else (os.getpid(), _process_start(os.getpid()) - 1)
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "process_start": started,
                                             "since": "2026-01-01T00:00:00Z"}))
    with caplog.at_level(logging.WARNING, logger="miracl_grid.data.locking"):
        prepare_cohort("synthetic", out, **PREPARE)
    assert any(f"removing the stale lock of pid {pid}" in record.getMessage() for record in caplog.records)
    assert not (out / LOCK_FILE).exists()
    CohortData(out)


def test_a_lock_of_another_host_is_refused_with_the_remedy(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "some-other-node", "since": "then"}))
    with pytest.raises(CohortError, match=rf"pid 1 on host 'some-other-node'.*remove {out / LOCK_FILE} by hand"):
        with exclusive_writer(out):
            pass
    assert (out / LOCK_FILE).exists()     # not ours to remove


def test_the_lock_is_reentrant_in_one_process_and_released_on_error(tmp_path):
    with exclusive_writer(tmp_path):
        with exclusive_writer(tmp_path):
            assert (tmp_path / LOCK_FILE).exists()
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(RuntimeError):
        with exclusive_writer(tmp_path):
            raise RuntimeError("writer failed")
    assert not (tmp_path / LOCK_FILE).exists()
