"""Display labels and table order for noise settings and compared methods (METHOD §2, §11, §12).

A *noise setting* is the tuple ``(noise_model, rho_pos, rho_neg)`` of a trial's config, shown as
in the paper's tables: ``Sym. 20%``, ``Asym. (0,40)``, ``Bal. (20,4.48)``. A *method label* is
the display name derived from ``(method, backbone, variant)``: ``bce`` on the FlexCare backbone
is "FlexCare", ``bce`` on ``medfuse``/``m3care`` is "MedFuse"/"M3Care", and a Table 4 ablation
variant (``variant`` in `ABLATION_LABELS`) is shown under its ablation row name.

No torch, no ray: the method names and table order come from the method registry
(`miracl_grid.trainables.registry`), the noise models and the percent text of a rate from
`miracl_grid.data.noise`, the ablation rows from `miracl_grid.grid.sweeps`.
"""
from __future__ import annotations

import math
from typing import Any

from miracl_grid.data.noise import NOISE_MODELS, percent_text
from miracl_grid.grid.sweeps import ABLATION_VARIANTS
from miracl_grid.trainables.registry import METHODS, REFERENCE_METHOD as _REFERENCE, display_label, table_rows

# Noise models in the order the paper's tables list them (unknown models sort last).
NOISE_MODEL_ORDER: tuple[str, ...] = NOISE_MODELS
_NOISE_SHORT: dict[str, str] = {"none": "Clean", "single_positive": "Single positive",
                                "combined": "Combined"}

# Row order of Tables 2/3/10 (the method registry's table order), then anything else alphabetically,
# MIRACL (the reference) last.
METHOD_ORDER: tuple[str, ...] = table_rows()[:-1]
REFERENCE_METHOD = METHODS[_REFERENCE].label

# Table 4 rows: `variant` slug -> row label, in the paper's order ("full" is MIRACL itself);
# the ablation arms of `miracl_grid.grid.sweeps` own both.
ABLATION_LABELS: dict[str, str] = {arm.name: arm.label for arm in ABLATION_VARIANTS}
ABLATION_ORDER: tuple[str, ...] = tuple(ABLATION_LABELS.values())
_KNOWN_DISPLAY_NAMES = {name.lower() for name in (*table_rows(), *ABLATION_LABELS.values())}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def noise_setting_label(noise_model: str, rho_pos: float, rho_neg: float) -> str:
    """'Sym. 20%', 'Asym. (0,40)', 'Bal. (20,4.48)', 'Class-cond. 20%', 'Clean', ... (METHOD §2)."""
    model = str(noise_model)
    if model in _NOISE_SHORT:
        return _NOISE_SHORT[model]
    positive = "?" if _is_missing(rho_pos) else percent_text(rho_pos)
    negative = "?" if _is_missing(rho_neg) else percent_text(rho_neg)
    if model == "symmetric":
        return f"Sym. {positive}%" if positive == negative else f"Sym. ({positive},{negative})"
    if model == "asymmetric":
        return f"Asym. ({positive},{negative})"
    if model == "balanced":
        return f"Bal. ({positive},{negative})"
    if model == "class_conditional":
        return f"Class-cond. {positive}%"
    return f"{model} ({positive},{negative})"


def noise_setting_sort_key(noise_model: str, rho_pos: float, rho_neg: float) -> tuple:
    """Table column order: model as in `NOISE_MODEL_ORDER`, then ρ+, then ρ− (Tables 2/3)."""
    model = str(noise_model)
    rank = NOISE_MODEL_ORDER.index(model) if model in NOISE_MODEL_ORDER else len(NOISE_MODEL_ORDER)
    positive = math.inf if _is_missing(rho_pos) else float(rho_pos)
    negative = math.inf if _is_missing(rho_neg) else float(rho_neg)
    return (rank, model, positive, negative)


def method_label(method: str, backbone: str | None = None, variant: str | None = None) -> str:
    """Display name of a compared arm from ``(config/method, config/backbone, config/variant)``.

    An ablation variant slug (`ABLATION_LABELS`, e.g. 'rank_only') gives its Table 4 row name;
    otherwise the method registry's `display_label`: ``bce`` named by its backbone ('FlexCare',
    'MedFuse', 'M3Care'), another method's label with a non-default backbone appended ('ASL/MedFuse').
    A variant that is neither empty, 'full', nor a known display name is appended in brackets
    ('MIRACL [my_variant]') so that differently configured arms never share a label.
    """
    variant_text = "" if _is_missing(variant) else str(variant)
    if variant_text in ABLATION_LABELS:
        return ABLATION_LABELS[variant_text]
    name = display_label(str(method), None if _is_missing(backbone) or backbone == "" else str(backbone))
    if variant_text and variant_text != "full" and variant_text.lower() not in _KNOWN_DISPLAY_NAMES:
        name = f"{name} [{variant_text}]"
    return name


def method_sort_key(label: str) -> tuple:
    """Row order: `METHOD_ORDER`, then other labels alphabetically, then MIRACL (the reference)."""
    if label == REFERENCE_METHOD:
        return (2, 0, label)
    if label in METHOD_ORDER:
        return (0, METHOD_ORDER.index(label), label)
    return (1, 0, label)


def ablation_sort_key(label: str) -> tuple:
    """Row order of Table 4 (`ABLATION_ORDER`), other labels after it alphabetically."""
    if label in ABLATION_ORDER:
        return (0, ABLATION_ORDER.index(label), label)
    return (1, 0, label)
