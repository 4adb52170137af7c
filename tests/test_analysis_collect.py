"""miracl_grid.analysis.collect / miracl_grid.analysis.labels: labels, loading (parquet and Tune dirs), last epoch, completeness."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from miracl_grid.analysis.collect import (IncompleteSweepError, ResultsError, annotate, check_complete, infer_expected_cells,
                              last_epoch, load_results, missing_by_sweep, noise_setting_order)
from miracl_grid.analysis.labels import method_label, noise_setting_label


def trial_rows(trial_id, *, sweep="main", method="miracl", backbone="flexcare", variant="MIRACL",
               noise=("symmetric", 0.2, 0.2), seed=30, epochs=3, value=0.5, status="TERMINATED", planned=None,
               **config):
    """Rows of one trial (`epochs` reported of `planned`, default all); test/mAP rises to `value`
    at the last reported epoch (value − 0.1 per epoch before)."""
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"trial_id": trial_id, "sweep": sweep, "experiment": "exp", "epoch": epoch,
               "is_last_epoch": epoch == epochs and status == "TERMINATED", "status": status,
               "config/method": method, "config/backbone": backbone, "config/variant": variant,
               "config/noise_model": noise[0], "config/rho_pos": noise[1], "config/rho_neg": noise[2],
               "config/seed": seed, "config/epochs": planned or epochs, "test/mAP": value - 0.1 * (epochs - epoch)}
        row.update({f"config/{key}": item for key, item in config.items()})
        rows.append(row)
    return rows


def main_grid(drop=(), error=()):
    """2 methods × 2 noise settings × 3 seeds; `drop`/`error`: (method, model, seed) cells removed/failed."""
    rows = []
    for method, variant in (("miracl", "MIRACL"), ("bce", "FlexCare")):
        for noise in (("symmetric", 0.2, 0.2), ("asymmetric", 0.0, 0.4)):
            for seed in (30, 40, 100):
                key = (method, noise[0], seed)
                if key in drop:
                    continue
                status = "ERROR" if key in error else "TERMINATED"
                rows += trial_rows(f"{method}_{noise[0]}_{seed}", method=method, variant=variant, noise=noise,
                                   seed=seed, status=status, epochs=2 if status == "ERROR" else 3, planned=3)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("noise, expected", [
    (("symmetric", 0.2, 0.2), "Sym. 20%"), (("asymmetric", 0.0, 0.4), "Asym. (0,40)"),
    (("asymmetric", 0.4, 0.0), "Asym. (40,0)"), (("balanced", 0.2, 0.915 / 20.425), "Bal. (20,4.48)"),
    (("balanced", 0.4, 1.830 / 20.425), "Bal. (40,8.96)"), (("none", 0.0, 0.0), "Clean"),
    (("class_conditional", 0.2, 0.0), "Class-cond. 20%")])
def test_noise_setting_labels_follow_the_paper(noise, expected):
    assert noise_setting_label(*noise) == expected


@pytest.mark.parametrize("arm, expected", [
    (("miracl", "flexcare", "MIRACL"), "MIRACL"), (("bce", "flexcare", "FlexCare"), "FlexCare"),
    (("focal", "flexcare", "Focal"), "Focal"), (("asl", "flexcare", "ASL"), "ASL"), (("gce", "flexcare", ""), "GCE"),
    (("mllsc", "flexcare", "MLLSC"), "MLLSC"), (("multit", "flexcare", "MultiT"), "MultiT"),
    (("bce", "medfuse", "MedFuse"), "MedFuse"), (("bce", "m3care", "M3Care"), "M3Care"),
    (("cbmlc", "cbmlc", "CbMLC"), "CbMLC"), (("miracl", "flexcare", "full"), "MIRACL"),
    (("miracl", "flexcare", "rank_only"), "w/ Rank only"), (("bce", "flexcare", "baseline"), "Baseline"),
    (("miracl", "flexcare", "my_try"), "MIRACL [my_try]")])
def test_method_labels(arm, expected):
    assert method_label(*arm) == expected


def test_labels_of_the_grid_arms_and_noise_settings_are_the_papers():
    sweeps = pytest.importorskip("miracl_grid.grid.sweeps")
    labels = [method_label(arm.fields["method"], arm.fields["backbone"], arm.fields["variant"])
              for arm in (*sweeps.COMPARISON_ARMS, *sweeps.ABLATION_VARIANTS)]
    assert labels == ["FlexCare", "Focal", "ASL", "GCE", "MLLSC", "MultiT", "MedFuse", "M3Care", "CbMLC", "MIRACL",
                      "Baseline", "+Con.Reg.", "w/ Loss only", "w/ Difficulty only", "w/ Rank only", "MIRACL"]
    settings = [sweeps.parse_noise_setting(text).resolve(4.575, 25) for text in sweeps.SWEEPS["main"].noise]
    assert [noise_setting_label(*setting.trial_fields().values()) for setting in settings] == [
        "Sym. 20%", "Sym. 40%", "Asym. (0,20)", "Asym. (0,40)", "Asym. (20,0)", "Asym. (40,0)",
        "Bal. (20,4.48)", "Bal. (40,8.96)"]                            # the columns of Tables 2/3


def test_noise_settings_sort_in_table_order():
    frame = pd.DataFrame([{"config/method": "miracl", "config/noise_model": model, "config/rho_pos": p,
                           "config/rho_neg": n} for model, p, n in
                          [("balanced", 0.2, 0.0448), ("asymmetric", 0.4, 0.0), ("symmetric", 0.4, 0.4),
                           ("asymmetric", 0.0, 0.2), ("symmetric", 0.2, 0.2), ("asymmetric", 0.0, 0.4)]])
    assert noise_setting_order(frame) == ["Sym. 20%", "Sym. 40%", "Asym. (0,20)", "Asym. (0,40)",
                                          "Asym. (40,0)", "Bal. (20,4.48)"]


# ------------------------------------------------------------------------------------ last epoch
def test_last_epoch_keeps_each_trials_largest_epoch():
    frame = pd.DataFrame(trial_rows("a", value=0.7, epochs=3) + trial_rows("b", value=0.4, epochs=5))
    frame = frame.sample(frac=1.0, random_state=0)          # order must not matter
    finals = last_epoch(frame)
    assert sorted(zip(finals["trial_id"], finals["epoch"])) == [("a", 3), ("b", 5)]
    assert dict(zip(finals["trial_id"], finals["test/mAP"])) == pytest.approx({"a": 0.7, "b": 0.4})


def test_last_epoch_finished_only_drops_failed_trials():
    frame = pd.DataFrame(trial_rows("a") + trial_rows("b", status="ERROR", epochs=2))
    assert last_epoch(frame)["trial_id"].tolist() == ["a", "b"]
    assert last_epoch(frame, finished_only=True)["trial_id"].tolist() == ["a"]


# ------------------------------------------------------------------------------------ loading
def test_load_results_reads_parquet_file_or_directory(tmp_path):
    frame = main_grid()
    frame.to_parquet(tmp_path / "results.parquet")
    for path in (tmp_path, tmp_path / "results.parquet"):
        loaded, _ = load_results(path)
        assert len(loaded) == len(frame)
        assert set(loaded["trial_id"]) == set(frame["trial_id"])
        assert loaded["epoch"].dtype == np.int64


def test_load_results_errors_name_the_problem(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "nowhere")
    with pytest.raises(ResultsError, match="neither results.parquet nor a grid sweep folder"):
        load_results(tmp_path)
    pd.DataFrame({"trial_id": ["a"], "epoch": [1]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ResultsError, match="config/method"):
        load_results(tmp_path)


def test_sweep_folder_without_results_file(tmp_path):
    """The grid's own folder, read through miracl_grid.grid.results (the one reader of its layout)."""
    from miracl_grid.grid.folder import SweepFolder
    from tests.sweep_folder import publish_epochs, register_trial

    folder = SweepFolder(str(tmp_path / "lambda_cons"))
    common = dict(method="miracl", backbone="flexcare", variant="MIRACL", rho_pos=0.4, rho_neg=0.4, epochs=3,
                  extra={"tag": "x"})
    finished = register_trial(folder, "a", lambda_cons=0.05, seed=40, **common)
    part_way = register_trial(folder, "b", lambda_cons=0.05, seed=30, **common)
    failed = register_trial(folder, "c", lambda_cons=0.05, seed=100, **common)
    publish_epochs(folder, finished, [1, 2, 3], tmp_path, map_of=lambda epoch: 0.3 + 0.1 * epoch)
    publish_epochs(folder, part_way, [1, 2], tmp_path)
    publish_epochs(folder, failed, [1], tmp_path)
    folder.record_failure(failed, "RuntimeError: boom")

    frame, _ = load_results(tmp_path / "lambda_cons")
    by_trial = {trial_id: group for trial_id, group in frame.groupby("trial_id")}
    assert by_trial[finished]["epoch"].tolist() == [1, 2, 3]
    assert by_trial[finished]["test/mAP"].tolist() == pytest.approx([0.4, 0.5, 0.6])
    assert by_trial[finished]["config/lambda_cons"].iloc[0] == 0.05
    assert by_trial[finished]["config/extra.tag"].iloc[0] == "x"
    assert not any(column.startswith("config/trial") for column in frame.columns)
    assert set(frame["sweep"]) == {"lambda_cons"}
    status = {trial_id: group["status"].iloc[0] for trial_id, group in by_trial.items()}
    assert status == {finished: "TERMINATED", part_way: "INCOMPLETE", failed: "ERROR"}
    assert frame.loc[frame["is_last_epoch"] & (frame["status"] == "TERMINATED"), "trial_id"].tolist() == [finished]
    assert last_epoch(frame, finished_only=True)["epoch"].tolist() == [3]
    assert len(load_results(tmp_path / "lambda_cons")[1]) == 3


def test_sweep_folder_bad_file_names_it(tmp_path):
    from miracl_grid.grid.folder import SweepFolder
    from tests.sweep_folder import register_trial

    identity = register_trial(SweepFolder(str(tmp_path / "exp")), "a", epochs=2)
    (tmp_path / "exp" / "trials" / identity / "trial.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"trial\.json: not valid JSON"):
        load_results(tmp_path / "exp")


# ------------------------------------------------------------------------------------ completeness
def test_check_complete_lists_exactly_the_removed_cells():
    removed = [("bce", "asymmetric", 40), ("miracl", "symmetric", 100)]
    frame = main_grid(drop=removed)
    expected = infer_expected_cells(frame)
    assert len(expected) == 2 * 2 * 3
    missing = check_complete(frame, expected, allow_partial=True)
    found = {(cell["method_label"], cell["noise_setting"], cell["config/seed"]) for cell in missing}
    assert found == {("FlexCare", "Asym. (0,40)", 40), ("MIRACL", "Sym. 20%", 100)}
    with pytest.raises(IncompleteSweepError) as error:
        check_complete(frame, expected)
    assert len(error.value.missing) == 2
    assert "FlexCare" in str(error.value) and "Asym. (0,40)" in str(error.value)


def test_failed_trial_counts_as_missing_and_complete_grid_passes():
    assert check_complete(main_grid(), infer_expected_cells(main_grid())) == []
    frame = main_grid(error=[("miracl", "asymmetric", 30)])
    missing = missing_by_sweep(frame, allow_partial=True)
    assert [(cell["method_label"], cell["noise_setting"], cell["config/seed"]) for cell in missing] == \
        [("MIRACL", "Asym. (0,40)", 30)]


def test_check_complete_with_explicit_cells_on_config_columns():
    frame = main_grid()
    cells = [{"config/method": "miracl", "config/noise_model": "symmetric", "config/rho_pos": 0.2,
              "config/rho_neg": 0.2, "config/seed": seed} for seed in (30, 40, 100, 7)]
    missing = check_complete(frame, cells, allow_partial=True)
    assert missing == [cells[-1]]
    with pytest.raises(ResultsError, match="config/alpha"):
        check_complete(frame, [{"config/alpha": 0.5}])


def test_design_factors_keep_sweep_parameters_and_fold_arm_switches():
    rows = []
    for lam in (0.0, 0.1):
        for seed in (30, 40):
            rows += trial_rows(f"l{lam}_{seed}", sweep="lambda_cons", seed=seed, lambda_cons=lam, alpha=0.5)
    for variant, alpha in (("rank_only", 1.0), ("full", 0.5)):
        for seed in (30, 40):
            rows += trial_rows(f"{variant}_{seed}", sweep="ablation", variant=variant, seed=seed, alpha=alpha,
                               lambda_cons=0.1)
    expected = infer_expected_cells(annotate(pd.DataFrame(rows)))
    lam = expected.loc[expected["sweep"] == "lambda_cons"]
    ablation = expected.loc[expected["sweep"] == "ablation"]
    assert len(lam) == 4 and set(lam["config/lambda_cons"]) == {0.0, 0.1}
    # alpha differs between the variants but rides on them: not a factor of its own
    assert len(ablation) == 4 and ablation.get("config/alpha", pd.Series(dtype=float)).isna().all()
    assert set(ablation["method_label"]) == {"w/ Rank only", "MIRACL"}


def test_a_baseline_outside_the_sweep_grid_is_expected_only_where_it_ran():
    """λ_cons sweep: MIRACL at 3 λ × 2 seeds, FlexCare once per seed (λ left at 0.1)."""
    rows = []
    for seed in (30, 40):
        for lam in (0.0, 0.1, 0.5):
            rows += trial_rows(f"m{lam}_{seed}", sweep="lambda_cons", seed=seed, lambda_cons=lam)
        rows += trial_rows(f"f_{seed}", sweep="lambda_cons", method="bce", variant="FlexCare", seed=seed,
                           lambda_cons=0.1)
    frame = annotate(pd.DataFrame(rows))
    expected = infer_expected_cells(frame)
    assert len(expected) == 3 * 2 + 2
    flexcare = expected.loc[expected["method_label"] == "FlexCare"]
    assert set(flexcare["config/lambda_cons"]) == {0.1} and set(flexcare["config/seed"]) == {30, 40}
    assert missing_by_sweep(frame) == []
    # a MIRACL cell removed is still reported missing
    dropped = frame.loc[frame["trial_id"] != "m0.5_40"]
    assert [(cell["method_label"], cell["config/lambda_cons"], cell["config/seed"])
            for cell in missing_by_sweep(dropped, allow_partial=True)] == [("MIRACL", 0.5, 40)]
