"""M3Care-style backbone (Zhang et al. 2022; METHOD §11): impute a missing modality from similar
patients in the batch, then fuse.

1. Shared encoders -> pooled EHR and note vectors z^E, z^N (B×H).
2. Patient similarity (learned): per modality m a linear map P_m; cos^m_ij = cosine(P_m z^m_i,
   P_m z^m_j). The similarity of i and j averages cos^m_ij over the modalities both have;
   pairs sharing no modality have none.
3. Imputation of modality m for an instance i lacking it: candidates are the instances j
   that have m (so never i itself) and share at least one modality with i; weights =
   softmax_j(sim_ij / τ) over candidates (τ = exp(learned log-temperature), initialised 0.1);
   ẑ^m_i = Σ_j w_ij z^m_j. With no candidate (e.g. nobody in the batch has m, or i has no
   modality at all) ẑ^m_i is a learned "missing m" embedding. Present modalities are kept as
   they are, so an instance with both modalities never depends on the rest of the batch.
4. Fusion: the two (real or imputed) embeddings plus modality-type embeddings pass through
   two post-norm transformer layers (M3Care's multimodal interaction capture), are flattened
   (B×2H) and an MLP 2H -> H -> L gives the logits.

Simplified against M3Care's paper (documented deviation): no Gaussian-kernel mixture, no learned
dissimilarity threshold, no adaptive blending of neighbour information into *present*
modalities, and no stabilisation loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as functional
from torch import nn

from miracl_grid.trainables.backbones.base import Backbone, BackboneOutput
from miracl_grid.trainables.backbones.dropout import Dropout
from miracl_grid.trainables.backbones.encoders import TransformerLayer
from miracl_grid.trainables.config import TrialConfig

FUSION_LAYERS = 2
INITIAL_TEMPERATURE = 0.1


def impute_from_neighbours(values: torch.Tensor, similarity: torch.Tensor, candidates: torch.Tensor,
                           fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity-weighted average of other instances' embeddings.

    values B×H (embeddings of one modality), similarity B×B (already divided by the
    temperature), candidates B×B bool (row i: who may be used for i), fallback H ->
    (imputed B×H, has_candidate B). Rows without any candidate get ``fallback``.
    """
    scores = similarity.masked_fill(~candidates, torch.finfo(similarity.dtype).min)
    weights = torch.softmax(scores, dim=1) * candidates
    has_candidate = candidates.any(dim=1)
    imputed = weights @ values
    return torch.where(has_candidate[:, None], imputed, fallback.expand_as(imputed)), has_candidate


class M3CareBackbone(Backbone):
    """Modality encoders + batch-neighbour imputation of missing modalities + fusion (module docstring)."""

    token_level = False

    def __init__(self, config: TrialConfig, *, num_labels: int, series_channels: int, note_dim: int,
                 label_name_embeddings: torch.Tensor | None = None):
        super().__init__(config, num_labels=num_labels, series_channels=series_channels, note_dim=note_dim)
        hidden = self.hidden_size
        self.similarity_maps = nn.ModuleList([nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
        self.log_temperature = nn.Parameter(torch.tensor(math.log(INITIAL_TEMPERATURE)))
        self.missing_embeddings = nn.Parameter(torch.empty(2, hidden))   # 0: EHR, 1: note
        self.modality_types = nn.Parameter(torch.empty(2, hidden))
        for parameter in (self.missing_embeddings, self.modality_types):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.fusion = nn.ModuleList(TransformerLayer(hidden, config.fusion_heads, config.dropout)
                                    for _ in range(FUSION_LAYERS))
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), Dropout(config.dropout),
                                  nn.Linear(hidden, num_labels))

    def similarity(self, embeddings: list[torch.Tensor], present: list[torch.Tensor]):
        """-> (similarity B×B averaged over shared modalities, shared B×B bool)."""
        total = torch.zeros(embeddings[0].shape[0], embeddings[0].shape[0],
                            device=embeddings[0].device, dtype=embeddings[0].dtype)
        shared_count = torch.zeros_like(total)
        for projection, values, has in zip(self.similarity_maps, embeddings, present):
            unit = functional.normalize(projection(values), dim=-1)
            both = (has[:, None] & has[None, :]).to(total.dtype)
            total = total + (unit @ unit.T) * both
            shared_count = shared_count + both
        return total / shared_count.clamp(min=1.0), shared_count > 0

    def forward(self, batch: dict) -> BackboneOutput:
        encoded = self.encode(batch)
        embeddings = [encoded.ehr_pooled, encoded.note_pooled]
        present = [encoded.has_series, encoded.has_note]
        similarity, shared = self.similarity(embeddings, present)
        similarity = similarity / self.log_temperature.exp()
        completed = []
        for index, (values, has) in enumerate(zip(embeddings, present)):
            candidates = shared & has[None, :]   # j has m; i itself never qualifies (it lacks m)
            imputed, _ = impute_from_neighbours(values, similarity, candidates, self.missing_embeddings[index])
            completed.append(torch.where(has[:, None], values, imputed) + self.modality_types[index])
        tokens = torch.stack(completed, dim=1)                             # B×2×H
        for layer in self.fusion:
            tokens = layer(tokens)
        logits = self.head(tokens.flatten(1))
        ehr_embedding, note_embedding = self.contrastive_embeddings(encoded)
        return BackboneOutput(logits=logits, ehr_embedding=ehr_embedding, note_embedding=note_embedding)
