"""Run presets: named TrialConfig defaults plus run-level settings (METHOD §7).

A preset has two halves, kept apart on purpose:

- *trial defaults* (`preset_trial_defaults`): TrialConfig fields, applied to every trial before
  the sweep's own values and before ``--set`` (TrialConfig defaults < preset < sweep < --set);
- *runtime* (`preset_runtime`): settings that are not TrialConfig fields — the seed list and the
  size of the embedded synthetic cohort generated when no ``--data`` is given.

``paper`` is METHOD §7 exactly. ``quick`` is a laptop-sized run of the same pipeline (small
backbone, short series/notes, few epochs, small cohort); its numbers are provisional and are
tuned here, in this one place, after timing it.
"""
from __future__ import annotations

import copy
from typing import Any

from trainables.config import ConfigError, TrialConfig

PAPER_EPOCHS = 30
PAPER_COSINE_T_MAX = 10        # CosineAnnealingLR(T_max=10) over 30 epochs (METHOD §7)


def scaled_cosine_t_max(epochs: int) -> int:
    """Keep the paper's T_max/epochs ratio (10/30) for a shorter run: 6 epochs -> 2 (>= 1)."""
    return max(1, round(PAPER_COSINE_T_MAX * epochs / PAPER_EPOCHS))


_QUICK_EPOCHS = 8

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "trial": {
            "epochs": PAPER_EPOCHS, "batch_size": 128, "learning_rate": 1e-3,
            "cosine_t_max": PAPER_COSINE_T_MAX, "warmup_epochs": 5,
            "lambda_cons": 0.1, "alpha": 0.5, "tau": 0.02,
            "hidden_size": 128, "fusion_layers": 4, "num_experts": 10,
            "max_series_bins": 512, "max_note_tokens": 512,
        },
        "runtime": {
            "seeds": (30, 40, 100),
            # Embedded default cohort when no --data is given (data.synthetic parameters).
            "synthetic_cohort": {"num_patients": 5000, "max_hours": 48},
        },
    },
    "quick": {
        "trial": {
            "epochs": _QUICK_EPOCHS, "warmup_epochs": 3, "batch_size": 32,
            "cosine_t_max": scaled_cosine_t_max(_QUICK_EPOCHS),
            "hidden_size": 64, "fusion_layers": 2, "num_experts": 4,
            "max_note_tokens": 64, "max_series_bins": 48,
        },
        "runtime": {
            "seeds": (30, 40),
            "synthetic_cohort": {"num_patients": 700, "max_hours": 24},
        },
    },
}


def _preset(name: str) -> dict[str, dict[str, Any]]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def preset_trial_defaults(name: str) -> dict[str, Any]:
    """TrialConfig field defaults of preset `name` (a fresh copy; validated field names)."""
    trial = copy.deepcopy(_preset(name)["trial"])
    TrialConfig.from_dict(trial)      # unknown field -> ConfigError naming it
    return trial


def preset_runtime(name: str) -> dict[str, Any]:
    """Run-level settings of preset `name`: ``seeds`` (tuple of int), ``synthetic_cohort``
    (dict of generator parameters), and ``cosine_t_max`` (informational: the value the preset's
    trial defaults use, scaled to its epoch count)."""
    preset = _preset(name)
    runtime = copy.deepcopy(preset["runtime"])
    runtime["cosine_t_max"] = preset["trial"]["cosine_t_max"]
    return runtime
