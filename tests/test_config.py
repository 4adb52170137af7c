"""TrialConfig construction checks: every numeric field finite and in its documented range (issue 11)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from miracl_grid.trainables.config import FIELD_RANGES, ConfigError, FieldRange, TrialConfig

FIELDS = {item.name: str(item.type) for item in dataclasses.fields(TrialConfig)}
NUMERIC = sorted(name for name, kind in FIELDS.items() if kind.replace(" | None", "") in ("int", "float"))
FLOATS = [name for name in NUMERIC if FIELDS[name] == "float"]
INTEGERS = [name for name in NUMERIC if FIELDS[name].startswith("int")]


def test_every_numeric_field_has_a_documented_range():
    """A new int/float field must add its FIELD_RANGES entry (and a stale entry names no field)."""
    assert sorted(FIELD_RANGES) == NUMERIC
    assert len(FLOATS) >= 25 and len(INTEGERS) >= 15


def test_the_defaults_lie_in_their_ranges():
    defaults = TrialConfig()
    for name in NUMERIC:
        value = getattr(defaults, name)
        assert value is None or FieldRange.parse(FIELD_RANGES[name]).contains(value), name


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused_for_every_float_field(name, value):
    with pytest.raises(ConfigError, match=f"config field '{name}' = {value!r}: expected "):
        TrialConfig(**{name: value})
    with pytest.raises(ConfigError, match=f"config field '{name}' = {value!r}: expected "):
        TrialConfig.from_dict({name: str(value)})          # as --set NAME=nan / a CLI flag gives it


@pytest.mark.parametrize("name", NUMERIC)
def test_the_range_ends_are_enforced_for_every_numeric_field(name):
    bound = FieldRange.parse(FIELD_RANGES[name])
    integer = name in INTEGERS
    step = 1 if integer else 1e-9
    below = bound.low if not bound.closed_low else bound.low - step
    with pytest.raises(ConfigError, match=f"config field '{name}'"):
        TrialConfig(**{name: int(below) if integer else below})
    if math.isfinite(bound.high):
        above = bound.high if not bound.closed_high else bound.high + step
        with pytest.raises(ConfigError, match=f"config field '{name}'"):
            TrialConfig(**{name: int(above) if integer else above})
    inside = bound.low if bound.closed_low else bound.low + step
    if name == "warmup_epochs":           # cross-field rule aside, the lowest value constructs
        assert TrialConfig(**{name: int(inside)}).warmup_epochs == 0
    else:
        assert getattr(TrialConfig(**{name: int(inside) if integer else inside}), name) == pytest.approx(inside)


def test_the_messages_name_the_field_value_and_range():
    cases = {"lambda_cons": (math.nan, "a finite number >= 0"), "temperature": (math.nan, "a finite number > 0"),
             "rho_pos": (1.0, "a rate in [0, 1)"), "alpha": (-0.5, "a weight in [0, 1]"),
             "epochs": (0, "an integer >= 1"), "gce_q": (0.0, "a finite number in (0, 1]"),
             "seed": (-1, "an integer in [0, 4294967295]")}
    for name, (value, expected) in cases.items():
        with pytest.raises(ConfigError) as caught:
            TrialConfig(**{name: value})
        assert str(caught.value) == f"config field '{name}' = {value!r}: expected {expected}"


def test_types_are_checked_and_normalised_at_construction():
    config = TrialConfig(lambda_cons=0, seed=np.int64(5), use_correction=np.bool_(False))
    assert isinstance(config.lambda_cons, float) and config.lambda_cons == 0.0
    assert type(config.seed) is int and config.use_correction is False
    # an int given for a float field hashes like the float (trial identity = config hash)
    assert TrialConfig(lambda_cons=0).content_hash() == TrialConfig(lambda_cons=0.0).content_hash()
    for name, value, expected in (("epochs", 2.5, "an integer"), ("epochs", True, "an integer"),
                                  ("learning_rate", "0.1", "a number"), ("use_correction", "no", "true or false"),
                                  ("use_correction", 1, "true or false")):
        with pytest.raises(ConfigError, match=f"config field '{name}' = .*: expected {expected}"):
            TrialConfig(**{name: value})


def test_from_dict_coerces_booleans_strictly():
    assert TrialConfig.from_dict({"use_correction": "off", "noisy_gating": 1}).use_correction is False
    for value in (math.nan, 2, 0.5):
        with pytest.raises(ConfigError, match="config field 'use_correction'"):
            TrialConfig.from_dict({"use_correction": value})


def test_optional_seeds_accept_none_and_check_a_value():
    assert TrialConfig(noise_seed=None, gmm_seed=None).effective_noise_seed == 30
    assert TrialConfig.from_dict({"gmm_seed": "none"}).gmm_seed is None
    with pytest.raises(ConfigError, match="config field 'gmm_seed' = -3"):
        TrialConfig(gmm_seed=-3)


def test_cross_field_rules_stay_in_validate():
    with pytest.raises(ConfigError, match="config field 'warmup_epochs' = 3: expected 0 <= warmup_epochs < epochs"):
        TrialConfig(epochs=3, warmup_epochs=3).validate()
    with pytest.raises(ConfigError, match="config field 'top_k_experts' = 5"):
        TrialConfig(num_experts=4, top_k_experts=5).validate()
    TrialConfig(epochs=3, warmup_epochs=3, method="bce").validate()   # no correction: no warm-up rule


@pytest.mark.parametrize("spec", ["0, 1", "[0 1]", "rate [0, 1", "[a, 1]"])
def test_a_malformed_range_entry_is_an_error(spec):
    with pytest.raises(ValueError):
        FieldRange.parse(spec)
