"""Shared modality encoders and attention blocks of the backbones (METHOD §11).

* `SeriesEncoder`: the EHR encoder, a bidirectional LSTM (2 layers by default) over the
  76-channel hourly series, packed by ``series_length`` so padding never enters the
  recurrence; each step's two directions are projected to H (tokens B×T×H) and the two final
  states to H (pooled B×H).
* `NoteEncoder`: the frozen text encoder ran once per dataset (`data.text_features`); here its
  cached token features B×S×D are only projected (Linear + LayerNorm) to B×S×H and mean-pooled
  over the real tokens.

A missing modality (``has_* False`` or length 0) gets an all-False token mask and a zero pooled
vector; the LSTM still runs on one zero step for it (packing cannot take length 0) and its
outputs are masked out.

`MultiHeadAttention` / `TransformerLayer` take a per-instance boolean mask (True = may attend)
and run `torch.nn.functional.scaled_dot_product_attention`, so no B×heads×N×N weight tensor is
kept on devices with fused kernels. Callers must leave every query row at least one key.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass
class EncodedBatch:
    """Outputs of both modality encoders for one batch (H = hidden size)."""

    ehr_tokens: torch.Tensor | None   # B×T×H, zero where ehr_mask is False (None: pooled-only encoder)
    ehr_mask: torch.Tensor      # B×T bool, True for the series' real time steps
    ehr_pooled: torch.Tensor    # B×H, zero for instances without a series
    note_tokens: torch.Tensor   # B×S×H, zero where note_mask is False
    note_mask: torch.Tensor     # B×S bool
    note_pooled: torch.Tensor   # B×H, zero for instances without a note
    has_series: torch.Tensor    # B bool (has_series and series_length > 0)
    has_note: torch.Tensor      # B bool (has_note and note_length > 0)


def length_mask(length: torch.Tensor, size: int) -> torch.Tensor:
    """B lengths -> B×size bool mask, True at positions < length."""
    return torch.arange(size, device=length.device)[None, :] < length[:, None]


class SeriesEncoder(nn.Module):
    """BiLSTM EHR encoder: series B×T×C, length B, present B -> (tokens B×T×H, mask B×T, pooled B×H).

    With ``tokens=False`` (backbones that only use the pooled vector) no token projection exists
    and the returned tokens are None.
    """

    def __init__(self, channels: int, hidden: int, layers: int = 2, dropout: float = 0.1, tokens: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"config field 'lstm_layers' = {layers}: expected at least 1")
        self.lstm = nn.LSTM(channels, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.token_projection = nn.Linear(2 * hidden, hidden) if tokens else None
        self.pooled_projection = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, series: torch.Tensor, length: torch.Tensor, present: torch.Tensor):
        steps = series.shape[1]
        length = torch.where(present, length, torch.zeros_like(length))
        packed_length = length.clamp(min=1, max=steps).cpu()   # an absent series runs one discarded step
        packed = pack_padded_sequence(series, packed_length, batch_first=True, enforce_sorted=False)
        outputs, (final_hidden, _) = self.lstm(packed)
        mask = length_mask(length, steps)
        tokens = None
        if self.token_projection is not None:
            outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=steps)
            tokens = self.dropout(self.token_projection(outputs)) * mask[..., None]
        last = torch.cat([final_hidden[-2], final_hidden[-1]], dim=-1)   # last layer, both directions
        pooled = self.dropout(self.pooled_projection(last)) * present[:, None]
        return tokens, mask, pooled


class NoteEncoder(nn.Module):
    """Projection of cached frozen token features: note B×S×D, length B, present B ->
    (tokens B×S×H, mask B×S, pooled B×H = masked mean of the tokens)."""

    def __init__(self, note_dim: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.projection = nn.Linear(note_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, note: torch.Tensor, length: torch.Tensor, present: torch.Tensor):
        length = torch.where(present, length, torch.zeros_like(length))
        mask = length_mask(length, note.shape[1])
        tokens = self.dropout(self.norm(self.projection(note))) * mask[..., None]
        pooled = tokens.sum(dim=1) / length.clamp(min=1)[:, None].to(tokens.dtype)
        return tokens, mask, pooled


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention: queries B×Q×H, keys B×K×H, allowed B×Q×K or B×1×K
    (bool, True = may attend; None = all) -> B×Q×H."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.output = nn.Linear(hidden, hidden)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor | None = None):
        size, count, hidden = queries.shape
        head_dim = hidden // self.heads
        query = self.query(queries).view(size, count, self.heads, head_dim).transpose(1, 2)
        key, value = self.key_value(keys).view(size, keys.shape[1], 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = None if allowed is None else allowed[:, None]
        attended = functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.output(attended.transpose(1, 2).reshape(size, count, hidden))


class FeedForward(nn.Sequential):
    """Position-wise H -> 4H -> H ReLU block of a transformer layer."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__(nn.Linear(hidden, 4 * hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(4 * hidden, hidden))


class TransformerLayer(nn.Module):
    """Post-norm transformer encoder layer (as `torch.nn.TransformerEncoderLayer` with its
    defaults: ReLU, feed-forward 4H) with a per-instance mask: x B×N×H, allowed B×N×N -> B×N×H."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadAttention(hidden, heads, dropout)
        self.feedforward = FeedForward(hidden, dropout)
        self.attention_norm = nn.LayerNorm(hidden)
        self.feedforward_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, x, allowed)))
        return self.feedforward_norm(x + self.dropout(self.feedforward(x)))
