"""Named sweeps (METHOD §12) and presets (METHOD §7): counts, CLI narrowing/widening, errors."""
from __future__ import annotations

import pytest

from miracl_grid.analysis.labels import noise_setting_label
from miracl_grid.grid.presets import PRESETS, preset_runtime, preset_trial_defaults
from miracl_grid.grid.sweeps import (COMPARISON_ARMS, SWEEPS, NoiseSetting, SweepError, Trial, describe_sweeps,
                         expand_sweep, format_trials, parse_noise_setting, parse_noise_settings,
                         parse_set_arguments)
from miracl_grid.trainables.config import ConfigError, TrialConfig

L_AVG = 4.575          # MIMIC-IV PHE (METHOD §10, Table 5)
NUM_LABELS = 25
# balanced ρ− = ρ+ · L_avg / (L − L_avg), by hand: 0.2 · 4.575 / 20.425
BALANCED_20 = 0.915 / 20.425     # = 0.044798...
BALANCED_40 = 1.830 / 20.425     # = 0.089596...


def expand(name, **kwargs):
    return expand_sweep(name, l_avg=L_AVG, num_labels=NUM_LABELS, **kwargs)


def noise_pairs(trials):
    return {(t.config["noise_model"], round(t.config["rho_pos"], 6), round(t.config["rho_neg"], 6))
            for t in trials}


# ------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("name, expected", [("main", 8 * 10 * 3), ("lambda_cons", 6 * 2 * 3 + 2 * 3),
                                            ("alpha", 5 * 3 * 3), ("ablation", 6 * 3 * 3),
                                            ("stability", 5)])
def test_trial_counts_match_the_paper_grids(name, expected):
    trials = expand(name)
    assert len(trials) == expected
    assert all(isinstance(trial, Trial) for trial in trials)


def test_balanced_rho_neg_is_derived_from_l_avg():
    assert BALANCED_20 == pytest.approx(0.0448, abs=1e-4)
    trials = expand("main")
    balanced = {t.config["rho_pos"]: t.config["rho_neg"] for t in trials if t.config["noise_model"] == "balanced"}
    assert set(balanced) == {0.2, 0.4}
    assert balanced[0.2] == pytest.approx(BALANCED_20, abs=1e-9)
    assert balanced[0.4] == pytest.approx(BALANCED_40, abs=1e-9)


def test_main_sweep_covers_eight_noise_settings_ten_methods_three_seeds():
    trials = expand("main")
    assert noise_pairs(trials) == {
        ("symmetric", 0.2, 0.2), ("symmetric", 0.4, 0.4), ("asymmetric", 0.0, 0.2),
        ("asymmetric", 0.0, 0.4), ("asymmetric", 0.2, 0.0), ("asymmetric", 0.4, 0.0),
        ("balanced", 0.2, round(BALANCED_20, 6)), ("balanced", 0.4, round(BALANCED_40, 6))}
    expected_methods = {("bce", "flexcare"), ("focal", "flexcare"), ("asl", "flexcare"), ("gce", "flexcare"),
                        ("mllsc", "flexcare"), ("multit", "flexcare"), ("bce", "medfuse"), ("bce", "m3care"),
                        ("cbmlc", "cbmlc"), ("miracl", "flexcare")}
    assert {(t.config["method"], t.config["backbone"]) for t in trials} == expected_methods
    assert {t.config["seed"] for t in trials} == {30, 40, 100}
    # every (noise, seed) cell has each method exactly once
    cells = {}
    for t in trials:
        key = (t.config["noise_model"], t.config["rho_pos"], t.config["rho_neg"], t.config["seed"])
        cells.setdefault(key, []).append((t.config["method"], t.config["backbone"]))
    assert len(cells) == 24
    assert all(sorted(v) == sorted(expected_methods) for v in cells.values())
    assert [arm.name for arm in COMPARISON_ARMS] == ["flexcare", "focal", "asl", "gce", "mllsc", "multit",
                                                        "medfuse", "m3care", "cbmlc", "miracl"]


def test_lambda_alpha_sweeps_grid_values_and_noise():
    lam = expand("lambda_cons")
    miracl = [t for t in lam if t.config["method"] == "miracl"]
    assert {t.config["lambda_cons"] for t in miracl} == {0.0, 0.01, 0.05, 0.1, 0.2, 0.5}
    assert noise_pairs(lam) == {("symmetric", 0.2, 0.2), ("symmetric", 0.4, 0.4)}
    assert "miracl_sym20-20_lam0.05_s30" in {t.name for t in lam}
    # the FlexCare (BCE) reference: each noise setting × seed once, not across λ_cons
    flexcare = [t for t in lam if t.config["method"] == "bce"]
    assert sorted(t.name for t in flexcare) == sorted(f"flexcare_sym{r}-{r}_s{s}" for r in (20, 40)
                                                      for s in (30, 40, 100))
    assert {(t.config["backbone"], t.config["lambda_cons"]) for t in flexcare} == {("flexcare", 0.1)}
    assert len(miracl) + len(flexcare) == len(lam)
    alpha = expand("alpha")
    assert {t.config["alpha"] for t in alpha} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert noise_pairs(alpha) == {("asymmetric", 0.0, 0.2), ("symmetric", 0.2, 0.2),
                                  ("balanced", 0.2, round(BALANCED_20, 6))}


def test_ablation_variants_are_config_switches():
    trials = expand("ablation")
    by_variant = {}
    for t in trials:
        by_variant.setdefault(t.config["variant"], []).append(t.config)
    assert set(by_variant) == {"baseline", "con_reg", "loss_only", "difficulty_only", "rank_only", "full"}
    assert all(len(configs) == 9 for configs in by_variant.values())
    first = {variant: configs[0] for variant, configs in by_variant.items()}
    assert first["baseline"]["method"] == "bce" and first["baseline"]["backbone"] == "flexcare"
    assert first["con_reg"]["method"] == "miracl" and first["con_reg"]["use_correction"] is False
    assert first["con_reg"]["lambda_cons"] == 0.1
    assert first["loss_only"]["selection_signal"] == "loss" and first["loss_only"]["use_correction"] is True
    assert first["difficulty_only"]["alpha"] == 0.0
    assert first["rank_only"]["alpha"] == 1.0
    full = first["full"]
    assert (full["method"], full["alpha"], full["selection_signal"], full["use_correction"]) == \
        ("miracl", 0.5, "rank_difficulty", True)


def test_stability_keeps_seed_and_noise_fixed_while_gmm_seed_varies():
    trials = expand("stability")
    assert {t.config["seed"] for t in trials} == {30}
    assert {t.config["noise_seed"] for t in trials} == {30}
    assert sorted(t.config["gmm_seed"] for t in trials) == [0, 1, 2, 3, 4]
    assert noise_pairs(trials) == {("symmetric", 0.2, 0.2)}
    assert {t.config["method"] for t in trials} == {"miracl"}


@pytest.mark.parametrize("name", list(SWEEPS))
def test_trial_names_unique_and_configs_round_trip(name):
    trials = expand(name)
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    for trial in trials:
        rebuilt = TrialConfig.from_dict(trial.config).validate()
        assert rebuilt.to_flat_dict() == trial.config


# ------------------------------------------------------------------------ CLI narrowing / widening
def test_set_comma_list_widens_into_a_grid_dimension():
    base = expand("lambda_cons")
    widened = expand("lambda_cons", overrides=parse_set_arguments(["alpha=0.25,0.75"]))
    assert len(widened) == 2 * len(base)
    assert {t.config["alpha"] for t in widened} == {0.25, 0.75}
    assert len({t.name for t in widened}) == len(widened)
    # two widened fields multiply
    both = expand("stability", overrides=parse_set_arguments(["alpha=0,1", "tau=0.01,0.02,0.05"]))
    assert len(both) == 5 * 2 * 3


def test_set_single_value_applies_to_every_trial_without_changing_count():
    trials = expand("main", overrides=parse_set_arguments(["epochs=5", "warmup_epochs=1"]))
    assert len(trials) == 240
    assert {t.config["epochs"] for t in trials} == {5}
    assert {t.config["warmup_epochs"] for t in trials} == {1}


def test_set_on_a_sweep_dimension_replaces_it():
    trials = expand("lambda_cons", overrides=parse_set_arguments(["lambda_cons=0,0.1"]), arms="miracl")
    assert len(trials) == 2 * 2 * 3
    assert {t.config["lambda_cons"] for t in trials} == {0.0, 0.1}
    one = expand("lambda_cons", overrides={"lambda_cons": 0.2}, arms="miracl")
    assert len(one) == 2 * 3 and {t.config["lambda_cons"] for t in one} == {0.2}


def test_baselines_skip_the_sweep_grid_but_take_added_dimensions():
    base = [t for t in expand("lambda_cons") if t.config["method"] == "bce"]
    widened = [t for t in expand("lambda_cons", overrides=parse_set_arguments(["lambda_cons=0,0.5", "tau=0.01,0.05"]))
               if t.config["method"] == "bce"]
    assert len(widened) == 2 * len(base)                     # across tau, not across lambda_cons
    assert {t.config["tau"] for t in widened} == {0.01, 0.05}
    assert "flexcare_sym40-40_tau0.05_s100" in {t.name for t in widened}
    only = expand("lambda_cons", arms="flexcare")
    assert [t.config["method"] for t in only] == ["bce"] * 6


def test_parse_set_arguments_shapes_and_errors():
    assert parse_set_arguments(["epochs=5", "lambda_cons=0,0.1"]) == {"epochs": ("5",),
                                                                      "lambda_cons": ("0", "0.1")}
    with pytest.raises(SweepError, match="lambda_constrastive"):
        parse_set_arguments(["lambda_constrastive=0.1"])
    with pytest.raises(SweepError, match="'epochs'"):
        parse_set_arguments(["epochs"])
    with pytest.raises(SweepError, match="given twice"):
        parse_set_arguments(["epochs=5", "epochs=6"])
    assert parse_set_arguments(["extra.tag=x"]) == {"extra.tag": ("x",)}


def test_arms_narrowing_and_unknown_arm_error():
    trials = expand("main", arms="miracl,asl,medfuse")
    assert len(trials) == 8 * 3 * 3
    assert {(t.config["method"], t.config["backbone"]) for t in trials} == {
        ("miracl", "flexcare"), ("asl", "flexcare"), ("bce", "medfuse")}
    assert len(expand("main", arms=["flexcare"])) == 24
    with pytest.raises(SweepError) as error:
        expand("main", arms="miracl,medfus")
    assert "'medfus'" in str(error.value) and "medfuse" in str(error.value) and "cbmlc" in str(error.value)
    narrowed = expand("ablation", arms="full,baseline")
    assert {t.config["variant"] for t in narrowed} == {"full", "baseline"} and len(narrowed) == 18


def test_seeds_and_noise_replace_dimensions():
    assert len(expand("main", seeds=[30])) == 80
    assert {t.config["seed"] for t in expand("alpha", seeds="1,2")} == {1, 2}
    replaced = expand("lambda_cons", noise=["asymmetric:0,0.4"])
    assert len(replaced) == 6 * 1 * 3 + 3
    assert noise_pairs(replaced) == {("asymmetric", 0.0, 0.4)}
    two = expand("stability", noise="symmetric:0.4 class_conditional:0.2")
    assert len(two) == 10
    # preset seeds change the paper seed set but not stability's own seed
    assert len(expand("main", preset_seeds=(30, 40))) == 160
    assert len(expand("stability", preset_seeds=(30, 40))) == 5
    assert len(expand("main", seeds=[100], preset_seeds=(30, 40))) == 80


def test_unknown_field_noise_and_sweep_errors_name_the_token():
    with pytest.raises(SweepError, match="learning_rat'"):
        expand("main", overrides={"learning_rat": 0.1})
    with pytest.raises(SweepError, match="gausian"):
        expand("main", noise=["gausian:0.2"])
    with pytest.raises(SweepError, match="mian"):
        expand("mian")
    with pytest.raises(ConfigError, match="alpha"):
        expand("stability", overrides={"alpha": 1.5})
    with pytest.raises(ConfigError, match="epochs"):
        expand("stability", overrides=parse_set_arguments(["epochs=many"]))
    with pytest.raises(SweepError, match="hidden_sise"):
        expand("stability", preset={"hidden_sise": 32})


# ----------------------------------------------------------------------------------- precedence
def test_precedence_defaults_preset_sweep_set():
    preset = {"epochs": 7, "lambda_cons": 0.3, "hidden_size": 64, "alpha": 0.3}
    trials = expand("lambda_cons", preset=preset, arms="miracl")
    assert {t.config["epochs"] for t in trials} == {7}                       # preset > default
    assert {t.config["hidden_size"] for t in trials} == {64}
    assert {t.config["lambda_cons"] for t in trials} == {0.0, 0.01, 0.05, 0.1, 0.2, 0.5}   # sweep > preset
    assert {t.config["batch_size"] for t in trials} == {128}                 # untouched default
    overridden = expand("lambda_cons", preset=preset, overrides={"epochs": 9, "lambda_cons": 0.2}, arms="miracl")
    assert {t.config["epochs"] for t in overridden} == {9}                   # --set > preset
    assert {t.config["lambda_cons"] for t in overridden} == {0.2}            # --set > sweep
    ablation = {t.config["variant"]: t.config for t in expand("ablation", preset=preset, seeds=[30],
                                                             noise=["symmetric:0.2"])}
    assert ablation["difficulty_only"]["alpha"] == 0.0                       # sweep arm > preset
    assert ablation["full"]["alpha"] == 0.3                                  # preset where sweep is silent
    assert ablation["con_reg"]["lambda_cons"] == 0.1


def test_duplicate_configs_collapse():
    trials = expand("lambda_cons", overrides={"seed": 30})
    assert len(trials) == 12 + 2 and {t.config["seed"] for t in trials} == {30}


# -------------------------------------------------------------------------------- noise strings
@pytest.mark.parametrize("text, label, fields", [
    ("symmetric:0.2,0.2", "Sym. 20%", ("symmetric", 0.2, 0.2)),
    ("symmetric:40%", "Sym. 40%", ("symmetric", 0.4, 0.4)),
    ("asymmetric:0,0.4", "Asym. (0,40)", ("asymmetric", 0.0, 0.4)),
    ("asymmetric:0.2,0", "Asym. (20,0)", ("asymmetric", 0.2, 0.0)),
    ("class_conditional:0.2", "Class-cond. 20%", ("class_conditional", 0.2, 0.0)),
    ("single_positive", "Single positive", ("single_positive", 0.0, 0.0)),
    ("combined", "Combined", ("combined", 0.0, 0.0)),
    ("none", "Clean", ("none", 0.0, 0.0)),
])
def test_noise_setting_labels_and_fields(text, label, fields):
    setting = parse_noise_setting(text)
    assert noise_setting_label(*setting.trial_fields().values()) == label    # the table label of its trials
    model, rho_pos, rho_neg = fields
    assert setting.trial_fields() == {"noise_model": model, "rho_pos": pytest.approx(rho_pos),
                                      "rho_neg": pytest.approx(rho_neg)}


def test_balanced_label_and_resolution():
    setting = parse_noise_setting("balanced:0.2")
    assert setting.rho_neg is None and setting.slug == "bal20-auto"
    with pytest.raises(SweepError, match="resolve"):
        setting.trial_fields()
    resolved = setting.resolve(L_AVG, NUM_LABELS)
    assert noise_setting_label(*resolved.trial_fields().values()) == "Bal. (20,4.48)"
    assert resolved.rho_neg == pytest.approx(BALANCED_20, abs=1e-12)
    assert parse_noise_setting("balanced:0.4").resolve(L_AVG, NUM_LABELS).slug == "bal40-8.96"


@pytest.mark.parametrize("text, token", [
    ("symetric:0.2", "symetric"), ("symmetric:0.2,0.4", "asymmetric"), ("asymmetric:0.2", "2 rate"),
    ("asymmetric:0.2,0.2", "symmetric"), ("balanced:1.5", "1.5"), ("balanced:abc", "abc"),
    ("single_positive:0.2", "0 rate"), ("", "model"),
])
def test_bad_noise_strings_raise_naming_the_token(text, token):
    with pytest.raises(SweepError, match=token):
        parse_noise_setting(text)


def test_parse_noise_settings_accepts_lists_and_strings():
    settings = parse_noise_settings("symmetric:0.2;asymmetric:0,0.4  balanced:0.2")
    assert [s.model for s in settings] == ["symmetric", "asymmetric", "balanced"]
    assert parse_noise_settings([NoiseSetting("symmetric", 0.4, 0.4)])[0].slug == "sym40-40"


# -------------------------------------------------------------------------------- text output
def test_describe_and_format_trials():
    text = describe_sweeps(L_AVG, NUM_LABELS)
    for name, count in (("main", 240), ("lambda_cons", 42), ("alpha", 45), ("ablation", 54), ("stability", 5)):
        line = next(line for line in text.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == str(count)
    table = format_trials(expand("stability"))
    header = table.splitlines()[0].split()
    assert header == ["trial", "gmm_seed"]            # only the varying field
    assert "miracl_sym20-20_gmm3_s30" in table and table.rstrip().endswith("5 trials")


# ------------------------------------------------------------------------------------- presets
def test_paper_preset_is_method_section_7():
    assert preset_trial_defaults("paper") == {}        # the TrialConfig defaults are the paper's
    trial = TrialConfig.from_dict(preset_trial_defaults("paper")).to_flat_dict()
    assert (trial["lambda_cons"], trial["alpha"], trial["tau"], trial["hidden_size"], trial["fusion_layers"],
            trial["num_experts"]) == (0.1, 0.5, 0.02, 128, 4, 10)
    assert (trial["epochs"], trial["batch_size"], trial["warmup_epochs"], trial["learning_rate"],
            trial["cosine_t_max"], trial["max_series_bins"], trial["max_note_tokens"]) == \
        (30, 128, 5, 1e-3, 10, 512, 512)
    assert tuple(preset_runtime("paper")["seeds"]) == (30, 40, 100)


def test_quick_preset_keeps_the_paper_schedule_and_is_smaller_and_valid_for_every_sweep():
    trial, runtime = preset_trial_defaults("quick"), preset_runtime("quick")
    paper = TrialConfig.from_dict(preset_trial_defaults("paper")).to_flat_dict()
    schedule = TrialConfig.from_dict(trial)
    assert (schedule.epochs, schedule.warmup_epochs, schedule.cosine_t_max) == (30, 5, 10)   # METHOD §7
    assert runtime["cosine_t_max"] == 10 and tuple(runtime["seeds"]) == (30, 40, 100)
    for field in ("hidden_size", "max_note_tokens", "max_series_bins"):
        assert trial[field] < paper[field], field
    assert runtime["synthetic_cohort"]["num_patients"] < preset_runtime("paper")["synthetic_cohort"]["num_patients"]
    assert {"seeds", "synthetic_cohort"} <= set(runtime)
    assert not set(runtime) & set(TrialConfig.field_names()) - {"cosine_t_max"}
    for name in SWEEPS:
        trials = expand(name, preset=trial, preset_seeds=runtime["seeds"])
        assert {t.config["hidden_size"] for t in trials} == {64}
    trial["hidden_size"] = 99                                         # a copy, not the table
    assert PRESETS["quick"]["trial"]["hidden_size"] != 99
    with pytest.raises(ConfigError, match="laptop"):
        preset_trial_defaults("laptop")


# -------------------------------------------------------------------------------- registry, noise tables
def test_every_noise_model_has_a_cli_grammar_and_a_slug():
    from miracl_grid.data.noise import NOISE_MODELS
    from miracl_grid.grid import sweeps

    assert set(sweeps._RATE_COUNTS) == set(NOISE_MODELS) == set(sweeps._SLUGS)


def test_every_registered_method_is_an_arm_and_a_bad_method_fails_at_expansion():
    from miracl_grid.grid.sweeps import METHOD_ARMS
    from miracl_grid.trainables.registry import METHODS

    assert {arm.fields["method"] for arm in METHOD_ARMS.values()} == set(METHODS)
    assert METHOD_ARMS["medfuse"].fields == {"method": "bce", "backbone": "medfuse", "variant": "MedFuse"}
    sce = expand("main", arms="sce", seeds=[30], noise="symmetric:0.2")
    assert [t.name for t in sce] == ["sce_sym20-20_s30"] and sce[0].config["variant"] == "SCE"
    with pytest.raises(ConfigError, match=r"config field 'method' = 'nosuch'.*miracl"):
        expand("lambda_cons", overrides={"method": "nosuch"})
    with pytest.raises(ConfigError, match="backbone"):           # CbMLC's decoder lives in its backbone
        expand("main", arms="asl", overrides={"method": "cbmlc"})
