"""Note token features computed by a Ray job: length-bucketed shards on GPU workers, resumable.

`ClusterNoteEncoder` is a `miracl_grid.data.text_features.NoteEncoder`: handed to `prepare_cohort`
(``grid/run.py --encode-on-cluster``), it replaces the in-process encoding of the notes, and
`ensure_text_features` writes the cache exactly as it always does (same key, meta, layout).

- Length buckets: notes are ordered by length (characters, longest first) and cut into shards
  of ``shard_notes`` notes, so a shard's batches hold notes of similar length (little padding);
  inside a shard `miracl_grid.data.text_features.encode_notes` orders by token count, as in-process.
- Placement: one Ray task per shard, asking for one GPU when the cluster has GPUs (the task
  then encodes on ``cuda``), else one CPU.
- Resumable: each finished shard is written to ``scratch/shard_NNNNN_<digest>.npz`` (atomic
  rename); the digest covers the shard's notes, the encoder revision and max_tokens, so a rerun
  after an interruption encodes only the missing shards and never reuses a foreign shard.
- Progress: a tqdm bar over notes as shards finish.

The features of a note do not depend on which other notes share its batch up to float rounding
(padding is masked), so the cache holds the same function of the notes as an in-process run.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterNoteEncoder:
    scratch: Path                  # shared folder (every node writes its shards here)
    shard_notes: int = 2048
    use_gpu: bool | None = None    # None: when the cluster has GPUs
    progress: bool = True

    def __call__(self, notes: list[str], *, encoder: str, max_tokens: int, batch_size: int,
                 allocate: Callable[[tuple[int, int]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import ray
        from tqdm.auto import tqdm

        from miracl_grid.data.text_features import resolve_encoder

        if self.shard_notes < 1:
            raise ValueError(f"shard_notes = {self.shard_notes}: expected >= 1")
        revision = resolve_encoder(encoder).revision
        order = np.argsort([-len(note) for note in notes], kind="stable")
        shards = [order[start:start + self.shard_notes] for start in range(0, len(order), self.shard_notes)]
        use_gpu = self.use_gpu if self.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
        task = ray.remote(max_retries=2)(_encode_shard).options(num_gpus=1 if use_gpu else 0, num_cpus=1)
        scratch = Path(self.scratch)
        scratch.mkdir(parents=True, exist_ok=True)
        paths, pending = [], {}
        bar = tqdm(total=len(notes), unit="note", desc="encoding notes (Ray)", disable=not self.progress)
        for number, rows in enumerate(shards):
            texts = [notes[row] for row in rows]
            path = scratch / f"shard_{number:05d}_{_shard_digest(texts, revision, max_tokens)}.npz"
            paths.append(path)
            if path.is_file():
                bar.update(len(rows))
            else:
                pending[task.remote(texts, encoder, max_tokens, batch_size,
                                    "cuda" if use_gpu else "cpu", str(path))] = len(rows)
        logger.info("encoding %d notes in %d shards (%d already done) on %s workers", len(notes), len(shards),
                    len(shards) - len(pending), "GPU" if use_gpu else "CPU")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ray.get(done[0])                            # a failed shard raises here
            bar.update(pending.pop(done[0]))
        bar.close()
        return _assemble(notes, shards, paths, allocate)


def _shard_digest(texts: list[str], revision: str, max_tokens: int) -> str:
    digest = hashlib.sha256(f"{revision}\0{max_tokens}\0{len(texts)}\0".encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:16]


def _assemble(notes: list[str], shards: list[np.ndarray], paths: list[Path],
              allocate: Callable[[tuple[int, int]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Scatter the shards' ragged features into note order: offsets from every note's length."""
    lengths = np.zeros(len(notes), dtype=np.int64)
    for rows, path in zip(shards, paths):
        with np.load(path) as shard:
            lengths[rows] = np.diff(shard["offsets"])
    offsets = np.zeros(len(notes) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    features = None
    for rows, path in zip(shards, paths):
        with np.load(path) as shard:
            values, local = shard["features"], shard["offsets"]
        if features is None:
            features = allocate((int(offsets[-1]), values.shape[1]))
        # note k of the shard: its local rows local[k]:local[k+1] go to offsets[rows[k]]...
        destination = np.repeat(offsets[rows] - local[:-1], np.diff(local)) + np.arange(len(values))
        features[destination] = values
    if features is None:
        raise ValueError("no notes to encode")
    return features, offsets


def _encode_shard(texts: list[str], encoder: str, max_tokens: int, batch_size: int, device: str,
                       path: str) -> str:
    from miracl_grid.data.text_features import encode_notes

    encoded = encode_notes(texts, encoder=encoder, max_tokens=max_tokens, batch_size=batch_size,
                           device=device, progress=False)
    target = Path(path)
    temporary = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.npz")
    np.savez(temporary, features=encoded.token_features, offsets=encoded.token_offsets)
    temporary.rename(target)
    return path
