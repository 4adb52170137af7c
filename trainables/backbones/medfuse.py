"""MedFuse-style backbone (Hayat et al. 2022; METHOD §11): LSTM fusion of modality embeddings.

The shared encoders give one pooled vector per modality (EHR: the BiLSTM's final states,
note: the mean of the projected token features). Each gets a learned modality-type embedding
and the *available* ones form a per-instance sequence in the fixed order [EHR, note] —
length 2 with both, length 1 with one (the missing one is not fed: the sequence is packed),
and, for an instance with neither, length 1 holding a learned "no modality" embedding.
MedFuse's original always has the EHR first and appends the image when present; the type
embeddings tell the fusion LSTM which modality a length-1 sequence holds. The final hidden
state of a one-layer LSTM (hidden H) goes through dropout and a linear head to the L logits.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from miracl_grid.trainables.backbones.base import Backbone, BackboneOutput
from miracl_grid.trainables.backbones.dropout import Dropout
from miracl_grid.trainables.config import TrialConfig


class MedFuseBackbone(Backbone):
    """Modality encoders + fusion LSTM over the available modality embeddings (module docstring)."""

    token_level = False

    def __init__(self, config: TrialConfig, *, num_labels: int, series_channels: int, note_dim: int,
                 label_name_embeddings: torch.Tensor | None = None):
        super().__init__(config, num_labels=num_labels, series_channels=series_channels, note_dim=note_dim)
        hidden = self.hidden_size
        self.modality_types = nn.Parameter(torch.empty(2, hidden))   # 0: EHR, 1: note
        self.empty_embedding = nn.Parameter(torch.empty(hidden))
        for parameter in (self.modality_types, self.empty_embedding):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.fusion = nn.LSTM(hidden, hidden, batch_first=True)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, batch: dict) -> BackboneOutput:
        encoded = self.encode(batch)
        has_series, has_note = encoded.has_series[:, None], encoded.has_note[:, None]
        ehr = encoded.ehr_pooled + self.modality_types[0]
        note = encoded.note_pooled + self.modality_types[1]
        first = torch.where(has_series, ehr, torch.where(has_note, note, self.empty_embedding.expand_as(ehr)))
        sequence = torch.stack([first, note], dim=1)                      # B×2×H, slot 2 read only with both
        length = 1 + (encoded.has_series & encoded.has_note).long()
        packed = pack_padded_sequence(sequence, length.cpu(), batch_first=True, enforce_sorted=False)
        _, (final_hidden, _) = self.fusion(packed)
        logits = self.head(self.dropout(final_hidden[-1]))
        ehr_embedding, note_embedding = self.contrastive_embeddings(encoded)
        return BackboneOutput(logits=logits, ehr_embedding=ehr_embedding, note_embedding=note_embedding)
