"""CbMLC backbone (Zhang et al., CbMLC §4; METHOD §11): label-graph decoder + context regulariser.

Encoder: the shared modality encoders; the instance is the token set
[instance token, EHR tokens, note tokens] (EHR/note tokens plus modality-type embeddings;
the instance token is one of four learned tokens chosen by the modality combination —
none / EHR / note / both — so the memory is never empty and the decoder sees which
modalities are present). Padded steps and absent modalities are masked out.

Decoder (CbMLC §4.2, Fig. 2, LaMP-style attention MPNN on the complete label graph): L label
nodes start from the label embeddings v_l^0 = e_l (L×H, learned); each of ``fusion_layers``
(= 4, the paper's decoder depth) layers first lets every node receive the instance (multi-head
cross-attention to the instance tokens), then collect messages from all other label nodes
(multi-head self-attention, Eqs. 1–4), then a feed-forward update (Eq. 5); every sub-layer
is followed by a residual connection and LayerNorm. Readout (Eq. 10): logit_l = W_o,l · v_l + b_l
with a per-label row W_o,l (sigmoid is left to the loss).

Context-based regulariser (Eq. 9, 11): auxiliary ``context`` = cbmlc_lambda · Σ_l ‖e_l − h(s_l)‖².
In the paper e_l lives in the word-embedding space R^P itself, is initialised to h(s_l) and
pulled towards it; there is no map between spaces. Here the "word embedding" h(s_l) is the
frozen text encoder's mean-pooled encoding of the label name (L×D) and the decoder works in
H, so the text side is mapped into the label space by a *fixed* map (text -> label space, never
trained): centre the L label-name vectors, project them on their top-min(H, L) principal
directions and scale by one global factor so that mean_l ‖h(s_l)‖² = H. When L − 1 ≤ H this
keeps every pairwise distance between label names up to that single factor, i.e. the word-
similarity structure the regulariser is meant to inject. e_l is initialised to h(s_l) (so the
regulariser starts at 0) and trained; h(s_l) is a buffer.
"""
from __future__ import annotations

import torch
from torch import nn

from miracl_grid.trainables.backbones.base import Backbone, BackboneOutput
from miracl_grid.trainables.backbones.dropout import Dropout
from miracl_grid.trainables.backbones.encoders import FeedForward, MultiHeadAttention
from miracl_grid.trainables.config import TrialConfig


def label_context_map(label_name_embeddings: torch.Tensor, hidden: int):
    """Fixed text -> label-space map of the label-name embeddings S (L×D).

    -> (targets L×H = h(s_l), mean D, projection D×H) with h(s) = (s − mean) @ projection,
    projection = scale · [top principal directions of the centred S, zero columns up to H].
    """
    names = label_name_embeddings.detach().to(torch.float64)
    mean = names.mean(dim=0)
    centred = names - mean
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    tolerance = singular.max() * max(centred.shape) * torch.finfo(torch.float64).eps if singular.numel() else 0.0
    rank = int((singular > tolerance).sum()) if singular.numel() else 0
    kept = min(rank, hidden)
    projection = torch.zeros(names.shape[1], hidden, dtype=torch.float64)
    projection[:, :kept] = right[:kept].T
    targets = centred @ projection
    mean_square = (targets ** 2).sum(dim=1).mean()
    if mean_square > 0:
        scale = torch.sqrt(hidden / mean_square)
        projection = projection * scale
        targets = targets * scale
    return targets.float(), mean.float(), projection.float()


class LabelGraphLayer(nn.Module):
    """One CbMLC decoder step: labels L nodes B×L×H attend to the instance (memory B×M×H,
    allowed B×1×M), then to each other, then a feed-forward update; post-norm residuals."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.cross_attention = MultiHeadAttention(hidden, heads, dropout)
        self.self_attention = MultiHeadAttention(hidden, heads, dropout)
        self.feedforward = FeedForward(hidden, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(3))
        self.dropout = Dropout(dropout)

    def forward(self, labels: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        labels = self.norms[0](labels + self.dropout(self.cross_attention(labels, memory, allowed)))
        labels = self.norms[1](labels + self.dropout(self.self_attention(labels, labels)))
        return self.norms[2](labels + self.dropout(self.feedforward(labels)))


class CbMLCBackbone(Backbone):
    """Modality encoders + label-graph attention decoder + context regulariser (module docstring)."""

    def __init__(self, config: TrialConfig, *, num_labels: int, series_channels: int, note_dim: int,
                 label_name_embeddings: torch.Tensor | None = None):
        super().__init__(config, num_labels=num_labels, series_channels=series_channels, note_dim=note_dim)
        if label_name_embeddings is None:
            raise ValueError("backbone 'cbmlc' needs label_name_embeddings (L×D label-name encodings from the "
                             "frozen text encoder, DIR/text/KEY/label_embeddings.npy) for its context regulariser")
        names = torch.as_tensor(label_name_embeddings)
        if names.dim() != 2 or names.shape[0] != num_labels:
            raise ValueError(f"label_name_embeddings has shape {tuple(names.shape)}: expected "
                             f"({num_labels}, D), one row per label")
        if not bool(torch.isfinite(names).all()):
            raise ValueError("label_name_embeddings contains non-finite values")
        hidden = self.hidden_size
        targets, mean, projection = label_context_map(names, hidden)
        self.register_buffer("label_names", names.detach().float().clone())
        self.register_buffer("context_mean", mean)
        self.register_buffer("context_projection", projection)
        self.register_buffer("context_targets", targets)
        self.label_embeddings = nn.Parameter(targets.clone())
        self.instance_tokens = nn.Parameter(torch.empty(4, hidden))   # index has_series + 2·has_note
        self.modality_types = nn.Parameter(torch.empty(2, hidden))
        for parameter in (self.instance_tokens, self.modality_types):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.decoder = nn.ModuleList(LabelGraphLayer(hidden, config.fusion_heads, config.dropout)
                                     for _ in range(config.fusion_layers))
        self.readout_weight = nn.Parameter(torch.empty(num_labels, hidden).uniform_(-hidden ** -0.5, hidden ** -0.5))
        self.readout_bias = nn.Parameter(torch.zeros(num_labels))

    def context_loss(self) -> torch.Tensor:
        """Unweighted Σ_l ‖e_l − h(s_l)‖² (CbMLC Eq. 9)."""
        return ((self.label_embeddings - self.context_targets) ** 2).sum()

    def forward(self, batch: dict) -> BackboneOutput:
        encoded = self.encode(batch)
        size = encoded.ehr_tokens.shape[0]
        combination = encoded.has_series.long() + 2 * encoded.has_note.long()
        memory = torch.cat([self.instance_tokens[combination][:, None],
                            encoded.ehr_tokens + self.modality_types[0],
                            encoded.note_tokens + self.modality_types[1]], dim=1)
        allowed = torch.cat([torch.ones(size, 1, dtype=torch.bool, device=memory.device),
                             encoded.ehr_mask, encoded.note_mask], dim=1)[:, None, :]
        labels = self.label_embeddings.expand(size, -1, -1)
        for layer in self.decoder:
            labels = layer(labels, memory, allowed)
        logits = (labels * self.readout_weight).sum(dim=-1) + self.readout_bias
        ehr_embedding, note_embedding = self.contrastive_embeddings(encoded)
        return BackboneOutput(logits=logits, ehr_embedding=ehr_embedding, note_embedding=note_embedding,
                              auxiliary_losses={"context": self.config.cbmlc_lambda * self.context_loss()})
