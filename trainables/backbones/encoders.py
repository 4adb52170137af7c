"""Shared modality encoders and attention blocks of the backbones (METHOD §11).

* `SeriesEncoder`: the EHR encoder, a bidirectional LSTM (2 layers by default) over the
  76-channel hourly series in which padding never enters the recurrence; each step's two
  directions are projected to H (tokens B×T×H) and the two final states to H (pooled B×H).
  `bidirectional_lstm` runs it on the zero-padded batch with the fused (oneDNN / cuDNN)
  kernel, one direction at a time: the forward direction reads the real steps first anyway,
  and the reverse direction runs forward over each series reversed *within its length*
  (`reverse_within_length`), so it too never reads padding before a real step. Outputs and
  final states equal a ``PackedSequence`` run (ATen's step-by-step kernel, ~1.7× slower
  forward + backward on CPU) up to float rounding.
* `NoteEncoder`: the frozen text encoder ran once per dataset (`miracl_grid.data.text_features`); here its
  cached token features B×S×D are only projected (Linear + LayerNorm) to B×S×H and mean-pooled
  over the real tokens.

A missing modality (``has_* False`` or length 0) gets an all-False token mask and a zero pooled
vector; the LSTM still runs over its (zero) padding and those outputs are masked out.

`MultiHeadAttention` / `TransformerLayer` take a per-instance boolean mask (True = may attend)
and run `torch.nn.functional.scaled_dot_product_attention` (its fused kernels) whenever no
attention dropout applies; in training with dropout they form the attention weights explicitly,
as SDPA's math kernel would, so the dropout mask comes from `miracl_grid.trainables.backbones.dropout`.
Callers must leave every query row at least one key. All dropout of the backbones is
`miracl_grid.trainables.backbones.dropout` (same operation as PyTorch's, faster CPU masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as functional
from torch import nn

from miracl_grid.trainables.backbones.dropout import Dropout, dropout


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
        self.dropout = Dropout(dropout)

    def forward(self, series: torch.Tensor, length: torch.Tensor, present: torch.Tensor):
        steps = series.shape[1]
        length = torch.where(present, length, torch.zeros_like(length))
        outputs, last = bidirectional_lstm(self.lstm, series, length)
        mask = length_mask(length, steps)
        tokens = None
        if self.token_projection is not None:
            tokens = self.dropout(self.token_projection(outputs)) * mask[..., None]
        pooled = self.dropout(self.pooled_projection(last)) * present[:, None]
        return tokens, mask, pooled


def reverse_within_length(values: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """values B×T×F, length B -> each row's first ``length`` steps in reverse order, padding in place.

    Its own inverse: ``reverse_within_length(reverse_within_length(x, n), n) == x``.
    """
    steps = torch.arange(values.shape[1], device=values.device)[None, :]
    order = torch.where(steps < length[:, None], length[:, None] - 1 - steps, steps)
    return values.gather(1, order[..., None].expand(-1, -1, values.shape[2]))


def bidirectional_lstm(lstm: nn.LSTM, series: torch.Tensor, length: torch.Tensor):
    """Run a batch-first bidirectional `nn.LSTM` (its own weights) over zero-padded series.

    series B×T×C, length B (0 allowed: that row's outputs are meaningless) ->
    (outputs B×T×2H, both directions at every step, meaningful where step < length;
    last B×2H = [forward state after the last real step, reverse state after step 0] of the
    top layer — what ``h_n`` of a ``PackedSequence`` run holds).
    Each layer runs the fused kernel twice (one direction each, padding last in both); the
    inter-layer dropout of ``lstm.dropout`` is applied to the layer outputs in training, as
    `nn.LSTM` does.
    """
    if not (lstm.bidirectional and lstm.batch_first and lstm.bias and lstm.proj_size == 0):
        raise ValueError("bidirectional_lstm needs a batch-first, biased, bidirectional nn.LSTM without projection")
    size = series.shape[0]
    start = series.new_zeros(1, size, lstm.hidden_size)
    final_step = (length.clamp(min=1) - 1)[:, None, None].expand(-1, 1, lstm.hidden_size)
    inputs = series
    for layer in range(lstm.num_layers):
        if layer and lstm.training and lstm.dropout > 0:
            inputs = dropout(inputs, lstm.dropout)
        directions = []
        for suffix in ("", "_reverse"):
            weights = [getattr(lstm, f"{name}_l{layer}{suffix}")
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            ordered = inputs if not suffix else reverse_within_length(inputs, length)
            outputs, _, _ = torch.lstm(ordered, (start, start), weights, True, 1, 0.0, lstm.training, False, True)
            directions.append(outputs)
        forward, reverse = directions     # reverse: still in within-length reversed order
        inputs = torch.cat([forward, reverse_within_length(reverse, length)], dim=-1)
    last = torch.cat([forward.gather(1, final_step), reverse.gather(1, final_step)], dim=-1).squeeze(1)
    return inputs, last


class NoteEncoder(nn.Module):
    """Projection of cached frozen token features: note B×S×D, length B, present B ->
    (tokens B×S×H, mask B×S, pooled B×H = masked mean of the tokens)."""

    def __init__(self, note_dim: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.projection = nn.Linear(note_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, note: torch.Tensor, length: torch.Tensor, present: torch.Tensor):
        length = torch.where(present, length, torch.zeros_like(length))
        mask = length_mask(length, note.shape[1])
        tokens = self.dropout(self.norm(self.projection(note))) * mask[..., None]
        pooled = tokens.sum(dim=1) / length.clamp(min=1)[:, None].to(tokens.dtype)
        return tokens, mask, pooled


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention: queries B×Q×H, keys B×K×H, allowed B×Q×K or B×1×K
    (bool, True = may attend; None = all) -> B×Q×H.

    The steps are exposed for callers that project token rows once and attend in blocks
    (`miracl_grid.trainables.backbones.flexcare`): `split_heads`, `attend` (heads merged back), `output`.
    """

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.output = nn.Linear(hidden, hidden)

    def split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        """B×Q×(heads·d) -> B×heads×Q×d."""
        size, count, width = projected.shape
        return projected.view(size, count, self.heads, width // self.heads).transpose(1, 2)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               allowed: torch.Tensor | None) -> torch.Tensor:
        """Per-head query B×heads×Q×d, key/value B×heads×K×d, allowed B×Q×K / B×1×K (bool, True =
        may attend; or float, added to the scores: 0 / −inf) or None -> B×Q×(heads·d).

        In training with dropout the attention weights are formed explicitly (the computation of
        SDPA's math kernel, which dropout would select anyway) so their dropout mask comes from
        `miracl_grid.trainables.backbones.dropout`; otherwise SDPA picks its fused kernel.
        """
        mask = None if allowed is None else allowed[:, None]
        if self.training and self.dropout > 0:
            scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            attended = dropout(torch.softmax(scores, dim=-1), self.dropout) @ value
        else:
            attended = functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        size, _, count, _ = attended.shape
        return attended.transpose(1, 2).reshape(size, count, -1)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor | None = None):
        key, value = self.key_value(keys).chunk(2, dim=-1)
        attended = self.attend(self.split_heads(self.query(queries)), self.split_heads(key),
                               self.split_heads(value), allowed)
        return self.output(attended)


class FeedForward(nn.Sequential):
    """Position-wise H -> 4H -> H ReLU block of a transformer layer."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__(nn.Linear(hidden, 4 * hidden), nn.ReLU(), Dropout(dropout),
                         nn.Linear(4 * hidden, hidden))


class TransformerLayer(nn.Module):
    """Post-norm transformer encoder layer (as `torch.nn.TransformerEncoderLayer` with its
    defaults: ReLU, feed-forward 4H) with a per-instance mask: x B×N×H, allowed B×N×N -> B×N×H.

    `transform(rows, attend)` is the same layer for any token layout: rows ...×H and
    ``attend(rows)`` = the self-attention output for those rows (same shape).
    """

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadAttention(hidden, heads, dropout)
        self.feedforward = FeedForward(hidden, dropout)
        self.attention_norm = nn.LayerNorm(hidden)
        self.feedforward_norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def transform(self, rows: torch.Tensor, attend: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        rows = self.attention_norm(rows + self.dropout(attend(rows)))
        return self.feedforward_norm(rows + self.dropout(self.feedforward(rows)))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        return self.transform(x, lambda rows: self.attention(rows, rows, allowed))
