"""One dataclass holding a trial's whole configuration (METHOD §6–§7, §2, §11).

Every field has the paper's default (Appendix A.5) unless the comment says *(resolved)*.
Every bool/int/float field is checked at construction (`TrialConfig.__post_init__`): its type,
finiteness (no NaN, no ±inf) and its documented range in `FIELD_RANGES`; cross-field rules and
choices are checked by `TrialConfig.validate()`. A new numeric field needs one `FIELD_RANGES`
entry (a test checks the table covers every numeric field).
`TrialConfig.to_flat_dict()` is what lands, prefixed with ``config/``, in every row of
``results.parquet``; `TrialConfig.from_dict()` accepts that dict back (unknown keys are an
error naming the key, wrong types are coerced or rejected with the field name).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from miracl_grid.data.noise import NOISE_MODELS, RATE_RANGE
from miracl_grid.trainables.registry import DEFAULT_BACKBONE, METHODS

PAPER_SEEDS: tuple[int, ...] = (30, 40, 100)     # the paper's seed set (METHOD §7); a run-level setting
DIFFICULTY_FORMS = ("durations", "events")
SELECTION_PASSES = ("train", "eval")
SAMPLERS = ("random", "patient")
SELECTION_SIGNALS = ("rank_difficulty", "loss")
RANK_ORIENTATIONS = ("class_aware", "reference")


class ConfigError(ValueError):
    """A trial configuration that cannot run; the message names the field."""


# Range of every numeric field: "[NOUN ]INTERVAL", interval ends closed "[ ]" or open "( )", "inf"
# for unbounded; NOUN (default "number"/"integer") words the error message.
SEED_RANGE = "[0, 4294967295]"          # numpy / scikit-learn seeds
FIELD_RANGES: dict[str, str] = {
    "seed": SEED_RANGE, "noise_seed": SEED_RANGE, "gmm_seed": SEED_RANGE,
    "rho_pos": RATE_RANGE, "rho_neg": RATE_RANGE,
    "epochs": "[1, inf)", "batch_size": "[1, inf)", "learning_rate": "(0, inf)", "weight_decay": "[0, inf)",
    "corrected_weight_decay": "[0, inf)", "cosine_t_max": "[1, inf)", "cosine_eta_min": "[0, inf)",
    "warmup_epochs": "[0, inf)", "lambda_cons": "[0, inf)", "alpha": "weight [0, 1]", "tau": "[0, inf)",
    "temperature": "(0, inf)", "gmm_min_group": "[2, inf)", "gmm_iterations": "[1, inf)",
    "beta_end": "weight [0, 1]",
    "hidden_size": "[1, inf)", "lstm_layers": "[1, inf)", "fusion_layers": "[1, inf)", "fusion_heads": "[1, inf)",
    "num_experts": "[1, inf)", "top_k_experts": "[1, inf)", "dropout": "probability [0, 1)",
    "moe_loss_weight": "[0, inf)", "orthogonality_loss_weight": "[0, inf)",
    "focal_gamma": "[0, inf)", "focal_alpha": "weight [0, 1]", "asl_gamma_neg": "[0, inf)",
    "asl_gamma_pos": "[0, inf)", "asl_clip": "probability [0, 1)", "gce_q": "(0, 1]",
    "mllsc_tau_pos": "probability [0, 1]", "mllsc_tau_neg": "probability [0, 1]", "mllsc_margin": "[0, inf)",
    "mllsc_gamma": "[0, inf)", "cbmlc_lambda": "[0, inf)",
    "max_series_bins": "[1, inf)", "max_note_tokens": "[1, inf)", "artifact_groups": "[0, inf)",
}


class FieldRange(NamedTuple):
    """A parsed `FIELD_RANGES` entry."""

    noun: str | None
    low: float
    high: float
    closed_low: bool
    closed_high: bool
    interval: str

    @classmethod
    def parse(cls, spec: str) -> "FieldRange":
        match = re.fullmatch(r"(?:(\w+) )?([\[(])\s*([^,]+),\s*([^\])]+)([\])])", spec)
        if match is None:
            raise ValueError(f"range {spec!r}: expected '[NOUN ](low, high)' with [ ] or ( ) ends")
        noun, left, low, high, right = match.groups()
        return cls(noun, float(low), float(high), left == "[", right == "]", spec[len(noun or "") :].strip())

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.closed_low else value > self.low
        below = value <= self.high if self.closed_high else value < self.high
        return math.isfinite(value) and above and below

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a finite number"
        if self.noun is not None or self.high != math.inf:
            return f"{f'a {self.noun}' if self.noun else kind} in {self.interval}"
        return f"{kind} {'>=' if self.closed_low else '>'} {self.low:g}"


_RANGES = {name: FieldRange.parse(spec) for name, spec in FIELD_RANGES.items()}


def _checked_field(name: str, value: Any, kind: str) -> Any:
    """``value`` of a bool/int/float field, type-normalised; ConfigError naming the field if it cannot run."""
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ConfigError(f"config field '{name}' = {value!r}: expected true or false")
    integer = kind == "int"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise ConfigError(f"config field '{name}' = {value!r}: expected {'an integer' if integer else 'a number'}")
    value = int(value) if integer else float(value)
    bound = _RANGES.get(name)
    if not math.isfinite(value) or (bound is not None and not bound.contains(value)):
        expected = bound.describe(integer) if bound is not None else "a finite number"
        raise ConfigError(f"config field '{name}' = {value!r}: expected {expected}")
    return value


@dataclass
class TrialConfig:
    # --- what is compared -------------------------------------------------------------
    method: str = "miracl"                 # a `miracl_grid.trainables.registry.METHODS` name: miracl, bce, asl, ...
    backbone: str = DEFAULT_BACKBONE       # registry name: flexcare, medfuse, m3care, cbmlc
    variant: str = "full"                  # the arm's row: a Table 4 ablation slug or a compared arm's label (informational)
    seed: int = 30                         # model init / data order seed
    # --- noise (METHOD §2) ---------------------------------------------------------------
    noise_model: str = "symmetric"
    rho_pos: float = 0.2                   # P(1 -> 0)
    rho_neg: float = 0.2                   # P(0 -> 1); for "balanced" it is derived from L_avg
    noise_seed: int | None = None          # None -> seed (all methods under one seed share noise)
    # --- optimisation (METHOD §7) --------------------------------------------------------
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    corrected_weight_decay: float = 1e-5   # Adam weight decay once correction starts (§6)
    cosine_t_max: int = 10
    cosine_eta_min: float = 0.0
    # --- MIRACL (METHOD §3–§6) -----------------------------------------------------------
    warmup_epochs: int = 5
    lambda_cons: float = 0.1
    alpha: float = 0.5
    tau: float = 0.02                      # correlated-negative threshold of Z^- (Eq. 6)
    temperature: float = 0.07              # contrastive temperature (Eq. 9)
    use_correction: bool = True            # Table 4 ablation switch
    selection_signal: str = "rank_difficulty"  # or "loss" ("w/ Loss only" row of Table 4)
    difficulty: str = "durations"          # (resolved) or "events" (paper-literal)
    selection_pass: str = "train"          # (resolved) statistics from the epoch's own forward passes; "eval": extra eval-mode pass
    rank_orientation: str = "class_aware"  # (resolved) R = L+1−r for observed negatives; "reference": r for both (public code)
    gmm_min_group: int = 10
    gmm_seed: int | None = None            # None -> seed; Table 9 varies it alone
    gmm_iterations: int = 100
    beta_end: float = 0.5                  # β_t falls linearly 1 -> beta_end (resolved)
    sampler: str = "random"                # (beyond the paper) or "patient"
    # --- backbone (METHOD §11) -----------------------------------------------------------
    hidden_size: int = 128
    lstm_layers: int = 2
    fusion_layers: int = 4
    fusion_heads: int = 2
    num_experts: int = 10
    top_k_experts: int = 2
    noisy_gating: bool = True              # Shazeer noisy top-k gating in training (off: deterministic gate)
    dropout: float = 0.1
    moe_loss_weight: float = 0.01
    orthogonality_loss_weight: float = 0.01
    # --- baseline loss hyperparameters (METHOD §11) --------------------------------------
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 1.0
    asl_clip: float = 0.05
    asl_detach_focusing: bool = False      # True: no gradient through the focusing weight (ASL authors' code)
    gce_q: float = 0.7
    mllsc_tau_pos: float = 0.55
    mllsc_tau_neg: float = 0.6
    mllsc_margin: float = 1.0
    mllsc_gamma: float = 2.0
    cbmlc_lambda: float = 0.01
    # --- data ----------------------------------------------------------------------------
    text_feature_key: str = ""             # "" -> the cohort's default text features
    max_series_bins: int = 512
    max_note_tokens: int = 512
    # --- bookkeeping ---------------------------------------------------------------------
    artifact_groups: int = 0               # store Z̃/GMM/partition for this many rarest labels
    deterministic: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form tags, flattened as extra.<k>

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        """Type, finiteness and `FIELD_RANGES` range of every bool/int/float field (None where optional)."""
        for item in dataclasses.fields(self):
            kind = str(item.type).replace(" | None", "")
            value = getattr(self, item.name)
            if kind in ("bool", "int", "float") and not (value is None and str(item.type).endswith("| None")):
                setattr(self, item.name, _checked_field(item.name, value, kind))

    @property
    def effective_noise_seed(self) -> int:
        return self.seed if self.noise_seed is None else self.noise_seed

    @property
    def effective_gmm_seed(self) -> int:
        return self.seed if self.gmm_seed is None else self.gmm_seed

    def validate(self, available_backbones: tuple[str, ...] | None = None) -> "TrialConfig":
        """Raise `ConfigError` naming the first field that cannot run.

        ``method`` must be a registered method (`miracl_grid.trainables.registry.METHODS`) on a
        backbone it runs on; ``available_backbones`` (the backbone modules) is checked when given.
        """
        def fail(name: str, expected: str) -> None:
            raise ConfigError(f"config field '{name}' = {getattr(self, name)!r}: expected {expected}")

        if self.method not in METHODS:
            fail("method", f"one of the registered methods {list(METHODS)}")
        if not METHODS[self.method].runs_on(self.backbone):
            fail("backbone", f"{' or '.join(METHODS[self.method].backbones)} (method {self.method!r} runs on "
                             "no other backbone)")
        if available_backbones is not None and self.backbone not in available_backbones:
            fail("backbone", f"one of {sorted(available_backbones)}")
        if self.noise_model not in NOISE_MODELS:
            fail("noise_model", f"one of {NOISE_MODELS}")
        if self.warmup_epochs >= self.epochs and self.use_correction and self.method == "miracl":
            fail("warmup_epochs", f"0 <= warmup_epochs < epochs ({self.epochs}) when correction is on")
        if self.top_k_experts > self.num_experts:
            fail("top_k_experts", f"1 <= k <= num_experts ({self.num_experts})")
        if self.hidden_size % self.fusion_heads:
            fail("hidden_size", f"a multiple of fusion_heads ({self.fusion_heads})")
        for name, allowed in (("difficulty", DIFFICULTY_FORMS), ("selection_pass", SELECTION_PASSES),
                              ("sampler", SAMPLERS), ("selection_signal", SELECTION_SIGNALS),
                              ("rank_orientation", RANK_ORIENTATIONS)):
            if getattr(self, name) not in allowed:
                fail(name, f"one of {allowed}")
        return self

    # ------------------------------------------------------------------------------------
    def to_flat_dict(self) -> dict[str, Any]:
        """Flat JSON-safe dict: dataclass fields plus ``extra.<key>`` entries."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        flat.update({f"extra.{k}": v for k, v in sorted(self.extra.items())})
        return flat

    def content_hash(self) -> str:
        """Stable 12-hex digest of the flat dict (changes when any field changes)."""
        blob = json.dumps(self.to_flat_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """Build from a (possibly flat, possibly string-valued) dict; unknown keys are errors."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            if key.startswith("extra."):
                extra[key[len("extra."):]] = value
                continue
            if key == "extra":
                extra.update(value or {})
                continue
            if key not in types:
                raise ConfigError(f"unknown config field '{key}' (known: {', '.join(sorted(types))})")
            kwargs[key] = _coerce(key, value, str(types[key]))
        return cls(**kwargs, extra=extra)

    def replace(self, **changes: Any) -> "TrialConfig":
        merged = self.to_flat_dict()
        merged.update(changes)
        merged.update({f"extra.{k}": v for k, v in self.extra.items()})
        return TrialConfig.from_dict(merged)


def _coerce(name: str, value: Any, type_name: str) -> Any:
    """Coerce CLI strings / numpy scalars to the field's declared type."""
    if value is None:
        if "None" in type_name:
            return None
        raise ConfigError(f"config field '{name}' may not be None")
    if isinstance(value, str) and value.lower() in ("none", "null") and "None" in type_name:
        return None
    try:
        if type_name.startswith("bool"):
            if isinstance(value, str):
                lowered = value.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, numbers.Number) and value in (0, 1):   # bool, numpy bool, 0/1
                return bool(value)
            raise ValueError(value)
        if type_name.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if type_name.startswith("float"):
            return float(value)
        if type_name.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}' = {value!r}: expected {type_name}") from None
    return value
