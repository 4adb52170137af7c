"""FlexCare-style backbone with the image modality removed (METHOD §11, MIRACL App. A.5.2).

Sequence fed to the fusion transformer (``config.fusion_layers`` post-norm layers,
``config.fusion_heads`` heads, hidden H), per instance::

    [task token, c_both, c_ehr, c_note, EHR tokens (T), note tokens (S)]

* EHR tokens = BiLSTM outputs, note tokens = projected frozen-encoder features, each plus a
  learned modality-type embedding (the BiLSTM and the text encoder already carry position).
* ``c_both, c_ehr, c_note`` are the learned *modality-combination tokens*, one per non-empty
  combination of the two modalities. As in FlexCare's reference model (its
  ``generate_cross_modal_mask``), a combination token attends only to itself and to the tokens
  of its own modalities, modality tokens attend only within their modality, and the task token
  attends to every token. Key padding: padded steps and absent modalities are never attended.
* Computed on real tokens only (`FusionLayout`): the layers' row-wise parts (projections,
  feed-forward, norms, dropout) run on the packed real rows [4 prefix rows per instance,
  real EHR steps, real note tokens], and the attention runs per block of the mask: EHR rows
  over EHR keys (B×T), note rows over note keys (B×S), the 4 prefix rows over all keys
  (B×4×N) — the same outputs as one masked N×N attention over the padded sequence, without
  the padded rows (~1/3 of them on the embedded cohort) and the all-False off-diagonal blocks.
  Only the prefix rows of the last layer are read, so that layer computes its keys and values
  for every row and everything else for the 4B prefix rows alone (`fuse`).
* A combination token is *available* for an instance when all its modalities are present
  (both: has_series and has_note; ehr: has_series; note: has_note). Only available tokens go
  on: each is routed through a noisy top-k mixture of experts gated by the token and the task
  token (Shazeer et al. 2017; ``num_experts`` = 10, ``top_k_experts`` = 2), then the expert
  outputs are pooled with a softmax attention (temperature 0.2) over the available
  combinations, layer-normalised and concatenated with the task token's output; a linear
  head gives the L logits. An instance with neither modality pools nothing (zero vector).

Auxiliary losses (already weighted):
* ``moe_balance`` = moe_loss_weight · (CV²(importance) + CV²(load)), Shazeer et al. 2017
  Eq. 6–10: importance = summed gate values per expert, load = the smooth estimator
  Σ P(expert in top-k under re-sampled noise) in training with noise, the count of routed
  tokens otherwise; only available combination tokens count.
* ``orthogonality`` = orthogonality_loss_weight · mean over instances with ≥ 2 available
  combination tokens of ‖W Wᵀ − I‖²_F, W = the instance's fused combination-token outputs
  (before the experts), each row L2-normalised — i.e. the squared cosine similarities between
  different combination tokens. FlexCare's reference decorrelates the same tokens with a
  covariance; the normalised form here is scale-free and is exactly 0 for orthogonal tokens.

Unimodal heads (linear, on the pooled EHR / note vectors) give ``unimodal_logits`` for the
reference code's optional 0.6/0.2/0.2 prediction blend (METHOD §13); they are trained only if
the method adds a loss on them, and rows lacking the modality are meaningless.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import nn

from miracl_grid.trainables.backbones.base import Backbone, BackboneOutput
from miracl_grid.trainables.backbones.dropout import Dropout
from miracl_grid.trainables.backbones.encoders import MultiHeadAttention, TransformerLayer
from miracl_grid.trainables.config import TrialConfig

COMBINATIONS = ("both", "ehr", "note")
POOL_TEMPERATURE = 0.2


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation var/mean² of a 1-D tensor (unbiased var; 0 for one value)."""
    if values.numel() < 2:
        return values.sum() * 0.0
    values = values.float()
    return values.var() / (values.mean() ** 2 + 1e-10)


def balance_loss(importance: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """Shazeer et al. 2017 load-balancing loss (unweighted): CV²(importance) + CV²(load), both E."""
    return cv_squared(importance) + cv_squared(load)


def orthogonality_loss(tokens: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Mean over instances with ≥ 2 available tokens of ‖W Wᵀ − I‖²_F (unweighted).

    tokens B×K×H, available B×K bool; W = the available rows of one instance, L2-normalised.
    Pairs involving an unavailable token are left out.
    """
    unit = functional.normalize(tokens, dim=-1)
    gram = unit @ unit.transpose(1, 2)
    identity = torch.eye(tokens.shape[1], device=tokens.device, dtype=tokens.dtype)
    pairs = available[:, :, None] & available[:, None, :]
    per_instance = ((gram - identity) ** 2 * pairs).sum(dim=(1, 2))
    counted = (available.sum(dim=1) >= 2).to(tokens.dtype)
    return (per_instance * counted).sum() / counted.sum().clamp(min=1.0)


@dataclass
class FusionLayout:
    """Where the real tokens of the fusion sequence are, for a batch with B instances.

    Packed rows (M = 4B + Σ EHR lengths + Σ note lengths): ``4B`` prefix rows (instance-major:
    task, c_both, c_ehr, c_note), then the real EHR steps, then the real note tokens, each in
    (instance, position) order. ``ehr_rows`` / ``note_rows`` index the flattened B·T / B·S
    padded positions of those rows. The attention masks are additive (0 = may attend, −inf =
    may not): ``ehr_keys`` B×1×T and ``note_keys`` B×1×S over the two modality blocks (real
    positions; an instance without the modality may attend its position 0, so its discarded
    padded rows never meet a row without keys); ``prefix_allowed`` B×4×(4+T+S) for the prefix
    rows over [prefix, EHR block, note block].
    """

    size: int
    steps: int
    tokens: int
    ehr_rows: torch.Tensor
    note_rows: torch.Tensor
    ehr_keys: torch.Tensor
    note_keys: torch.Tensor
    prefix_allowed: torch.Tensor

    @classmethod
    def of(cls, ehr_mask: torch.Tensor, note_mask: torch.Tensor) -> "FusionLayout":
        """From the B×T EHR and B×S note masks (True = real token)."""
        size, steps = ehr_mask.shape
        tokens = note_mask.shape[1]
        count = len(COMBINATIONS)
        has_ehr, has_note = ehr_mask.any(dim=1), note_mask.any(dim=1)
        first_ehr = torch.zeros_like(ehr_mask)
        first_ehr[:, 0] = ~has_ehr
        first_note = torch.zeros_like(note_mask)
        first_note[:, 0] = ~has_note
        # prefix rows: task attends everything real, c_both both modalities, c_ehr / c_note one
        itself = torch.eye(1 + count, dtype=torch.bool, device=ehr_mask.device)
        itself[0] = True
        reads_ehr = torch.tensor([True, True, True, False], device=ehr_mask.device)
        reads_note = torch.tensor([True, True, False, True], device=ehr_mask.device)
        prefix_allowed = torch.cat([itself.expand(size, -1, -1),
                                    reads_ehr[None, :, None] & ehr_mask[:, None, :],
                                    reads_note[None, :, None] & note_mask[:, None, :]], dim=2)
        def additive(allowed: torch.Tensor) -> torch.Tensor:
            return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))

        return cls(size=size, steps=steps, tokens=tokens,
                   ehr_rows=ehr_mask.reshape(-1).nonzero().squeeze(1),
                   note_rows=note_mask.reshape(-1).nonzero().squeeze(1),
                   ehr_keys=additive(ehr_mask | first_ehr)[:, None],
                   note_keys=additive(note_mask | first_note)[:, None],
                   prefix_allowed=additive(prefix_allowed))

    @property
    def prefix_count(self) -> int:
        return self.size * (1 + len(COMBINATIONS))

    def pack(self, prefix: torch.Tensor, ehr: torch.Tensor, note: torch.Tensor) -> torch.Tensor:
        """prefix B×4×F, ehr B×T×F, note B×S×F -> the packed real rows M×F."""
        width = prefix.shape[-1]
        return torch.cat([prefix.reshape(-1, width), ehr.reshape(-1, width).index_select(0, self.ehr_rows),
                          note.reshape(-1, width).index_select(0, self.note_rows)], dim=0)

    def unpack(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed rows M×F -> (prefix B×4×F, ehr B×T×F, note B×S×F), zero at padded positions."""
        width = rows.shape[-1]
        prefix_end, ehr_end = self.prefix_count, self.prefix_count + len(self.ehr_rows)
        ehr = rows.new_zeros(self.size * self.steps, width).index_copy(0, self.ehr_rows, rows[prefix_end:ehr_end])
        note = rows.new_zeros(self.size * self.tokens, width).index_copy(0, self.note_rows, rows[ehr_end:])
        return (rows[:prefix_end].view(self.size, -1, width), ehr.view(self.size, self.steps, width),
                note.view(self.size, self.tokens, width))


def block_attention(attention: MultiHeadAttention, rows: torch.Tensor, layout: FusionLayout) -> torch.Tensor:
    """Self-attention of the packed rows M×H under the FlexCare mask, one block at a time -> M×H."""
    weight = torch.cat([attention.query.weight, attention.key_value.weight], dim=0)     # 3H×H
    bias = torch.cat([attention.query.bias, attention.key_value.bias], dim=0)
    blocks = layout.unpack(functional.linear(rows, weight, bias))      # [q | k | v] per block
    (prefix_q, prefix_k, prefix_v), (ehr_q, ehr_k, ehr_v), (note_q, note_k, note_v) = (
        [attention.split_heads(part) for part in block.chunk(3, dim=-1)] for block in blocks)
    every_key = torch.cat([prefix_k, ehr_k, note_k], dim=2)
    every_value = torch.cat([prefix_v, ehr_v, note_v], dim=2)
    prefix = attention.attend(prefix_q, every_key, every_value, layout.prefix_allowed)
    ehr = attention.attend(ehr_q, ehr_k, ehr_v, layout.ehr_keys)
    note = attention.attend(note_q, note_k, note_v, layout.note_keys)
    return attention.output(layout.pack(prefix, ehr, note))


def prefix_attention(attention: MultiHeadAttention, prefix_rows: torch.Tensor, rows: torch.Tensor,
                     layout: FusionLayout) -> torch.Tensor:
    """Self-attention output of the prefix rows alone: queries P×H (P = 4B, = rows[:P]) over the
    keys of every packed row M×H -> P×H, equal to the first P rows of `block_attention`.

    The last fusion layer needs nothing else: only its prefix rows go on (task and combination
    tokens), so its queries, output projection, feed-forward and norms run on P rows, and only
    its keys and values on all M.
    """
    size, width = layout.size, prefix_rows.shape[-1]
    query = attention.split_heads(attention.query(prefix_rows).view(size, -1, width))
    blocks = layout.unpack(attention.key_value(rows))                  # [k | v] per block
    every = torch.cat(blocks, dim=1)                                   # B×(4+T+S)×2H
    key, value = (attention.split_heads(part) for part in every.chunk(2, dim=-1))
    return attention.output(attention.attend(query, key, value, layout.prefix_allowed).reshape(-1, width))


def fuse(layers: nn.ModuleList, layout: FusionLayout, rows: torch.Tensor) -> torch.Tensor:
    """The fusion transformer on packed rows M×H -> the last layer's prefix rows, B×4×H.

    Every layer but the last transforms all M rows (attention per block, `block_attention`);
    the last transforms only the P = 4B prefix rows (`prefix_attention`), since no other row of
    its output is read. Same outputs and gradients as all layers on all rows.
    """
    *inner, last = layers
    for layer in inner:
        rows = layer.transform(rows, lambda rows, layer=layer: block_attention(layer.attention, rows, layout))
    prefix = last.transform(rows[:layout.prefix_count],
                            lambda prefix_rows: prefix_attention(last.attention, prefix_rows, rows, layout))
    return prefix.view(layout.size, -1, prefix.shape[-1])


class NoisyTopKExperts(nn.Module):
    """Sparsely-gated mixture of MLP experts (Shazeer et al. 2017) with a query-conditioned gate.

    inputs N×H, queries N×Q, available N bool -> (outputs N×H, gates N×E, importance E, load E).
    Gate logits = inputs·W_g + queries·W_q (+ N(0,1)·softplus(inputs·W_noise) + 1e-2 in training);
    the k largest are soft-maxed, the rest are zero. Experts are evaluated densely and weighted by
    the (sparse) gates, which gives the same outputs and gradients as sparse dispatch.
    """

    def __init__(self, hidden: int, query_size: int, num_experts: int, k: int, noise_epsilon: float = 1e-2,
                 noisy: bool = True):
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"config field 'top_k_experts' = {k}: expected 1 <= k <= num_experts ({num_experts})")
        self.num_experts, self.k, self.noise_epsilon, self.noisy = num_experts, k, noise_epsilon, noisy
        # zero-initialised gates as in Shazeer et al. (all experts equally likely at the start)
        self.gate = nn.Parameter(torch.zeros(hidden, num_experts))
        self.query_gate = nn.Parameter(torch.zeros(query_size, num_experts))
        self.noise = nn.Parameter(torch.zeros(hidden, num_experts))
        bound = 1.0 / math.sqrt(hidden)
        self.first_weight = nn.Parameter(torch.empty(num_experts, hidden, hidden).uniform_(-bound, bound))
        self.first_bias = nn.Parameter(torch.empty(num_experts, hidden).uniform_(-bound, bound))
        self.second_weight = nn.Parameter(torch.empty(num_experts, hidden, hidden).uniform_(-bound, bound))
        self.second_bias = nn.Parameter(torch.empty(num_experts, hidden).uniform_(-bound, bound))

    def gates(self, inputs: torch.Tensor, queries: torch.Tensor, available: torch.Tensor):
        """-> (gates N×E with exactly k non-zero per row, importance E, load E) over available rows."""
        clean = inputs @ self.gate + queries @ self.query_gate
        noisy_training = self.noisy and self.training and self.k < self.num_experts
        if noisy_training:
            noise_std = functional.softplus(inputs @ self.noise) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top_values, top_indices = logits.topk(min(self.k + 1, self.num_experts), dim=1)
        weights = torch.softmax(top_values[:, :self.k], dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_indices[:, :self.k], weights)
        counted = available.to(gates.dtype)[:, None]
        importance = (gates * counted).sum(dim=0)
        if noisy_training:
            # P(expert stays / gets in the top k when its own noise is re-sampled), Shazeer Eq. 8-9
            threshold_in = top_values[:, self.k:self.k + 1]      # (k+1)-th largest: bar for a member
            threshold_out = top_values[:, self.k - 1:self.k]     # k-th largest: bar for an outsider
            is_in = logits > threshold_in
            probability = torch.where(is_in, torch.special.ndtr((clean - threshold_in) / noise_std),
                                      torch.special.ndtr((clean - threshold_out) / noise_std))
            load = (probability * counted).sum(dim=0)
        else:
            load = ((gates > 0).to(gates.dtype) * counted).sum(dim=0)
        return gates, importance, load

    def forward(self, inputs: torch.Tensor, queries: torch.Tensor, available: torch.Tensor):
        gates, importance, load = self.gates(inputs, queries, available)
        hidden = torch.relu(torch.einsum("nh,ehk->nek", inputs, self.first_weight) + self.first_bias)
        outputs = torch.einsum("nek,eko->neo", hidden, self.second_weight) + self.second_bias
        return torch.einsum("ne,neo->no", gates, outputs), gates, importance, load


class FlexCareBackbone(Backbone):
    """FlexCare-style fusion transformer + modality-combination tokens + top-k MoE (module docstring)."""

    def __init__(self, config: TrialConfig, *, num_labels: int, series_channels: int, note_dim: int,
                 label_name_embeddings: torch.Tensor | None = None):
        super().__init__(config, num_labels=num_labels, series_channels=series_channels, note_dim=note_dim)
        hidden = self.hidden_size
        self.task_token = nn.Parameter(torch.empty(hidden))
        self.combination_tokens = nn.Parameter(torch.empty(len(COMBINATIONS), hidden))
        self.modality_types = nn.Parameter(torch.empty(2, hidden))   # 0: EHR, 1: note
        for parameter in (self.task_token, self.combination_tokens, self.modality_types):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.fusion = nn.ModuleList(TransformerLayer(hidden, config.fusion_heads, config.dropout)
                                    for _ in range(config.fusion_layers))
        self.experts = NoisyTopKExperts(hidden, hidden, config.num_experts, config.top_k_experts,
                                        noisy=config.noisy_gating)
        self.pool_score = nn.Sequential(nn.Linear(2 * hidden, hidden, bias=False), nn.Tanh(),
                                        nn.Linear(hidden, 1, bias=False))
        self.pool_norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(2 * hidden, num_labels)
        self.ehr_head = nn.Linear(hidden, num_labels)
        self.note_head = nn.Linear(hidden, num_labels)

    def forward(self, batch: dict) -> BackboneOutput:
        encoded = self.encode(batch)
        size = encoded.ehr_tokens.shape[0]
        hidden = self.hidden_size
        prefix = torch.cat([self.task_token[None], self.combination_tokens], 0).expand(size, -1, -1)
        layout = FusionLayout.of(encoded.ehr_mask, encoded.note_mask)
        rows = layout.pack(prefix, encoded.ehr_tokens + self.modality_types[0],
                           encoded.note_tokens + self.modality_types[1])
        fused_prefix = fuse(self.fusion, layout, rows)                  # B×4×H
        task = fused_prefix[:, 0]                                        # B×H
        combinations = fused_prefix[:, 1:]                               # B×K×H
        available = torch.stack([encoded.has_series & encoded.has_note, encoded.has_series,
                                 encoded.has_note], dim=1)               # B×K
        count = len(COMBINATIONS)
        expert_outputs, _, importance, load = self.experts(
            combinations.reshape(size * count, hidden), task.repeat_interleave(count, dim=0),
            available.reshape(-1))
        expert_outputs = expert_outputs.view(size, count, hidden)
        scores = self.pool_score(torch.cat([task[:, None].expand(-1, count, -1), expert_outputs], -1)).squeeze(-1)
        scores = (scores / POOL_TEMPERATURE).masked_fill(~available, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * available   # a row with nothing available pools zero
        pooled = self.pool_norm((weights[..., None] * expert_outputs).sum(dim=1))
        logits = self.head(self.dropout(torch.cat([task, pooled], dim=-1)))
        ehr_embedding, note_embedding = self.contrastive_embeddings(encoded)
        auxiliary = {
            "moe_balance": self.config.moe_loss_weight * balance_loss(importance, load),
            "orthogonality": self.config.orthogonality_loss_weight * orthogonality_loss(combinations, available),
        }
        unimodal = {"ehr": self.ehr_head(encoded.ehr_pooled), "note": self.note_head(encoded.note_pooled)}
        return BackboneOutput(logits=logits, ehr_embedding=ehr_embedding, note_embedding=note_embedding,
                              auxiliary_losses=auxiliary, unimodal_logits=unimodal)
