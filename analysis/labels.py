"""Display labels and table order for noise settings and compared methods (METHOD §2, §11, §12).

A *noise setting* is the tuple ``(noise_model, rho_pos, rho_neg)`` of a trial's config, shown as
in the paper's tables: ``Sym. 20%``, ``Asym. (0,40)``, ``Bal. (20,4.48)``. A *method label* is
the display name derived from ``(method, backbone, variant)``: ``bce`` on the FlexCare backbone
is "FlexCare", ``bce`` on ``medfuse``/``m3care`` is "MedFuse"/"M3Care", and a Table 4 ablation
variant (``variant`` in `ABLATION_LABELS`) is shown under its ablation row name.

This module is pure Python (no pandas, numpy, torch or ray) so that any layer may use it.
"""
from __future__ import annotations

import math
from typing import Any

# Noise models in the order the paper's tables list them (unknown models sort last).
NOISE_MODEL_ORDER: tuple[str, ...] = ("none", "symmetric", "asymmetric", "balanced",
                                      "class_conditional", "single_positive", "combined")
_NOISE_SHORT: dict[str, str] = {"none": "Clean", "single_positive": "Single positive",
                                "combined": "Combined"}

# (method, backbone) -> display name. A method on the FlexCare backbone is named by its loss.
METHOD_NAMES: dict[str, str] = {"miracl": "MIRACL", "bce": "FlexCare", "focal": "Focal", "asl": "ASL",
                                "gce": "GCE", "mllsc": "MLLSC", "multit": "MultiT", "cbmlc": "CbMLC"}
BACKBONE_NAMES: dict[str, str] = {"flexcare": "FlexCare", "medfuse": "MedFuse", "m3care": "M3Care",
                                  "cbmlc": "CbMLC"}
DEFAULT_BACKBONE = "flexcare"

# Row order of Tables 2/3/10 (the paper's), then anything else alphabetically, MIRACL last.
METHOD_ORDER: tuple[str, ...] = ("ASL", "Focal", "GCE", "MLLSC", "MultiT", "MedFuse", "M3Care",
                                 "FlexCare", "CbMLC")
REFERENCE_METHOD = "MIRACL"

# Table 4 rows: `variant` slug -> row label, in the paper's order ("full" is MIRACL itself).
ABLATION_LABELS: dict[str, str] = {"baseline": "Baseline", "con_reg": "+Con.Reg.",
                                   "loss_only": "w/ Loss only", "difficulty_only": "w/ Difficulty only",
                                   "rank_only": "w/ Rank only", "full": "MIRACL"}
ABLATION_ORDER: tuple[str, ...] = tuple(ABLATION_LABELS.values())
_KNOWN_DISPLAY_NAMES = {name.lower() for name in (*METHOD_NAMES.values(), *BACKBONE_NAMES.values(),
                                                  *ABLATION_LABELS.values())}


def percent_text(rate: float) -> str:
    """A rate as the paper writes it in percent: 0.2 -> '20', 0.044798 -> '4.48'."""
    text = f"{round(float(rate) * 100.0, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


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
    otherwise the method's name (`METHOD_NAMES`), with ``bce`` on another backbone named by the
    backbone ('MedFuse', 'M3Care') and any other non-default backbone appended ('ASL/MedFuse').
    A variant that is neither empty, 'full', nor a known display name is appended in brackets
    ('MIRACL [my_variant]') so that differently configured arms never share a label.
    """
    variant_text = "" if _is_missing(variant) else str(variant)
    if variant_text in ABLATION_LABELS:
        return ABLATION_LABELS[variant_text]
    method_text = str(method)
    backbone_text = DEFAULT_BACKBONE if _is_missing(backbone) or backbone == "" else str(backbone)
    if method_text == "bce" and backbone_text != DEFAULT_BACKBONE:
        return BACKBONE_NAMES.get(backbone_text, backbone_text)
    name = METHOD_NAMES.get(method_text, method_text)
    if backbone_text not in (DEFAULT_BACKBONE, method_text):
        name = f"{name}/{BACKBONE_NAMES.get(backbone_text, backbone_text)}"
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
