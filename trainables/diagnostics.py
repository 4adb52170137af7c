"""Per-epoch mechanism diagnostics against the clean labels (METHOD §8, beyond Fig. 4).

Evaluation code: the training loop calls these *outside* the method with the clean train labels
and the flip mask, which no method ever sees. Every function works on the train split's N×L
pairs (or the epoch's batches) and returns plain ``{column: value}`` dicts that land in
results.parquet; empty denominators give NaN. Columns built from the clean labels go under
``correction/``; ``train/`` holds only what training itself sees (tests/test_leakage.py compares
those across cohorts whose clean labels differ).

- `memorisation_metrics` (``correction/fit_*``): share of flipped / clean pairs whose *observed* label
  the model fits, ``1[(p > 0.5) == ỹ]`` — the memorisation of label noise, for every method.
- `correction_error_metrics` (``correction/*``): Fig. 4 done against the right baseline — on
  flipped pairs, accuracy of the model's own prediction split by observed class (to set beside
  the corrected labels' accuracy), and the mean soft-label errors |ỹ_corr − y| and |ỹ − y|.
- `class_selection_metrics` (``correction/*_{pos,neg}``): per observed class c, the noisy set's
  precision against that class's flip rate (the chance line: a random set of the same size has
  precision = flip rate), its recall against the class's noisy share (the chance line for
  recall), the three set sizes, and the share of observed negatives inside Z⁻.
- `selection_signal_aucs` (``correction/auc_<signal>_{pos,neg}``): within each observed class,
  the ROC-AUC of each selection signal for telling flipped from clean pairs (larger signal =
  "more likely corrupted"; 0.5 = chance, below 0.5 = anti-informative).
- `same_patient_share` (``train/same_patient_share``): share of stays whose batch holds another
  stay of the same patient — how often Eq. 9's cross-visit positives exist at all.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from miracl_grid.trainables.gmm import CLEAN, NOISY, UNCERTAIN

CLASS_SUFFIXES = {1: "pos", 0: "neg"}          # observed class -> column suffix
SIGNALS = ("rank", "difficulty_durations", "difficulty_events", "bce", "z_tilde")


def _share(mask: torch.Tensor, within: torch.Tensor) -> float:
    total = int(within.sum())
    return float((mask & within).sum()) / total if total else math.nan


def memorisation_metrics(predictions: torch.Tensor, observed: torch.Tensor,
                         flip_mask: torch.Tensor) -> dict[str, float]:
    """``correction/fit_flipped``, ``correction/fit_clean``: share of flipped / not-flipped pairs with
    (p > 0.5) == ỹ. predictions, observed, flip_mask: N×L."""
    fits = (predictions > 0.5) == (observed > 0.5)
    flipped = flip_mask.bool()
    return {"correction/fit_flipped": _share(fits, flipped), "correction/fit_clean": _share(fits, ~flipped)}


def correction_error_metrics(corrected: torch.Tensor | None, observed: torch.Tensor, clean: torch.Tensor,
                             flip_mask: torch.Tensor, predictions: torch.Tensor) -> dict[str, float]:
    """Prediction accuracy on flipped pairs by observed class, and mean soft-label errors. N×L each.

    ``correction/prediction_accuracy_noisy_{positive,negative}``: (p > 0.5) == y on flipped pairs
    observed positive / negative (compare ``correction/accuracy_noisy_{positive,negative}`` of
    the corrected labels). ``correction/soft_error_observed`` = mean |ỹ − y| (the realised flip
    share); ``correction/soft_error_corrected`` = mean |ỹ_corr − y| over all pairs, and its
    ``_flipped`` / ``_clean`` parts (NaN without correction).
    """
    flipped = flip_mask.bool()
    observed_positive = observed > 0.5
    truth = clean > 0.5
    agree = (predictions > 0.5) == truth
    metrics = {"correction/prediction_accuracy_noisy_positive": _share(agree, flipped & observed_positive),
               "correction/prediction_accuracy_noisy_negative": _share(agree, flipped & ~observed_positive),
               "correction/soft_error_observed": float((observed.double() - clean.double()).abs().mean()),
               "correction/soft_error_corrected": math.nan, "correction/soft_error_corrected_flipped": math.nan,
               "correction/soft_error_corrected_clean": math.nan}
    if corrected is not None:
        error = (corrected.double() - clean.double()).abs()
        metrics["correction/soft_error_corrected"] = float(error.mean())
        for name, mask in (("flipped", flipped), ("clean", ~flipped)):
            metrics[f"correction/soft_error_corrected_{name}"] = (float(error[mask].mean()) if mask.any()
                                                                  else math.nan)
    return metrics


def class_selection_metrics(partition: torch.Tensor | None, observed: torch.Tensor, flip_mask: torch.Tensor,
                            negative_candidates: torch.Tensor | None = None) -> dict[str, float]:
    """Per observed class c ∈ {pos, neg} (N×L inputs):

    ``correction/flip_rate_c``        |flipped ∩ c| / |c|  (chance precision of any noisy set)
    ``correction/noisy_share_c``      |noisy ∩ c| / |c|    (chance recall of a random set that size)
    ``correction/noisy_set_precision_c`` |noisy ∩ flipped ∩ c| / |noisy ∩ c|
    ``correction/noisy_set_recall_c``    |noisy ∩ flipped ∩ c| / |flipped ∩ c|
    ``correction/size_{clean,uncertain,noisy}_c``  pair counts
    ``correction/negatives_in_z_minus``  |Z⁻| / |observed negatives| (Eq. 6)

    The flip rates are always filled; the rest is NaN without a partition / Z⁻.
    """
    flipped = flip_mask.bool()
    positive = observed > 0.5
    metrics: dict[str, float] = {}
    for value, suffix in CLASS_SUFFIXES.items():
        within = positive if value == 1 else ~positive
        metrics[f"correction/flip_rate_{suffix}"] = _share(flipped, within)
        names = ("noisy_share", "noisy_set_precision", "noisy_set_recall", "size_clean", "size_uncertain",
                 "size_noisy")
        metrics.update({f"correction/{name}_{suffix}": math.nan for name in names})
        if partition is None:
            continue
        noisy = (partition == NOISY) & within
        metrics[f"correction/noisy_share_{suffix}"] = _share(noisy, within)
        metrics[f"correction/noisy_set_precision_{suffix}"] = _share(flipped, noisy)
        metrics[f"correction/noisy_set_recall_{suffix}"] = _share(noisy, flipped & within)
        for code, name in ((CLEAN, "clean"), (UNCERTAIN, "uncertain"), (NOISY, "noisy")):
            metrics[f"correction/size_{name}_{suffix}"] = int(((partition == code) & within).sum())
    metrics["correction/negatives_in_z_minus"] = (math.nan if negative_candidates is None
                                                  else _share(negative_candidates.bool(), ~positive))
    return metrics


def roc_auc(score: np.ndarray, target: np.ndarray) -> float:
    """ROC-AUC of `score` for the boolean `target` (Mann–Whitney U / (n₁n₀), ties count ½;
    equals sklearn's ``roc_auc_score``). NaN when one class is empty. 1-D arrays."""
    target = np.asarray(target, dtype=bool).reshape(-1)
    positives = int(target.sum())
    negatives = target.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(np.asarray(score, dtype=np.float64).reshape(-1))     # average ranks for ties
    return float((ranks[target].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def selection_signal_aucs(signals: Mapping[str, torch.Tensor | None], observed: torch.Tensor,
                          flip_mask: torch.Tensor) -> dict[str, float]:
    """``correction/auc_<signal>_{pos,neg}``: within observed class c, ROC-AUC of each N×L signal
    for flipped (positive) vs clean pairs, pooled over the labels. A None signal gives NaN."""
    flipped = flip_mask.bool().reshape(-1).cpu().numpy()
    positive = (observed > 0.5).reshape(-1).cpu().numpy()
    metrics = {}
    for name, signal in signals.items():
        values = None if signal is None else signal.detach().reshape(-1).double().cpu().numpy()
        for value, suffix in CLASS_SUFFIXES.items():
            within = positive == bool(value)
            metrics[f"correction/auc_{name}_{suffix}"] = (math.nan if values is None
                                                          else roc_auc(values[within], flipped[within]))
    return metrics


def same_patient_share(batches: Sequence[np.ndarray], patients: np.ndarray) -> float:
    """``train/same_patient_share``: share of the epoch's stays whose batch holds another stay of
    the same patient. batches: index arrays into `patients` (train positions); patients: (N,)."""
    if not batches:
        return math.nan
    members = np.concatenate([np.asarray(batch, dtype=np.int64) for batch in batches])
    batch_of = np.repeat(np.arange(len(batches)), [len(batch) for batch in batches])
    _, inverse, counts = np.unique(np.stack([batch_of, np.asarray(patients)[members]], axis=1), axis=0,
                                   return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean()) if members.size else math.nan
