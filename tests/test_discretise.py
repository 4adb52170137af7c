"""Hourly discretisation and the train-only z-scorer (METHOD §9), against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from miracl_grid.data.discretise import (CONTINUOUS_CHANNELS, MASK_CHANNELS, NUM_CHANNELS, apply_normaliser, bin_index,
                             bins_per_stay, discretise, fit_normaliser)
from miracl_grid.data.schema import VARIABLE_NAMES, VARIABLES, channel_names

NAMES = channel_names()
HR = NAMES.index("Heart Rate")
GLUCOSE = NAMES.index("Glucose")
MASK_HR = NAMES.index("mask->Heart Rate")


def events(rows: list[tuple[int, float, dict]]) -> pd.DataFrame:
    """Events frame from (stay row, hours, {variable: value string})."""
    frame = pd.DataFrame({name: pd.Series([None] * len(rows), dtype=object) for name in VARIABLE_NAMES})
    frame.insert(0, "Hours", [float(h) for _, h, _ in rows])
    frame.insert(0, "line", np.arange(len(rows), dtype=np.int64) + 2)
    frame.insert(0, "row", np.asarray([r for r, _, _ in rows], dtype=np.int64))
    for index, (_, _, cells) in enumerate(rows):
        for name, value in cells.items():
            frame.loc[index, name] = value
    return frame


def test_layout_positions_against_schema():
    # 2 (CRR) + DBP + FiO2 = 4 columns before GCS eye opening (8 values)
    assert NAMES.index("Glascow coma scale eye opening->None") == 4 + 4
    assert NAMES.index("Glascow coma scale motor response->6 Obeys Commands") == 12 + 9
    assert NAMES.index("Glascow coma scale total->15") == 24 + 4
    assert NAMES.index("Glascow coma scale verbal response->5 Oriented") == 37 + 6
    assert CONTINUOUS_CHANNELS == (2, 3) + tuple(range(49, 59))
    assert MASK_CHANNELS == tuple(range(59, 76))
    assert NUM_CHANNELS == 76


@pytest.mark.parametrize("hours, expected", [(0.0, 0), (5e-7, 0), (1.0, 0), (1.0000011, 1), (1.5, 1),
                                             (2.999, 2), (3.0, 2), (47.99, 47)])
def test_bin_edges(hours, expected):
    assert bin_index(np.array([hours]))[0] == expected


def test_bins_per_stay_matches_the_benchmark_formula():
    period = np.array([48.0, 47.5, 0.5, 0.0, 1.0, 1.0000001, 100.25])
    expected = [max(1, int(p + 1.0 - 1e-6)) for p in period]  # mimic3-benchmarks N_bins
    got = bins_per_stay(period, np.full(len(period), np.nan), np.ones(len(period), bool))
    assert got.tolist() == expected == [48, 48, 1, 1, 1, 1, 101]
    # unknown period -> max(Hours); no series -> 0 bins
    got = bins_per_stay(np.array([np.nan, np.nan, 5.0]), np.array([2.999, 4.0, np.nan]), np.array([True, True, False]))
    assert got.tolist() == [3, 4, 0]


def test_last_value_wins_within_a_bin_and_carry_forward():
    frame = events([
        (0, 0.2, {"Heart Rate": "80"}),
        (0, 0.7, {"Heart Rate": "90"}),
        (0, 0.9, {"Glucose": "150"}),      # HR missing here: 90 still wins bin 0
        (0, 1.0, {"Heart Rate": "95"}),    # t = 1.0 is still bin 0
        (0, 3.5, {"Heart Rate": "60"}),
        (0, 3.5, {"Heart Rate": "65"}),    # same time: later row wins
    ])
    series = discretise(frame, np.array([5.0]))
    assert series.offsets.tolist() == [0, 5]
    values = series.values
    assert values[:, HR].tolist() == [95, 95, 95, 65, 65]
    assert values[:, MASK_HR].tolist() == [1, 0, 0, 1, 0]
    assert values[:, GLUCOSE].tolist() == [150] * 5
    assert series.statistics["values_overwritten_in_bin"]["Heart Rate"] == 3


def test_normal_values_before_the_first_observation():
    frame = events([(0, 2.5, {"Glucose": "200", "Glascow coma scale eye opening": "None"})])
    values = discretise(frame, np.array([4.0])).values
    assert values[:, GLUCOSE].tolist() == [128.0, 128.0, 200.0, 200.0]
    spontaneous = NAMES.index("Glascow coma scale eye opening->4 Spontaneously")
    none = NAMES.index("Glascow coma scale eye opening->None")
    assert values[:, spontaneous].tolist() == [1, 1, 0, 0]
    assert values[:, none].tolist() == [0, 0, 1, 1]
    assert values[:, NAMES.index("mask->Glascow coma scale eye opening")].tolist() == [0, 0, 1, 0]
    # every continuous variable never observed sits at its normal value, e.g. pH 7.4, FiO2 0.21
    np.testing.assert_allclose(values[:, NAMES.index("pH")], 7.4, rtol=1e-6)
    np.testing.assert_allclose(values[:, NAMES.index("Fraction inspired oxygen")], 0.21, rtol=1e-6)
    # normal one-hots of the other categoricals: CRR "0.0", motor "6 Obeys Commands", total "15"
    for column in ("Capillary refill rate->0.0", "Glascow coma scale motor response->6 Obeys Commands",
                   "Glascow coma scale total->15", "Glascow coma scale verbal response->5 Oriented"):
        assert values[:, NAMES.index(column)].tolist() == [1, 1, 1, 1]
    # exactly one hot per categorical per bin
    start = 0
    for variable in VARIABLES:
        if variable.categories:
            np.testing.assert_array_equal(values[:, start:start + variable.width].sum(axis=1), 1)
        start += variable.width


def test_one_hot_positions_of_observed_categories():
    frame = events([(0, 0.0, {"Capillary refill rate": "1.0", "Glascow coma scale total": "3",
                              "Glascow coma scale motor response": "2 Abnorm extensn",
                              "Glascow coma scale verbal response": "1.0 ET/Trach"})])
    row = discretise(frame, np.array([1.0])).values[0]
    hot = set(np.flatnonzero(row[:59]))
    expected = {NAMES.index("Capillary refill rate->1.0"), NAMES.index("Glascow coma scale total->3"),
                NAMES.index("Glascow coma scale motor response->2 Abnorm extensn"),
                NAMES.index("Glascow coma scale verbal response->1.0 ET/Trach"),
                NAMES.index("Glascow coma scale eye opening->4 Spontaneously")}
    assert expected <= hot
    # hand-counted: CRR at 0-1, motor at 12-23, total at 24-36, verbal at 37-48
    assert NAMES.index("Capillary refill rate->1.0") == 1
    assert NAMES.index("Glascow coma scale motor response->2 Abnorm extensn") == 12 + 11
    assert NAMES.index("Glascow coma scale total->3") == 24 + 6
    assert NAMES.index("Glascow coma scale verbal response->1.0 ET/Trach") == 37 + 8
    masks = row[59:]
    assert [VARIABLE_NAMES[i] for i in np.flatnonzero(masks)] == [
        "Capillary refill rate", "Glascow coma scale motor response", "Glascow coma scale total",
        "Glascow coma scale verbal response"]


def test_truncation_keeps_the_last_bins_after_imputation():
    frame = events([(0, 10.0, {"Heart Rate": "70"}), (0, 599.5, {"Heart Rate": "120"}),
                    (1, 0.5, {"Heart Rate": "50"})])
    series = discretise(frame, np.array([600.0, 3.0]), max_bins=512)
    assert series.full_bins.tolist() == [600, 3]
    assert series.bins.tolist() == [512, 3]
    first = series.values[:512]
    # kept bins are 88..599: HR 70 (observed in dropped bin 9) carried in, 120 in the last bin
    assert first[0, HR] == 70 and first[0, MASK_HR] == 0
    assert first[-1, HR] == 120 and first[-1, MASK_HR] == 1
    assert first[:, MASK_HR].sum() == 1
    assert series.values[512:, HR].tolist() == [50, 50, 50]
    assert series.statistics["stays_truncated"] == 1


def test_events_after_period_and_stays_without_series():
    frame = events([(0, 0.5, {"Heart Rate": "70"}), (0, 2.5, {"Heart Rate": "99"}), (2, 0.1, {"pH": "7.2"})])
    series = discretise(frame, np.array([2.0, 5.0, np.nan]))
    assert series.bins.tolist() == [2, 0, 1]  # stay 1 has no rows; stay 2 length from max Hours
    assert series.values[:2, HR].tolist() == [70, 70]
    assert series.statistics["events_after_period_length"] == 1
    assert series.statistics["stays_without_series"] == 1
    # t = 2.8 lies in bin 2 of a 2.3 h stay (3 bins) but after its end: skipped like the benchmark
    frame = events([(0, 2.2, {"Heart Rate": "70"}), (0, 2.8, {"Heart Rate": "99"})])
    series = discretise(frame, np.array([2.3]))
    assert series.values[:, HR].tolist() == [86, 86, 70]
    assert series.statistics["events_after_period_length"] == 1


def test_unsorted_rows_of_interleaved_stays_are_sorted_stably():
    ordered = events([(0, 0.5, {"Heart Rate": "70"}), (0, 0.5, {"Heart Rate": "71"}), (1, 1.5, {"Heart Rate": "80"})])
    shuffled = ordered.iloc[[2, 0, 1]].reset_index(drop=True)
    a = discretise(ordered, np.array([1.0, 2.0]))
    b = discretise(shuffled, np.array([1.0, 2.0]))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.values[0, HR] == 71


def reference_discretise(frame: pd.DataFrame, period: np.ndarray, max_bins: int) -> list[np.ndarray]:
    """Per-stay, per-row loop transcribing mimic3-benchmarks' Discretizer (independent reference)."""
    starts, position = [], 0
    for variable in VARIABLES:
        starts.append(position)
        position += variable.width
    out = []
    for stay in range(len(period)):
        rows = frame[frame["row"] == stay].sort_values("Hours", kind="stable")
        if len(rows) == 0:
            out.append(np.zeros((0, 76), np.float32))
            continue
        end = period[stay] if not math.isnan(period[stay]) else rows["Hours"].max()
        count = max(1, int(end + 1.0 - 1e-6))
        data = [[None] * len(VARIABLES) for _ in range(count)]
        for _, event in rows.iterrows():
            t = event["Hours"]
            if t > end + 1e-6:
                continue
            b = max(0, int(math.floor(t - 1e-6)))
            for j, variable in enumerate(VARIABLES):
                if isinstance(event[variable.name], str):
                    data[b][j] = event[variable.name]
        matrix = np.zeros((count, 76), np.float32)
        for j, variable in enumerate(VARIABLES):
            previous = variable.normal_value
            for b in range(count):
                value = data[b][j]
                if value is not None:
                    matrix[b, 59 + j] = 1
                    previous = value
                if variable.categories:
                    matrix[b, starts[j] + variable.categories.index(previous)] = 1
                else:
                    matrix[b, starts[j]] = float(previous)
        out.append(matrix[-max_bins:])
    return out


def test_matches_a_per_row_reference_on_random_events():
    rng = np.random.default_rng(11)
    stays = 25
    rows = []
    for stay in range(stays):
        times = np.sort(np.round(rng.uniform(0, 30, rng.integers(0, 30)), 2))
        for t in times:
            cells = {}
            for variable in VARIABLES:
                if rng.random() < 0.3:
                    cells[variable.name] = (str(rng.choice(variable.categories)) if variable.categories
                                            else f"{rng.normal(50, 20):.2f}")
            rows.append((stay, t, cells))
    frame = events(rows)
    period = np.where(rng.random(stays) < 0.2, np.nan, np.round(rng.uniform(0, 32, stays), 1))
    series = discretise(frame, period, max_bins=20)
    expected = reference_discretise(frame, period, 20)
    assert series.bins.tolist() == [len(m) for m in expected]
    for stay in range(stays):
        got = series.values[series.offsets[stay]:series.offsets[stay + 1]]
        np.testing.assert_allclose(got, expected[stay], rtol=1e-6, err_msg=f"stay {stay}")


def test_z_scoring_uses_train_statistics_only():
    # stay 0 (train): HR 60 for 2 bins, 100 for 2 bins -> mean 80, population std 20
    # stay 1 (test): HR 200 -> z = 6; Height never observed -> zero variance -> std 1
    frame = events([(0, 0.0, {"Heart Rate": "60"}), (0, 2.5, {"Heart Rate": "100"}), (1, 0.0, {"Heart Rate": "200"})])
    series = discretise(frame, np.array([4.0, 1.0]))
    normaliser = fit_normaliser(series.values, series.offsets, np.array([0]))
    position = list(normaliser.channels).index(HR)
    assert normaliser.mean[position] == pytest.approx(80.0)
    assert normaliser.std[position] == pytest.approx(20.0)
    height = list(normaliser.channels).index(NAMES.index("Height"))
    assert normaliser.mean[height] == pytest.approx(170.0) and normaliser.std[height] == 1.0
    before = series.values.copy()
    values = apply_normaliser(series.values, normaliser)
    assert values[:4, HR].tolist() == [-1, -1, 1, 1]
    assert values[4, HR] == pytest.approx(6.0)
    assert values[:, NAMES.index("Height")].tolist() == [0.0] * 5
    untouched = [c for c in range(76) if c not in CONTINUOUS_CHANNELS]
    np.testing.assert_array_equal(values[:, untouched], before[:, untouched])
