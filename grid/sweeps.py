"""Named sweeps: each expands to a list of validated trial configs (METHOD §12).

A *sweep* is a product of dimensions over `TrialConfig` fields:

    noise settings × arms (compared methods or ablation variants) × extra grid fields × seeds

plus, optionally, *baseline* arms run under every noise setting and seed but not across the
grid fields (the FlexCare reference of the λ_cons sweep: BCE has no λ_cons to sweep), and
`expand_sweep` turns it into ``list[Trial]``, each ``Trial(name, config)`` holding a short
deterministic name and the full flat `TrialConfig.to_flat_dict()` of a config that has already
passed `TrialConfig.validate()` — so a bad value fails before anything runs.

Precedence of values on one trial (later wins):
``TrialConfig defaults < preset < sweep definition (arm, noise, grid, seed) < --set overrides``.
A ``--set`` field with several values (``lambda_cons=0,0.1``) is a grid dimension: it replaces
the sweep's own dimension of that field, or multiplies the trial count when the sweep had none.

Noise settings (METHOD §2) are written ``model[:rates]``::

    symmetric:0.2,0.2   asymmetric:0,0.4   balanced:0.2   class_conditional:0.2
    single_positive     combined           none           (rates may also be written 20%)

``balanced`` takes ρ+ only; ρ− = ρ+·L_avg/(L − L_avg) is derived from the cohort's clean-train
L_avg through `miracl_grid.data.noise.balanced_rho_neg`.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from miracl_grid.data.noise import NOISE_MODELS, balanced_rho_neg, is_rate, percent_text
from miracl_grid.trainables.config import PAPER_SEEDS, ConfigError, TrialConfig
from miracl_grid.trainables.registry import METHODS, display_label

logger = logging.getLogger(__name__)

NOISE_FIELDS: tuple[str, ...] = ("noise_model", "rho_pos", "rho_neg")
# Short forms of grid fields inside trial names; other fields appear under their own name.
NAME_ABBREVIATIONS: dict[str, str] = {"lambda_cons": "lam", "gmm_seed": "gmm", "alpha": "alpha",
                                      "noise_seed": "noise"}


class SweepError(ConfigError):
    """A sweep request that cannot be expanded; the message names the bad token."""


# --------------------------------------------------------------------------------------------
# Noise settings (METHOD §2)
# --------------------------------------------------------------------------------------------
# Per noise model (`NOISE_MODELS`, `tests/test_sweeps.py` checks both cover every model): how many
# rates its CLI string takes, and its short form inside trial names.
_RATE_COUNTS: dict[str, tuple[int, ...]] = {
    "none": (0,), "single_positive": (0,), "combined": (0,),
    "symmetric": (1, 2), "asymmetric": (2,), "balanced": (1,), "class_conditional": (1,),
}
_SLUGS: dict[str, str] = {"none": "clean", "single_positive": "single", "combined": "combined",
                          "symmetric": "sym", "asymmetric": "asym", "balanced": "bal",
                          "class_conditional": "cc"}


@dataclass(frozen=True)
class NoiseSetting:
    """One label-noise setting: model and nominal rates ρ+ = P(1→0), ρ− = P(0→1).

    For ``balanced`` `rho_neg` is None until `resolve(l_avg, num_labels)` derives it.
    """
    model: str
    rho_pos: float = 0.0
    rho_neg: float | None = 0.0

    def __post_init__(self) -> None:
        if self.model not in NOISE_MODELS:
            raise SweepError(f"unknown noise model '{self.model}' (known: {', '.join(NOISE_MODELS)})")
        for name in ("rho_pos", "rho_neg"):
            value = getattr(self, name)
            if value is not None and not is_rate(value):
                raise SweepError(f"noise setting {self.model}: {name} = {value!r}: expected a rate in [0, 1)")

    @property
    def resolved(self) -> bool:
        return self.rho_neg is not None

    def resolve(self, l_avg: float, num_labels: int) -> "NoiseSetting":
        """Return a copy with ρ− derived for ``balanced`` (METHOD §2); other models unchanged."""
        if self.model != "balanced":
            return self
        return NoiseSetting(self.model, self.rho_pos,
                            float(balanced_rho_neg(self.rho_pos, l_avg, num_labels)))

    @property
    def slug(self) -> str:
        """Short form used inside trial names: 'sym20-20', 'asym0-40', 'bal20-4.48', 'cc20'."""
        prefix = _SLUGS[self.model]
        if self.model in ("symmetric", "asymmetric"):
            return f"{prefix}{percent_text(self.rho_pos)}-{percent_text(self.rho_neg)}"
        if self.model == "balanced":
            negative = "auto" if self.rho_neg is None else percent_text(self.rho_neg)
            return f"{prefix}{percent_text(self.rho_pos)}-{negative}"
        if self.model == "class_conditional":
            return f"{prefix}{percent_text(self.rho_pos)}"
        return prefix

    def trial_fields(self) -> dict[str, Any]:
        """The TrialConfig fields this setting fixes (``balanced`` must be resolved first)."""
        if self.rho_neg is None:
            raise SweepError(f"noise setting '{self.slug}': rho_neg not derived yet; call resolve(l_avg, num_labels)")
        return {"noise_model": self.model, "rho_pos": self.rho_pos, "rho_neg": self.rho_neg}


def _parse_rate(token: str, text: str) -> float:
    stripped = token.strip()
    try:
        value = float(stripped[:-1]) / 100.0 if stripped.endswith("%") else float(stripped)
    except ValueError:
        raise SweepError(f"noise setting '{text}': rate '{token}' is not a number "
                         "(expected e.g. 0.2 or 20%)") from None
    if not is_rate(value):
        raise SweepError(f"noise setting '{text}': rate '{token}' outside [0, 1) "
                         "(write fractions like 0.2 or percentages like 20%)")
    return value


def parse_noise_setting(text: str) -> NoiseSetting:
    """Parse one CLI noise string (module docstring) into a `NoiseSetting`.

    ``symmetric:0.2`` and ``symmetric:0.2,0.2`` are equal; ``class_conditional:ρ`` sets ρ+ = ρ
    (each positive moves to another class with prob. ∝ ρ) and ρ− = 0.
    """
    if not isinstance(text, str) or not text.strip():
        raise SweepError(f"noise setting {text!r}: expected 'model[:rates]' (e.g. symmetric:0.2,0.2)")
    model, _, rates_text = text.strip().partition(":")
    model = model.strip()
    if model not in _RATE_COUNTS:
        raise SweepError(f"noise setting '{text}': unknown noise model '{model}' "
                         f"(known: {', '.join(_RATE_COUNTS)})")
    rates = [_parse_rate(token, text) for token in rates_text.split(",")] if rates_text.strip() else []
    if len(rates) not in _RATE_COUNTS[model]:
        expected = " or ".join(str(count) for count in _RATE_COUNTS[model])
        raise SweepError(f"noise setting '{text}': model '{model}' takes {expected} rate(s), got {len(rates)}")
    if model == "symmetric":
        if len(rates) == 2 and rates[0] != rates[1]:
            raise SweepError(f"noise setting '{text}': symmetric needs rho_pos == rho_neg "
                             "(use asymmetric:ρ+,ρ− for different rates)")
        return NoiseSetting(model, rates[0], rates[0])
    if model == "asymmetric":
        if rates[0] == rates[1]:
            raise SweepError(f"noise setting '{text}': asymmetric needs rho_pos != rho_neg "
                             "(use symmetric:ρ for equal rates)")
        return NoiseSetting(model, rates[0], rates[1])
    if model == "balanced":
        return NoiseSetting(model, rates[0], None)
    if model == "class_conditional":
        return NoiseSetting(model, rates[0], 0.0)
    return NoiseSetting(model, 0.0, 0.0)


def parse_noise_settings(values: str | NoiseSetting | Iterable[str | NoiseSetting]) -> list[NoiseSetting]:
    """Several settings: a list of strings/NoiseSettings, or one string split on ';' or spaces."""
    if isinstance(values, NoiseSetting):
        return [values]
    if isinstance(values, str):
        values = [token for chunk in values.split(";") for token in chunk.split()]
    settings = [value if isinstance(value, NoiseSetting) else parse_noise_setting(value) for value in values]
    if not settings:
        raise SweepError("no noise settings given")
    return settings


# --------------------------------------------------------------------------------------------
# Arms: the rows being compared (METHOD §11 comparison set, Table 4 ablation variants)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One compared row of a sweep: a named set of TrialConfig fields (a method on a backbone,
    or an ablation variant of MIRACL) and its table label."""
    name: str
    label: str
    fields: Mapping[str, Any] = field(default_factory=dict)


def _method_arms() -> dict[str, Arm]:
    """Every registered method as arms (`miracl_grid.trainables.registry`): one per method, named by
    it and run on its default backbone, or, for a method with ``row_backbones`` (BCE), one per
    backbone named by the backbone (``flexcare``, ``medfuse``, ``m3care``). ``variant`` holds the
    table label."""
    arms: dict[str, Arm] = {}
    for record in METHODS.values():
        for name, backbone in ([(backbone, backbone) for backbone in record.row_backbones]
                               or [(record.name, record.default_backbone)]):
            label = display_label(record.name, backbone)
            arms[name] = Arm(name, label, {"method": record.name, "backbone": backbone, "variant": label})
    return arms


METHOD_ARMS: dict[str, Arm] = _method_arms()
# The paper's comparison set (Tables 2/3), in the order the main sweep expands it.
COMPARISON_ARMS: tuple[Arm, ...] = tuple(METHOD_ARMS[name] for name in (
    "flexcare", "focal", "asl", "gce", "mllsc", "multit", "medfuse", "m3care", "cbmlc", "miracl"))
_MIRACL = METHOD_ARMS["miracl"]

# Table 4 rows as config switches of the one MIRACL implementation (METHOD §3, §12).
ABLATION_VARIANTS: tuple[Arm, ...] = (
    Arm("baseline", "Baseline", {"method": "bce", "backbone": "flexcare", "variant": "baseline"}),
    Arm("con_reg", "+Con.Reg.", {"method": "miracl", "backbone": "flexcare", "variant": "con_reg",
                                 "use_correction": False, "lambda_cons": 0.1}),
    Arm("loss_only", "w/ Loss only", {"method": "miracl", "backbone": "flexcare", "variant": "loss_only",
                                      "selection_signal": "loss"}),
    Arm("difficulty_only", "w/ Difficulty only", {"method": "miracl", "backbone": "flexcare",
                                                  "variant": "difficulty_only", "alpha": 0.0}),
    Arm("rank_only", "w/ Rank only", {"method": "miracl", "backbone": "flexcare", "variant": "rank_only",
                                      "alpha": 1.0}),
    Arm("full", "MIRACL", {"method": "miracl", "backbone": "flexcare", "variant": "full"}),
)


# --------------------------------------------------------------------------------------------
# Sweep definitions (METHOD §12)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepDefinition:
    """A named grid. `grid` holds extra (field, values) dimensions beyond arms/noise/seeds.

    `seeds` None = the paper's seed set (or the preset's, see `expand_sweep`);
    `pin_noise_seed` writes noise_seed = seed explicitly (Table 9 keeps the noise fixed).
    `catalogue` is where `--arms` names are looked up first (then `METHOD_ARMS`: every registered
    method).
    `baselines` are arms run once per noise setting × seed with the sweep's own grid fields left
    at their preset/TrialConfig values (their trial names carry none of them); dimensions that
    ``--set`` adds apply to them too.
    """
    name: str
    description: str
    reference: str
    arms: tuple[Arm, ...]
    noise: tuple[str, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    seeds: tuple[int, ...] | None = None
    pin_noise_seed: bool = False
    catalogue: tuple[Arm, ...] = ()
    baselines: tuple[Arm, ...] = ()


_TABLE4_NOISE = ("asymmetric:0,0.2", "symmetric:0.2,0.2", "balanced:0.2")

SWEEPS: dict[str, SweepDefinition] = {sweep.name: sweep for sweep in (
    SweepDefinition(
        "main", "all compared methods under the eight noise settings of Tables 2/3",
        "Tables 2/3", COMPARISON_ARMS,
        ("symmetric:0.2,0.2", "symmetric:0.4,0.4", "asymmetric:0,0.2", "asymmetric:0,0.4",
         "asymmetric:0.2,0", "asymmetric:0.4,0", "balanced:0.2", "balanced:0.4")),
    SweepDefinition(
        "lambda_cons", "MIRACL, contrastive weight λ_cons under symmetric 20 % and 40 %, "
        "against FlexCare (BCE) on the same seeds and noisy labels",
        "Fig. 3", (_MIRACL,), ("symmetric:0.2,0.2", "symmetric:0.4,0.4"),
        grid=(("lambda_cons", (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)),), baselines=(METHOD_ARMS["flexcare"],)),
    SweepDefinition(
        "alpha", "MIRACL, rank/difficulty weight α under the Table 4 noise settings",
        "Eq. 2 / §12", (_MIRACL,), _TABLE4_NOISE,
        grid=(("alpha", (0.0, 0.25, 0.5, 0.75, 1.0)),)),
    SweepDefinition(
        "ablation", "Table 4 ablation variants (baseline, +Con.Reg., loss/difficulty/rank only, full)",
        "Table 4", ABLATION_VARIANTS, _TABLE4_NOISE, catalogue=ABLATION_VARIANTS),
    SweepDefinition(
        "stability", "MIRACL, symmetric 20 %, five GMM initialisation seeds, seed and noise fixed",
        "Table 9", (_MIRACL,), ("symmetric:0.2,0.2",),
        grid=(("gmm_seed", (0, 1, 2, 3, 4)),), seeds=(30,), pin_noise_seed=True),
)}


@dataclass(frozen=True)
class Trial:
    """One cell of a sweep: a short deterministic name and the full flat TrialConfig dict."""
    name: str
    config: dict[str, Any]


# --------------------------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------------------------
def _check_field_name(key: str, source: str) -> None:
    if key.startswith("extra.") and len(key) > len("extra."):
        return
    if key == "extra" or key not in TrialConfig.field_names():
        known = ", ".join(name for name in TrialConfig.field_names() if name != "extra")
        raise SweepError(f"{source}: unknown config field '{key}' (known: {known}, or extra.<key>)")


def parse_set_arguments(arguments: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``["epochs=5", "lambda_cons=0,0.1"]`` -> ``{"epochs": ("5",), "lambda_cons": ("0", "0.1")}``.

    Field names are checked against TrialConfig here; values are coerced (and range-checked)
    per trial by `expand_sweep`. A comma list is a grid dimension.
    """
    parsed: dict[str, tuple[str, ...]] = {}
    for argument in arguments:
        key, separator, value_text = argument.partition("=")
        key = key.strip()
        if not separator or not key:
            raise SweepError(f"--set '{argument}': expected key=value (e.g. epochs=5 or lambda_cons=0,0.1)")
        _check_field_name(key, f"--set '{argument}'")
        if key in parsed:
            raise SweepError(f"--set '{argument}': field '{key}' given twice (write one comma list)")
        values = tuple(token.strip() for token in value_text.split(","))
        if any(token == "" for token in values):
            raise SweepError(f"--set '{argument}': empty value for '{key}'")
        parsed[key] = values
    return parsed


def _as_names(values: str | Iterable[str]) -> list[str]:
    if isinstance(values, str):
        values = values.split(",")
    names = [str(value).strip() for value in values if str(value).strip()]
    return list(dict.fromkeys(names))


def _as_seeds(values: str | int | Iterable[int | str]) -> list[int]:
    if isinstance(values, int):
        return [values]
    if isinstance(values, str):
        values = [token for token in values.split(",") if token.strip()]
    seeds: list[int] = []
    for value in values:
        try:
            seeds.append(int(str(value).strip()))
        except ValueError:
            raise SweepError(f"seed '{value}': expected an integer") from None
    if not seeds:
        raise SweepError("no seeds given")
    return list(dict.fromkeys(seeds))


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _resolve_arms(sweep: SweepDefinition, arms: str | Iterable[str] | None) -> tuple[list[Arm], list[Arm]]:
    """(grid arms, baseline arms): the sweep's own, or the `arms` named (a name that is one of
    the sweep's baselines stays a baseline). Names are looked up in the sweep's catalogue, then
    in `COMPARISON_ARMS` and `METHOD_ARMS` (every registered method)."""
    if arms is None:
        return list(sweep.arms), list(sweep.baselines)
    names = _as_names(arms)
    if not names:
        raise SweepError("no arms given")
    catalogue: dict[str, Arm] = {}
    for arm in (*sweep.catalogue, *COMPARISON_ARMS, *METHOD_ARMS.values()):
        catalogue.setdefault(arm.name, arm)
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        raise SweepError(f"sweep '{sweep.name}': unknown arm(s) {', '.join(repr(n) for n in unknown)} "
                         f"(known: {', '.join(catalogue)})")
    baseline_names = {arm.name for arm in sweep.baselines}
    return ([catalogue[name] for name in names if name not in baseline_names],
            [catalogue[name] for name in names if name in baseline_names])


def _grid_values(key: str, values: Any) -> tuple[Any, ...]:
    if isinstance(values, (list, tuple)):
        if not values:
            raise SweepError(f"override '{key}': empty value list")
        return tuple(values)
    return (values,)


# --------------------------------------------------------------------------------------------
# Expansion
# --------------------------------------------------------------------------------------------
def get_sweep(name: str) -> SweepDefinition:
    """The `SWEEPS` entry called `name` (SweepError listing the known sweeps)."""
    if name not in SWEEPS:
        raise SweepError(f"unknown sweep '{name}' (known: {', '.join(SWEEPS)})")
    return SWEEPS[name]


def expand_sweep(name: str, *, l_avg: float, num_labels: int,
                 seeds: str | Iterable[int] | None = None,
                 noise: str | Iterable[str | NoiseSetting] | None = None,
                 arms: str | Iterable[str] | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 preset: Mapping[str, Any] | None = None,
                 preset_seeds: Iterable[int] | None = None) -> list[Trial]:
    """Expand sweep `name` into validated trials (METHOD §12).

    l_avg, num_labels: the cohort's clean-train mean positives per instance and L (balanced ρ−).
    seeds: replaces the seed list. preset_seeds: the preset's seed list, used instead of the
    paper's {30, 40, 100} by sweeps that use that set (not by `stability`); `seeds` wins.
    noise: replaces the noise settings (strings as in `parse_noise_setting` or NoiseSettings).
    arms: replaces the sweep's arms (`_resolve_arms`; e.g. 'miracl,asl,medfuse').
    overrides: field -> value, or a list/tuple of values (a grid dimension), e.g. the output of
    `parse_set_arguments`; applied last. preset: TrialConfig field defaults, applied first.
    Returns trials in a deterministic order (noise, arm, grid fields, seed), names unique.
    """
    sweep = get_sweep(name)
    preset = dict(preset or {})
    for key in preset:
        _check_field_name(key, "preset")
    overrides = dict(overrides or {})
    for key in overrides:
        _check_field_name(key, "override")

    arms, baselines = _resolve_arms(sweep, arms)
    settings = parse_noise_settings(sweep.noise if noise is None else noise)
    settings = list(dict.fromkeys(setting.resolve(l_avg, num_labels) for setting in settings))
    if seeds is not None:
        seed_list = _as_seeds(seeds)
    elif sweep.seeds is not None:
        seed_list = list(sweep.seeds)
    elif preset_seeds is not None:
        seed_list = _as_seeds(list(preset_seeds))
    else:
        seed_list = list(PAPER_SEEDS)

    # Grid dimensions: the sweep's own, then overrides (replace a same-named one, else append).
    grid: dict[str, tuple[Any, ...]] = {key: tuple(values) for key, values in sweep.grid}
    named_fields = list(grid)              # fields that appear in trial names
    single_overrides: dict[str, Any] = {}
    for key, values in overrides.items():
        values = _grid_values(key, values)
        if key == "seed":
            seed_list = _as_seeds(list(values))
        elif key in grid or len(values) > 1:
            grid[key] = values
            if key not in named_fields:
                named_fields.append(key)
        else:
            single_overrides[key] = values[0]
    overridden_arm_fields = sorted({key for arm in arms + baselines for key in arm.fields} & set(overrides))
    if overridden_arm_fields:
        logger.warning("sweep %s: --set %s overrides fields that distinguish the compared arms",
                       name, ", ".join(overridden_arm_fields))

    trials: list[Trial] = []
    seen_configs: dict[str, str] = {}
    names_seen: set[str] = set()
    grid_keys = list(grid)
    cells = [(setting, arm, tuple(zip(grid_keys, grid_values)), seed) for setting, arm, grid_values, seed
             in itertools.product(settings, arms, itertools.product(*(grid[key] for key in grid_keys)),
                                  seed_list)]
    # baselines: not across the sweep's own grid fields, but across dimensions --set added
    sweep_fields = {key for key, _ in sweep.grid}
    extra_keys = [key for key in grid_keys if key not in sweep_fields]
    cells += [(setting, arm, tuple(zip(extra_keys, extra_values)), seed) for setting, arm, extra_values, seed
              in itertools.product(settings, baselines, itertools.product(*(grid[key] for key in extra_keys)),
                                   seed_list)]
    for setting, arm, grid_items, seed in cells:
        values: dict[str, Any] = dict(preset)
        values.update(arm.fields)
        values.update(setting.trial_fields())
        values["seed"] = seed
        if sweep.pin_noise_seed:
            values["noise_seed"] = seed
        values.update(grid_items)
        values.update(single_overrides)
        shown = [key for key in named_fields if key in dict(grid_items)]
        raw_name = "_".join([arm.name, setting.slug]
                            + [f"{NAME_ABBREVIATIONS.get(key, key)}{_value_text(values[key])}"
                               for key in shown] + [f"s{seed}"])
        try:
            config = TrialConfig.from_dict(values)
            config.validate()
        except ConfigError as error:
            raise ConfigError(f"sweep '{name}', trial '{raw_name}': {error}") from None
        flat = config.to_flat_dict()
        # Names from coerced values ('0.10' and '0.1' are the same trial).
        trial_name = "_".join([arm.name, setting.slug]
                              + [f"{NAME_ABBREVIATIONS.get(key, key)}{_value_text(flat.get(key, values[key]))}"
                                 for key in shown] + [f"s{config.seed}"])
        digest = config.content_hash()
        if digest in seen_configs:
            logger.warning("sweep %s: trial %s duplicates %s (same config); dropped",
                           name, trial_name, seen_configs[digest])
            continue
        if trial_name in names_seen:
            trial_name = f"{trial_name}_{digest[:6]}"
        seen_configs[digest] = trial_name
        names_seen.add(trial_name)
        trials.append(Trial(trial_name, flat))
    return trials


# --------------------------------------------------------------------------------------------
# Text for --list and --dry-run
# --------------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [header, ["-" * width for width in widths], *rows]]
    return "\n".join(lines)


def describe_sweeps(l_avg: float, num_labels: int, *, preset: Mapping[str, Any] | None = None,
                    preset_seeds: Iterable[int] | None = None) -> str:
    """A table of the named sweeps: name, trial count, reference in the paper, description.

    The counts are those `expand_sweep` gives with the same `preset`/`preset_seeds` (a run's),
    so a preset with fewer seeds shows fewer trials.
    """
    rows = [[sweep.name, str(len(expand_sweep(sweep.name, l_avg=l_avg, num_labels=num_labels, preset=preset,
                                              preset_seeds=preset_seeds))),
             sweep.reference, sweep.description] for sweep in SWEEPS.values()]
    return _table(["sweep", "trials", "paper", "description"], rows)


def format_trials(trials: Sequence[Trial]) -> str:
    """A table of the trials with the config fields whose value varies across them."""
    if not trials:
        return "(no trials)"
    keys = list(trials[0].config)
    for trial in trials[1:]:
        keys.extend(key for key in trial.config if key not in keys)
    varying = [key for key in keys
               if len({repr(trial.config.get(key)) for trial in trials}) > 1]
    rows = [[trial.name] + [_value_text(trial.config.get(key)) for key in varying] for trial in trials]
    return _table(["trial"] + varying, rows) + f"\n{len(trials)} trials"
