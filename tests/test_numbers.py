"""The one numeric-cell grammar (miracl_grid.data.numbers) and its use by every reader."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from miracl_grid.data.errors import CohortError
from miracl_grid.data.numbers import parse_integers, parse_numbers
from miracl_grid.data.readers import read_mimic3_phenotyping
from series_layout import series_line

ACCEPTED = {"0": 0.0, "12": 12.0, "-2.5": -2.5, "+3": 3.0, ".5": 0.5, "5.": 5.0, "1e3": 1000.0, "1.5E-2": 0.015,
            "007": 7.0, "-0": 0.0}
REJECTED = [" 1", "1 ", "1_000", "nan", "NaN", "inf", "-inf", "infinity", "0x10", "1e", "e3", "1.2.3", "--1", "+",
            "١٢", "1,5", "½", "True", "1e3.5"]


def test_accepted_and_rejected_cells_one_by_one_and_mixed():
    cells = list(ACCEPTED) + REJECTED + [None, np.nan, ""]
    values, bad = parse_numbers(pd.Series(cells, dtype=object))
    np.testing.assert_array_equal(values[:len(ACCEPTED)], list(ACCEPTED.values()))
    assert bad.tolist() == [False] * len(ACCEPTED) + [True] * len(REJECTED) + [False] * 3
    assert np.isnan(values[len(ACCEPTED):]).all()
    # a cell's verdict never depends on its neighbours
    for cell in REJECTED:
        assert parse_numbers(pd.Series([cell], dtype=object))[1].tolist() == [True], cell
        assert parse_numbers(pd.Series(["1", cell, "2"], dtype=str))[1].tolist() == [False, True, False], cell
    for cell, value in ACCEPTED.items():
        got, flag = parse_numbers(pd.Series([cell, "x"], dtype=object))
        assert got[0] == value and flag.tolist() == [False, True], cell


def test_overflow_parses_to_inf_and_integers_allow_a_zero_fraction():
    values, bad = parse_numbers(pd.Series(["1e999"], dtype=object))
    assert np.isinf(values[0]) and not bad[0]
    values, bad = parse_integers(pd.Series(["10006", "10006.0", "1.5", "1e3", "", "-4"], dtype=object))
    np.testing.assert_array_equal(values[[0, 1, 5]], [10006, 10006, -4])
    assert bad.tolist() == [False, False, True, True, False, False]


@pytest.mark.parametrize("cell", ["1_000", " 80", "0x50", "Infinity"])
def test_series_cell_outside_the_grammar_is_rejected_even_when_every_other_cell_is_a_number(tmp_path, cell):
    from test_readers import write_mimic3, write_series
    root = write_mimic3(tmp_path)
    write_series(root / "train" / "10_episode2_timeseries.csv", [series_line("0.5", Heart_Rate=cell)])
    with pytest.raises(CohortError, match=rf"10_episode2_timeseries.csv: line 2, column 'Heart Rate': expected a finite "
                                          rf"number or an empty cell, found '{cell}'"):
        read_mimic3_phenotyping(root)


@pytest.mark.parametrize("column, cell", [("period_length", "1_0"), ("period_length", "inf"), ("Shock", " 1"),
                                          ("Shock", "1_0")])
def test_listfile_cell_outside_the_grammar_is_rejected(tmp_path, column, cell):
    from test_readers import write_mimic3
    root = write_mimic3(tmp_path)
    listfile = root / "train" / "listfile.csv"
    table = pd.read_csv(listfile, dtype=str, keep_default_na=False)
    table.loc[2, column] = cell
    table.to_csv(listfile, index=False)
    with pytest.raises(CohortError, match=rf"train/listfile.csv: line 4, column '{column}'"):
        read_mimic3_phenotyping(root)


def test_hours_outside_the_grammar_is_rejected(tmp_path):
    from test_readers import write_mimic3, write_series
    root = write_mimic3(tmp_path)
    write_series(root / "test" / "21_episode1_timeseries.csv", [series_line("1_0", Heart_Rate="80")])
    with pytest.raises(CohortError, match="21_episode1_timeseries.csv: line 2, column 'Hours': expected a finite number"):
        read_mimic3_phenotyping(root)
