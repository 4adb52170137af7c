"""Methods: what the loop asks for the loss of a batch and lets update its state each epoch.

A method is built from the trial config and the *observed* (noisy) train labels only — it is
never handed the clean labels, so selection and correction cannot read them; the loop
computes the correction diagnostics outside (METHOD §1, §8).

Interface used by `miracl_grid.trainables.loop`:
    configure_epoch(epoch, optimizer)                  before an epoch (e.g. weight decay switch, §6)
    batch_loss(output, batch, positions, epoch) -> LossTerms
        ``local``: means over this rank's pairs (the loop scales them for DDP),
        ``global_``: terms already scaled so DDP's average is the global-batch gradient (Eq. 9)
    end_epoch(epoch, statistics) -> EpochOutcome       after statistics are gathered on all ranks
    state_dict() / load_state_dict()                   resumable state (corrected labels, estimates)

Which class trains which method is the registry's (`miracl_grid.trainables.registry.METHODS`):
a record's ``trainer``, or `PairLossMethod` for a plain pair loss. Ablation rows of Table 4 are
config switches of `miracl` (`use_correction`, `alpha`, `selection_signal`, `lambda_cons`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from miracl_grid.trainables import losses
from miracl_grid.trainables.backbones.base import BackboneOutput
from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.contrastive import patient_contrastive_loss
from miracl_grid.trainables.correction import correct_labels
from miracl_grid.trainables.gmm import fit_group_mixtures
from miracl_grid.trainables.registry import METHODS
from miracl_grid.trainables.schedule import beta, correction_active, first_corrected_epoch, selection_due, set_weight_decay
from miracl_grid.trainables.selection import group_class, group_label, selection_components, selection_metric
from miracl_grid.trainables.statistics import PairStatistics

logger = logging.getLogger(__name__)

GatherFunction = Callable[[torch.Tensor], "list[torch.Tensor]"]


@dataclass
class LossTerms:
    local: dict[str, torch.Tensor] = field(default_factory=dict)
    global_: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class EpochOutcome:
    """What a method tells the loop after an epoch.

    corrected   N×L soft labels used from the next epoch on (None: no correction active)
    partition   N×L int8 (0 clean, 1 uncertain, 2 noisy) or None
    z_tilde     N×L float64 selection metric Z̃ (Eq. 2) the partition was fitted on, or None
    negative_candidates  N×L bool, observed negatives inside Z⁻ (Eq. 6), or None
    diagnostics scalar values reported under ``correction/``
    artifact    arrays for the selection artifact (.npz) or None
    """

    corrected: torch.Tensor | None = None
    partition: torch.Tensor | None = None
    z_tilde: torch.Tensor | None = None
    negative_candidates: torch.Tensor | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    artifact: dict[str, np.ndarray] | None = None


class Method:
    """Base: a plain supervised loss on the observed labels plus the backbone's auxiliary terms."""

    name = "base"

    def __init__(self, config: TrialConfig, observed: torch.Tensor, gather: GatherFunction | None = None):
        self.config = config
        self.observed = observed          # N×L float in {0,1}: the noisy train labels
        self.gather = gather

    def configure_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        pass

    def supervised_loss(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def batch_loss(self, output: BackboneOutput, batch: dict, positions: torch.Tensor, epoch: int) -> LossTerms:
        terms = LossTerms(local={"supervised": self.supervised_loss(output.logits, self.observed[positions], epoch)})
        terms.local.update(output.auxiliary_losses)
        return terms

    def end_epoch(self, epoch: int, statistics: PairStatistics) -> EpochOutcome:
        return EpochOutcome()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MultiTMethod(Method):
    """MultiT: BCE during warm-up, then forward correction with per-label 2×2 transitions
    estimated once from the warm-up statistics (`losses.MultiTransition`)."""

    name = "multit"

    def __init__(self, config, observed, gather=None):
        super().__init__(config, observed, gather)
        self.matrices: torch.Tensor | None = None

    def supervised_loss(self, logits, targets, epoch):
        if self.matrices is None:
            return losses.binary_cross_entropy(logits, targets)
        return losses.forward_corrected_bce(logits, targets, self.matrices.to(logits.device))

    def end_epoch(self, epoch, statistics):
        if self.matrices is None and selection_due(epoch, self.config.warmup_epochs):
            estimate = losses.MultiTransition.estimate(statistics.probabilities, self.observed)
            self.matrices = torch.as_tensor(estimate.matrices, dtype=torch.float32)
            rates = self.matrices
            return EpochOutcome(diagnostics={"multit_mean_rho_pos": float(rates[:, 1, 0].mean()),
                                             "multit_mean_rho_neg": float(rates[:, 0, 1].mean())})
        return EpochOutcome()

    def state_dict(self):
        return {"matrices": self.matrices}

    def load_state_dict(self, state):
        self.matrices = state.get("matrices")


class MiraclMethod(Method):
    """MIRACL (METHOD §3–§6): contrastive regularisation from epoch 1; after warm-up, class-wise
    GMM selection on Z̃ (Eq. 1–3) and joint label correction (Eqs. 4–8), trained with
    β_t·BCE(ỹ_corr) + (1−β_t)·BCE(ỹ) + λ_cons·L_cons (Appendix A.4)."""

    name = "miracl"

    def __init__(self, config, observed, gather=None):
        super().__init__(config, observed, gather)
        self.corrected: torch.Tensor | None = None

    def configure_epoch(self, epoch, optimizer):
        config = self.config
        if config.use_correction and epoch == first_corrected_epoch(config.warmup_epochs):
            set_weight_decay(optimizer, config.corrected_weight_decay)

    def batch_loss(self, output, batch, positions, epoch):
        observed = self.observed[positions]
        terms = LossTerms()
        config = self.config
        if self.corrected is not None and correction_active(epoch, config.warmup_epochs, config.use_correction):
            weight = beta(epoch, config.warmup_epochs, config.epochs, config.beta_end)
            terms.local["bce_corrected"] = weight * losses.binary_cross_entropy(output.logits, self.corrected[positions])
            terms.local["bce_observed"] = (1 - weight) * losses.binary_cross_entropy(output.logits, observed)
        else:
            terms.local["bce_observed"] = losses.binary_cross_entropy(output.logits, observed)
        terms.local.update(output.auxiliary_losses)
        if self.config.lambda_cons > 0:
            terms.global_["contrastive"] = self.config.lambda_cons * patient_contrastive_loss(
                output.ehr_embedding, output.note_embedding, batch["has_series"], batch["has_note"],
                batch["patient"], temperature=self.config.temperature, gather=self.gather)
        return terms

    def end_epoch(self, epoch, statistics):
        if not selection_due(epoch, self.config.warmup_epochs, self.config.use_correction):
            return EpochOutcome()
        config = self.config
        probabilities = statistics.probabilities
        difficulty = (statistics.difficulty(config.difficulty)
                      if config.selection_signal == "rank_difficulty" else None)
        selection = selection_metric(probabilities, self.observed, difficulty=difficulty, alpha=config.alpha,
                                     signal=config.selection_signal, bce=statistics.bce,
                                     rank_orientation=config.rank_orientation)
        num_groups = 2 * self.observed.shape[1]
        mixtures = fit_group_mixtures(selection.z_tilde, selection.group_id, num_groups,
                                      min_group=config.gmm_min_group, seed=config.effective_gmm_seed,
                                      max_iterations=config.gmm_iterations)
        mean_clean, mean_noisy = mixtures.pair_means(selection.group_id)
        result = correct_labels(observed=self.observed, probabilities=probabilities, z_tilde=selection.z_tilde,
                                partition=mixtures.partition, mean_clean=mean_clean, mean_noisy=mean_noisy,
                                tau=config.tau)
        self.corrected = result.corrected
        diagnostics = {"gmm_fallback_groups": int(mixtures.fallback.sum()),
                       "negative_candidates": int(result.negative_candidates.sum())}
        return EpochOutcome(corrected=self.corrected, partition=mixtures.partition, z_tilde=selection.z_tilde,
                            negative_candidates=result.negative_candidates, diagnostics=diagnostics,
                            artifact=self._artifact(selection, mixtures, statistics, difficulty))

    def _artifact(self, selection, mixtures, statistics, difficulty) -> dict[str, np.ndarray] | None:
        """Arrays of the selection artifact (`miracl_grid.trainables.selection_artifact`) for the
        `artifact_groups` rarest labels, both observed classes: Z̃, its normalised components, the
        GMM parameters and partition, plus ``pair_index`` (P,), each pair's flat index into N×L
        (the loop adds the true flips from it and drops it)."""
        count = self.config.artifact_groups
        if count <= 0:
            return None
        num_labels = self.observed.shape[1]
        rarest = torch.argsort(self.observed.sum(0), stable=True)[:count]
        groups = torch.stack([2 * rarest, 2 * rarest + 1], dim=1).reshape(-1)   # (label, class) ids
        group_id = selection.group_id.reshape(-1)
        z = selection.z_tilde.reshape(-1)
        partition = mixtures.partition.reshape(-1)
        pieces = [torch.nonzero(group_id == g).squeeze(1) for g in groups.tolist()]  # ≤ 2·count groups
        offsets = np.cumsum([0] + [len(p) for p in pieces])
        every = torch.cat(pieces)
        parameters = mixtures.as_numpy()
        if difficulty is None:
            difficulty = statistics.difficulty(self.config.difficulty)
        components = selection_components(statistics.probabilities, self.observed, difficulty=difficulty,
                                          bce=statistics.bce, rank_orientation=self.config.rank_orientation)
        return {"label_index": group_label(groups).cpu().numpy(), "observed_class": group_class(groups).cpu().numpy(),
                "z_values": z[every].cpu().numpy(), "z_offsets": offsets,
                "partition": partition[every].cpu().numpy().astype(np.int8),
                "means": parameters["means"][groups.cpu().numpy()],
                "variances": parameters["variances"][groups.cpu().numpy()],
                "weights": parameters["weights"][groups.cpu().numpy()],
                "num_labels": np.array(num_labels),
                **{f"{name}_values": values.reshape(-1)[every].cpu().numpy() for name, values in components.items()},
                "pair_index": every.cpu().numpy()}

    def state_dict(self):
        return {"corrected": self.corrected}

    def load_state_dict(self, state):
        self.corrected = state.get("corrected")


class PairLossMethod(Method):
    """A per-pair loss of METHOD §11 on the observed labels (BCE, Focal, ASL, GCE, CbMLC, ...): the
    registry record's ``loss`` with its ``loss_fields`` bound from the config (`losses.pair_loss_for`).
    CbMLC trains with ASL; its context regulariser is an auxiliary loss of its backbone."""

    def __init__(self, config, observed, gather=None):
        super().__init__(config, observed, gather)
        self.name = config.method
        self.loss = losses.pair_loss_for(config)

    def supervised_loss(self, logits, targets, epoch):
        return self.loss(logits, targets)


class MllscMethod(PairLossMethod):
    """MLLSC: its label correction starts after the first epoch, as in SPLC whose loss it builds on."""

    def supervised_loss(self, logits, targets, epoch):
        return self.loss(logits, targets, correction=epoch > 1)


def build_method(config: TrialConfig, *, observed: torch.Tensor, gather: GatherFunction | None = None) -> Method:
    """The `Method` the registry record of ``config.method`` names (`TrialConfig.validate`:
    ConfigError for an unknown method or a backbone it cannot run on)."""
    return METHODS[config.validate().method].trainer_class()(config, observed, gather)
