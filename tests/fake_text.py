"""A test stand-in for `miracl_grid.data.text_features.ensure_text_features`: one token per word, no model.

pytest's default "prepend" import mode puts tests/ on sys.path, so test modules import this as
`from fake_text import make_fake_text_features`.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def _features(values: str, offsets: np.ndarray, dim: int) -> np.ndarray:
    tokens = int(offsets[-1])
    if values == "ones":
        return np.ones((tokens, dim), np.float16)
    if values == "modulo":
        return (np.arange(tokens * dim).reshape(-1, dim) % 7).astype(np.float16)
    if values == "position":
        # token j of note i: (i, j, 1, ..., 1)
        if dim < 2:
            raise ValueError("values='position' needs dim >= 2")
        counts = np.diff(offsets)
        owner = np.repeat(np.arange(len(counts)), counts)
        position = np.arange(tokens) - offsets[owner]
        ones = [np.ones_like(owner)] * (dim - 2)
        return np.stack([owner, position, *ones], axis=1).astype(np.float16)
    raise ValueError(f"unknown values {values!r}: expected 'position', 'ones' or 'modulo'")


def make_fake_text_features(*, dim: int, values: str = "position", key_prefix: str | None = None,
                            default_encoder: str | None = None, revision: str = "r", seconds: float = 0.0,
                            calls: list | None = None):
    """Return a function with `ensure_text_features`' signature that writes fake features.

    Each note gets min(#words, max_tokens) tokens of `dim` float16 features (`values`: "position"
    gives (note, token, 1, ...), "ones" all ones, "modulo" arange % 7); label embeddings are ones.
    The key and the meta's encoder are `key_prefix` when given, else the encoder (None replaced by
    `default_encoder` when given). An existing meta.json means reuse. `seconds` is reported for a
    fresh write (0.0 on reuse); each call's encoder and max_tokens are appended to `calls` if given.
    """
    def ensure(cohort_dir, texts, *, label_names, encoder, max_tokens, batch_size, progress):
        if encoder is None and default_encoder is not None:
            encoder = default_encoder
        if calls is not None:
            calls.append({"encoder": encoder, "max_tokens": max_tokens})
        name = key_prefix if key_prefix is not None else encoder
        key = f"{name}-{max_tokens}"
        target = Path(cohort_dir) / "text" / key
        if (target / "meta.json").is_file():
            return SimpleNamespace(key=key, reused=True, path=target, seconds=0.0)
        target.mkdir(parents=True)
        counts = np.array([min(len(t.split()), max_tokens) for t in texts], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        np.save(target / "token_features.npy", _features(values, offsets, dim))
        np.save(target / "token_offsets.npy", offsets)
        np.save(target / "label_embeddings.npy", np.ones((len(label_names), dim), np.float32))
        (target / "meta.json").write_text(json.dumps({   # the fields the reader checks (data.text_features)
            "format_version": 1, "key": key, "encoder": name, "revision": revision, "max_tokens": max_tokens,
            "dim": dim, "num_notes": len(texts), "num_tokens": int(offsets[-1]), "label_names": list(label_names)}))
        return SimpleNamespace(key=key, reused=False, path=target, seconds=seconds)
    return ensure
