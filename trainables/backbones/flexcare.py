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
  attends to every token. Key padding: padded steps and absent modalities are never attended
  (each row may always attend itself, so no row is empty; padded rows are never read).
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

import torch
import torch.nn.functional as functional
from torch import nn

from trainables.backbones.base import Backbone, BackboneOutput
from trainables.backbones.encoders import TransformerLayer
from trainables.config import TrialConfig

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
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * hidden, num_labels)
        self.ehr_head = nn.Linear(hidden, num_labels)
        self.note_head = nn.Linear(hidden, num_labels)

    @staticmethod
    def attention_mask(ehr_mask: torch.Tensor, note_mask: torch.Tensor) -> torch.Tensor:
        """B×N×N bool (True = row may attend column) for the sequence of the module docstring."""
        size, steps = ehr_mask.shape
        tokens = note_mask.shape[1]
        prefix = 1 + len(COMBINATIONS)
        length = prefix + steps + tokens
        device = ehr_mask.device
        region = torch.zeros(length, dtype=torch.long, device=device)   # 0 prefix, 1 EHR, 2 note
        region[prefix:prefix + steps] = 1
        region[prefix + steps:] = 2
        is_ehr, is_note = region == 1, region == 2
        structure = torch.zeros(length, length, dtype=torch.bool, device=device)
        structure[0] = True                                    # task token: everything
        structure[1] = is_ehr | is_note                        # c_both: both modalities
        structure[2] = is_ehr                                  # c_ehr
        structure[3] = is_note                                 # c_note
        structure[prefix:prefix + steps] = is_ehr              # EHR tokens: within EHR
        structure[prefix + steps:] = is_note                   # note tokens: within the note
        valid_key = torch.cat([torch.ones(size, prefix, dtype=torch.bool, device=device), ehr_mask, note_mask], 1)
        diagonal = torch.eye(length, dtype=torch.bool, device=device)
        return (structure[None] & valid_key[:, None, :]) | diagonal[None]

    def forward(self, batch: dict) -> BackboneOutput:
        encoded = self.encode(batch)
        size = encoded.ehr_tokens.shape[0]
        hidden = self.hidden_size
        prefix = torch.cat([self.task_token[None], self.combination_tokens], 0).expand(size, -1, -1)
        sequence = torch.cat([prefix, encoded.ehr_tokens + self.modality_types[0],
                              encoded.note_tokens + self.modality_types[1]], dim=1)
        allowed = self.attention_mask(encoded.ehr_mask, encoded.note_mask)
        for layer in self.fusion:
            sequence = layer(sequence, allowed)
        task = sequence[:, 0]                                            # B×H
        combinations = sequence[:, 1:1 + len(COMBINATIONS)]              # B×K×H
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
