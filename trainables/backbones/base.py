"""Backbone output contract, batch checking and the shared base class (METHOD §11).

Every backbone maps the batch dict of `miracl_grid.data.dataset.collate` to a `BackboneOutput`:

    logits            B×L  pre-sigmoid scores
    ehr_embedding     B×H  projected EHR embedding for the patient-level contrastive loss (Eq. 9);
                           rows with ``has_series`` False are zeros-in and must be ignored
    note_embedding    B×H  projected note embedding (rows with ``has_note`` False ignored)
    auxiliary_losses  name -> scalar, already multiplied by its config weight
    unimodal_logits   "ehr"/"note" -> B×L (only backbones with unimodal heads; empty otherwise)

The embeddings are *not* L2-normalised here; the contrastive loss normalises them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from miracl_grid.trainables.backbones.encoders import EncodedBatch, NoteEncoder, SeriesEncoder
from miracl_grid.trainables.config import TrialConfig

logger = logging.getLogger(__name__)

BATCH_KEYS = ("series", "series_length", "has_series", "note", "note_length", "has_note")


@dataclass
class BackboneOutput:
    """What every backbone's ``forward(batch)`` returns (shapes in the module docstring)."""

    logits: torch.Tensor
    ehr_embedding: torch.Tensor
    note_embedding: torch.Tensor
    auxiliary_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    unimodal_logits: dict[str, torch.Tensor] = field(default_factory=dict)


def check_batch(batch: dict, series_channels: int, note_dim: int) -> None:
    """Raise ``ValueError`` naming the batch field whose presence, rank or size is wrong."""
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise ValueError(f"batch is missing field(s) {missing}; expected the keys of miracl_grid.data.dataset.collate")
    series, note = batch["series"], batch["note"]
    if series.dim() != 3 or series.shape[2] != series_channels:
        raise ValueError(f"batch field 'series' has shape {tuple(series.shape)}: expected B×T×{series_channels}")
    if note.dim() != 3 or note.shape[2] != note_dim:
        raise ValueError(f"batch field 'note' has shape {tuple(note.shape)}: expected B×S×{note_dim}")
    size = series.shape[0]
    for key in ("series_length", "has_series", "note_length", "has_note"):
        if tuple(batch[key].shape) != (size,):
            raise ValueError(f"batch field '{key}' has shape {tuple(batch[key].shape)}: expected ({size},)")
    if note.shape[0] != size:
        raise ValueError(f"batch field 'note' has {note.shape[0]} rows: expected {size} (as 'series')")
    for key, tensor, limit in (("series_length", batch["series_length"], series.shape[1]),
                               ("note_length", batch["note_length"], note.shape[1])):
        if size and (int(tensor.min()) < 0 or int(tensor.max()) > limit):
            raise ValueError(f"batch field '{key}' has values in [{int(tensor.min())}, {int(tensor.max())}]: "
                             f"expected lengths in [0, {limit}]")


class ProjectionHead(nn.Sequential):
    """Small MLP H -> H -> H giving the contrastive embedding of a pooled modality vector (Eq. 9)."""

    def __init__(self, hidden: int):
        super().__init__(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))


class Backbone(nn.Module):
    """Shared parts: the two modality encoders and the two contrastive projection heads.

    Subclasses implement ``forward(batch) -> BackboneOutput`` and usually start with
    ``encoded = self.encode(batch)``; those that only read the pooled modality vectors set
    ``token_level = False`` (no EHR token projection, ``encoded.ehr_tokens`` is None).
    """

    token_level = True

    def __init__(self, config: TrialConfig, *, num_labels: int, series_channels: int, note_dim: int):
        super().__init__()
        for name, value in (("num_labels", num_labels), ("series_channels", series_channels),
                            ("note_dim", note_dim), ("hidden_size", config.hidden_size)):
            if int(value) < 1:
                raise ValueError(f"backbone argument '{name}' = {value!r}: expected a positive integer")
        if config.hidden_size % config.fusion_heads:
            raise ValueError(f"config field 'hidden_size' = {config.hidden_size}: expected a multiple of "
                             f"fusion_heads ({config.fusion_heads})")
        self.config = config
        self.num_labels = int(num_labels)
        self.series_channels = int(series_channels)
        self.note_dim = int(note_dim)
        self.hidden_size = int(config.hidden_size)
        self.series_encoder = SeriesEncoder(self.series_channels, self.hidden_size,
                                            layers=config.lstm_layers, dropout=config.dropout,
                                            tokens=self.token_level)
        self.note_encoder = NoteEncoder(self.note_dim, self.hidden_size, dropout=config.dropout)
        self.ehr_projection = ProjectionHead(self.hidden_size)
        self.note_projection = ProjectionHead(self.hidden_size)

    def encode(self, batch: dict) -> EncodedBatch:
        """Check the batch and run both modality encoders (tokens, masks, pooled vectors)."""
        check_batch(batch, self.series_channels, self.note_dim)
        has_series = batch["has_series"].bool() & (batch["series_length"] > 0)
        has_note = batch["has_note"].bool() & (batch["note_length"] > 0)
        ehr_tokens, ehr_mask, ehr_pooled = self.series_encoder(batch["series"], batch["series_length"], has_series)
        note_tokens, note_mask, note_pooled = self.note_encoder(batch["note"], batch["note_length"], has_note)
        return EncodedBatch(ehr_tokens=ehr_tokens, ehr_mask=ehr_mask, ehr_pooled=ehr_pooled,
                            note_tokens=note_tokens, note_mask=note_mask, note_pooled=note_pooled,
                            has_series=has_series, has_note=has_note)

    def contrastive_embeddings(self, encoded: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(ehr_embedding B×H, note_embedding B×H) from the pooled modality vectors."""
        return self.ehr_projection(encoded.ehr_pooled), self.note_projection(encoded.note_pooled)
