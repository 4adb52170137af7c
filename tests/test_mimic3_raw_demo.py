"""Raw route vs the official pipeline on the real MIMIC-III demo (slow; needs the shared data folder).

``DEMO/raw/`` is the MIMIC-III Clinical Database Demo v1.4 and
``DEMO/mimic3-benchmarks-output/phenotyping/`` what mimic3-benchmarks' five
scripts make of it. The cohort `miracl_grid.data.mimic3_raw.read_mimic3_raw` builds from the former must
equal the one `miracl_grid.data.readers.read_mimic3_phenotyping` reads from the latter: stays, splits,
labels, period lengths, every series row (Hours and values) and every discretised cell.
DEMO is found by `tests/mimic3_demo.py` (``$MIMIC3_DEMO_DIR`` or a ``shared/data/mimic3-demo`` folder
beside the checkout); the test skips, saying so, when the data is not there.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from miracl_grid.data.discretise import discretise
from miracl_grid.data.mimic3_raw import read_mimic3_raw
from miracl_grid.data.readers import read_mimic3_phenotyping
from miracl_grid.data.schema import VARIABLES
from mimic3_demo import mimic3_demo

pytestmark = pytest.mark.slow


def _rows_by_stay(cohort) -> pd.DataFrame:
    names = cohort.stays["stay"].to_numpy(dtype=object)
    frame = cohort.events.assign(stay=names[cohort.events["row"].to_numpy()])
    return frame.sort_values(["stay", "Hours"], kind="stable").reset_index(drop=True)


def test_raw_demo_equals_official_pipeline():
    demo = mimic3_demo()
    official = read_mimic3_phenotyping(demo / "mimic3-benchmarks-output" / "phenotyping")
    raw = read_mimic3_raw(demo / "raw", threads=1)
    mine = raw.stays.set_index("stay")
    theirs = official.stays.set_index("stay")
    assert sorted(mine.index) == sorted(theirs.index)
    assert len(theirs) == 113
    order = mine.index.get_indexer(theirs.index)
    np.testing.assert_array_equal(mine["split"].to_numpy()[order], theirs["split"].to_numpy())
    assert (theirs["split"] == "test").sum() == 18
    np.testing.assert_array_equal(mine["period_length"].to_numpy()[order], theirs["period_length"].to_numpy())
    np.testing.assert_array_equal(mine["patient_id"].to_numpy()[order], theirs["patient_id"].to_numpy())
    assert raw.label_names == official.label_names
    np.testing.assert_array_equal(raw.labels[order], official.labels)

    ours_rows, their_rows = _rows_by_stay(raw), _rows_by_stay(official)
    assert len(ours_rows) == len(their_rows) == 16839
    assert ours_rows["stay"].tolist() == their_rows["stay"].tolist()
    np.testing.assert_array_equal(ours_rows["Hours"].to_numpy(), their_rows["Hours"].to_numpy())
    for variable in VARIABLES:
        a, b = ours_rows[variable.name], their_rows[variable.name]
        if variable.is_categorical:
            assert ((a.isna() & b.isna()) | (a == b)).all(), variable.name
        else:
            np.testing.assert_array_equal(pd.to_numeric(a).to_numpy(), pd.to_numeric(b).to_numpy(),
                                          err_msg=variable.name)

    every_bin = 10**6
    ours = discretise(raw.events, raw.stays["period_length"].to_numpy(), max_bins=every_bin)
    reference = discretise(official.events, official.stays["period_length"].to_numpy(), max_bins=every_bin)
    cells = 0
    for i, j in enumerate(order):
        expected = reference.values[reference.offsets[i]:reference.offsets[i + 1]]
        found = ours.values[ours.offsets[j]:ours.offsets[j + 1]]
        np.testing.assert_array_equal(found, expected, err_msg=theirs.index[i])
        cells += expected.size
    assert cells == reference.values.size == 874456  # all bins of all 113 stays × 76 channels
