"""The method registry: one record per method, read by the trainer, the grid and the analysis (METHOD §11).

A **method** is what `TrialConfig.method` names: how a trial turns the observed (noisy) labels
into a training loss — a per-pair loss of `miracl_grid.trainables.losses`, or a stateful
`miracl_grid.trainables.methods.Method` (MIRACL, MultiT). An **arm** is a grid word, not a
method: one compared row of a sweep, i.e. a method on a backbone with fixed switches
(`miracl_grid.grid.sweeps`; the arm ``flexcare`` is the method ``bce`` on the backbone
``flexcare``, the arm ``rank_only`` is ``miracl`` with α = 1).

Each `MethodRecord` holds everything about one method that more than one layer needs:

    name              the `TrialConfig.method` value (``--set method=NAME``, ``--method NAME``)
    label             its row name in the tables ("ASL"); see `display_label` for backbones
    default_backbone  the backbone its arm runs on unless a sweep says otherwise
    table_order       row position in Tables 2/3/10 (smaller first); the reference method
                      (`REFERENCE_METHOD`, MIRACL) is always the last row
    loss              "module:function" of its pair loss (signature of `losses`: ``loss(logits,
                      targets, *, <hyperparameters>, reduction="mean")``), or "" for a trainer
                      that computes its own loss
    loss_fields       loss keyword -> the `TrialConfig` field bound to it
    trainer           "module:Class" of its `Method`; "" = `methods.PairLossMethod` (the loss on
                      the observed labels plus the backbone's auxiliary terms)
    fields            the other `TrialConfig` fields it reads (its switches and schedule)
    backbones         the backbones it can run on (None: any backbone)
    row_backbones     for a plain loss compared as several backbones (BCE: MedFuse, M3Care,
                      FlexCare), those backbones in table order; each row is named by its backbone

Adding a method is one `register(MethodRecord(...))` call below plus its loss function
(README "Add a method"). This module is pure Python (no torch, no numpy), so
`miracl_grid.analysis` reads labels and table order without importing torch; the trainer
resolves ``loss`` and ``trainer`` lazily (`MethodRecord.loss_function`, `MethodRecord.trainer_class`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

DEFAULT_BACKBONE = "flexcare"          # TrialConfig.backbone's default (METHOD §11)
REFERENCE_METHOD = "miracl"            # the method every other row is compared with (Tables 2/3, 7/8)

# Backbone display names (METHOD §11); the modules are `miracl_grid.trainables.backbones.BACKBONES`.
BACKBONE_LABELS: dict[str, str] = {"flexcare": "FlexCare", "medfuse": "MedFuse", "m3care": "M3Care",
                                   "cbmlc": "CbMLC"}


class RegistryError(ValueError):
    """A method record that cannot be registered, or an unknown method name."""


def _resolve(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class MethodRecord:
    """One method (module docstring)."""

    name: str
    label: str
    table_order: float
    default_backbone: str = DEFAULT_BACKBONE
    loss: str = ""
    loss_fields: Mapping[str, str] = field(default_factory=dict)
    trainer: str = ""
    fields: tuple[str, ...] = ()
    backbones: tuple[str, ...] | None = None
    row_backbones: tuple[str, ...] = ()

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """Every `TrialConfig` field this method reads (loss keywords' fields, then `fields`)."""
        return tuple(dict.fromkeys((*self.loss_fields.values(), *self.fields)))

    def loss_function(self) -> Callable:
        """The pair loss ``loss`` names (imported on first use)."""
        if not self.loss:
            raise RegistryError(f"method {self.name!r} has no pair loss (its trainer {self.trainer!r} computes it)")
        return _resolve(self.loss)

    def trainer_class(self) -> type:
        """The `Method` subclass that trains it (`PairLossMethod` when ``trainer`` is empty)."""
        return _resolve(self.trainer or "miracl_grid.trainables.methods:PairLossMethod")

    def runs_on(self, backbone: str) -> bool:
        return self.backbones is None or backbone in self.backbones


METHODS: dict[str, MethodRecord] = {}


def register(record: MethodRecord) -> MethodRecord:
    """Add ``record`` to `METHODS` (RegistryError for a duplicate name or an incomplete record)."""
    if not record.name or record.name in METHODS:
        raise RegistryError(f"method {record.name!r}: empty or already registered")
    if not (record.loss or record.trainer):
        raise RegistryError(f"method {record.name!r}: give a pair loss ('module:function') or a trainer")
    if record.backbones is not None and record.default_backbone not in record.backbones:
        raise RegistryError(f"method {record.name!r}: default backbone {record.default_backbone!r} "
                            f"is not one of its backbones {record.backbones}")
    METHODS[record.name] = record
    return record


def method_record(name: str) -> MethodRecord:
    """The record of method ``name`` (RegistryError listing the known methods)."""
    if name not in METHODS:
        raise RegistryError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


def display_label(method: str, backbone: str | None = None) -> str:
    """Table row name of ``method`` on ``backbone`` (default: the method's default backbone).

    A method with `row_backbones` (BCE) is named by its backbone ('FlexCare', 'MedFuse');
    another method on a backbone other than its default gets the backbone appended
    ('ASL/MedFuse'); an unregistered method (an old results file) shows its own name.
    """
    record = METHODS.get(method)
    default = record.default_backbone if record else DEFAULT_BACKBONE
    backbone = backbone or default
    if record and record.row_backbones:
        return BACKBONE_LABELS.get(backbone, backbone)
    name = record.label if record else method
    if backbone not in (default, method):
        name = f"{name}/{BACKBONE_LABELS.get(backbone, backbone)}"
    return name


def table_rows() -> tuple[str, ...]:
    """Row labels in table order (`table_order`, each method's `row_backbones` in order), reference last."""
    rows: list[str] = []
    for record in sorted(METHODS.values(), key=lambda item: item.table_order):
        if record.name == REFERENCE_METHOD:
            continue
        rows.extend([display_label(record.name, backbone) for backbone in record.row_backbones]
                    or [record.label])
    return (*rows, METHODS[REFERENCE_METHOD].label)


_LOSSES = "miracl_grid.trainables.losses"
_METHODS = "miracl_grid.trainables.methods"

# The paper's methods (METHOD §11; hyperparameters: MIRACL Appendix A.5.2), in table order.
register(MethodRecord("asl", "ASL", 1, loss=f"{_LOSSES}:asymmetric_loss",
                      loss_fields={"gamma_negative": "asl_gamma_neg", "gamma_positive": "asl_gamma_pos",
                                   "clip": "asl_clip", "detach_focusing_weight": "asl_detach_focusing"}))
register(MethodRecord("focal", "Focal", 2, loss=f"{_LOSSES}:focal_loss",
                      loss_fields={"gamma": "focal_gamma", "alpha": "focal_alpha"}))
register(MethodRecord("gce", "GCE", 3, loss=f"{_LOSSES}:generalized_cross_entropy", loss_fields={"q": "gce_q"}))
register(MethodRecord("mllsc", "MLLSC", 4, loss=f"{_LOSSES}:mllsc_loss", trainer=f"{_METHODS}:MllscMethod",
                      loss_fields={"tau_positive": "mllsc_tau_pos", "tau_negative": "mllsc_tau_neg",
                                   "margin": "mllsc_margin", "gamma": "mllsc_gamma"}))
register(MethodRecord("multit", "MultiT", 5, trainer=f"{_METHODS}:MultiTMethod", fields=("warmup_epochs",)))
register(MethodRecord("bce", "BCE", 6, loss=f"{_LOSSES}:binary_cross_entropy",
                      row_backbones=("medfuse", "m3care", "flexcare")))
register(MethodRecord("cbmlc", "CbMLC", 7, default_backbone="cbmlc", backbones=("cbmlc",),
                      loss=f"{_LOSSES}:asymmetric_loss",
                      loss_fields={"gamma_negative": "asl_gamma_neg", "gamma_positive": "asl_gamma_pos",
                                   "clip": "asl_clip", "detach_focusing_weight": "asl_detach_focusing"},
                      fields=("cbmlc_lambda",)))
register(MethodRecord("miracl", "MIRACL", 8, trainer=f"{_METHODS}:MiraclMethod",
                      fields=("warmup_epochs", "lambda_cons", "alpha", "tau", "temperature", "use_correction",
                              "selection_signal", "difficulty", "selection_pass", "rank_orientation",
                              "gmm_min_group", "gmm_seed", "gmm_iterations", "beta_end",
                              "corrected_weight_decay", "artifact_groups")))

# Beyond the paper: the documented example of adding a method (README "Add a method") — this one
# record plus its loss function; it is no arm of the paper's sweeps (run it with --arms sce).
register(MethodRecord("sce", "SCE", 7.5, loss=f"{_LOSSES}:symmetric_cross_entropy"))
