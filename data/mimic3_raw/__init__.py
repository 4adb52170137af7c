"""Raw MIMIC-III v1.4 CSV tables -> the mimic3-benchmarks phenotyping cohort, with DuckDB (`read_mimic3_raw`)."""
from miracl_grid.data.mimic3_raw.reader import read_mimic3_raw

__all__ = ["read_mimic3_raw"]
