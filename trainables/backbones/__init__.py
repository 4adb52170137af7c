"""Backbone registry (METHOD §11): ``build_backbone(name, config, ...)`` -> nn.Module.

Every backbone's ``forward(batch)`` takes the batch dict of `miracl_grid.data.dataset.collate` and returns a
`miracl_grid.trainables.backbones.base.BackboneOutput` (logits B×L, ehr_embedding / note_embedding B×H,
already-weighted auxiliary_losses, optional unimodal_logits).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from miracl_grid.trainables.backbones.base import Backbone, BackboneOutput
from miracl_grid.trainables.backbones.cbmlc import CbMLCBackbone
from miracl_grid.trainables.backbones.flexcare import FlexCareBackbone
from miracl_grid.trainables.backbones.m3care import M3CareBackbone
from miracl_grid.trainables.backbones.medfuse import MedFuseBackbone
from miracl_grid.trainables.config import TrialConfig

logger = logging.getLogger(__name__)

BACKBONES: dict[str, type[Backbone]] = {
    "flexcare": FlexCareBackbone,
    "medfuse": MedFuseBackbone,
    "m3care": M3CareBackbone,
    "cbmlc": CbMLCBackbone,
}


def build_backbone(name: str, config: TrialConfig, *, num_labels: int, series_channels: int, note_dim: int,
                   label_name_embeddings: torch.Tensor | None = None) -> nn.Module:
    """Instantiate the registered backbone ``name`` (ValueError naming the known ones otherwise).

    ``label_name_embeddings`` (L×D, from the frozen text encoder) is required by ``cbmlc`` and
    ignored by the others.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: expected one of {sorted(BACKBONES)}")
    model = BACKBONES[name](config, num_labels=num_labels, series_channels=series_channels,
                            note_dim=note_dim, label_name_embeddings=label_name_embeddings)
    logger.debug("built backbone %s with %d parameters", name, sum(p.numel() for p in model.parameters()))
    return model


__all__ = ["BACKBONES", "Backbone", "BackboneOutput", "build_backbone"]
