"""Results -> tables, significance tests, figures and a report (no torch, no ray).

Modules: `collect` (load results.parquet or a Tune dir, last epochs, completeness),
`labels` (noise-setting and method display names), `significance` (one-sided t-tests, Tables 7/8),
`tables` (Tables 2/3/4/6/9/10), `artifacts` (selection .npz layout), `figures` (Fig. 3/4/5/7),
`report` (``python -m miracl_grid.analysis.report RUN_DIR``; `write_report`).
"""
