"""Benchmark: bytes one trial reads from the cohort per epoch, and what staging saves.

Per epoch a trial reads every train stay (training) and every test stay (evaluation): the note
token features up to ``max_note_tokens`` (float16, D per token) and the series up to
``max_series_bins`` (float32, 76 per bin). This script *counts* those bytes by running one
epoch's worth of `CohortDataset` reads over the cohort (the memmap slices each item touches)
and checks the count against the closed form from the offsets; with ``--mimic4`` it scales the
closed form to MIMIC-IV PHE (59,798 stays) at 512 tokens for MiniLM (D=384) and BioBERT (D=768),
assuming every note reaches the 512-token cut (discharge notes are longer than that).

Without staging each trial reads these bytes per epoch from shared storage; with
``--node-local-cache`` the shared storage serves one copy per node, once, and the per-epoch
reads hit local disk (or page cache when the node's RAM holds the text key).

Usage: python bench/bench_read_traffic.py --cohort DIR [--max-note-tokens 512] [--max-series-bins 512]
"""
from __future__ import annotations

import argparse

import numpy as np

from miracl_grid.data.dataset import CohortData, CohortDataset

MIMIC4_STAYS, CHANNELS, GIB = 59_798, 76, 2 ** 30


def closed_form(data: CohortData, rows: np.ndarray, max_tokens: int, max_bins: int) -> tuple[int, int]:
    text = data.text()
    tokens = np.minimum(np.diff(text.offsets)[rows], max_tokens).sum()
    bins = np.minimum(np.diff(data.series_offsets)[rows], max_bins).sum()
    return int(tokens) * text.dim * 2, int(bins) * data.series_channels * 4


def counted(data: CohortData, rows: np.ndarray, max_tokens: int, max_bins: int) -> tuple[int, int]:
    dataset = CohortDataset(data, rows, max_series_bins=max_bins, max_note_tokens=max_tokens)
    text_bytes = series_bytes = 0
    for position in range(len(dataset)):
        row = int(dataset.rows[position])
        text_bytes += dataset.text.note(row)[:max_tokens].nbytes
        series_bytes += data.series(row)[-max_bins:].nbytes
    return text_bytes, series_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--max-note-tokens", type=int, default=512)
    parser.add_argument("--max-series-bins", type=int, default=512)
    parser.add_argument("--mimic4", action="store_true", help="also print the MIMIC-IV PHE extrapolation")
    args = parser.parse_args()
    data = CohortData(args.cohort)
    rows = np.concatenate([data.rows("train"), data.rows("test")])
    formula = closed_form(data, rows, args.max_note_tokens, args.max_series_bins)
    count = counted(data, rows, args.max_note_tokens, args.max_series_bins)
    assert count == formula, (count, formula)
    features = data.text().features.nbytes
    print(f"cohort {args.cohort}: {len(rows)} stays read per epoch; text key {data.text_key} (D={data.note_dim}) "
          f"{features / 2**20:.1f} MiB on disk")
    print(f"per trial per epoch: text {count[0] / 2**20:.2f} MiB + series {count[1] / 2**20:.2f} MiB "
          f"(counted = closed form); {count[0] / features:.0%} of the text store")
    if args.mimic4:
        series_bound = MIMIC4_STAYS * args.max_series_bins * CHANNELS * 4
        for name, dim in (("MiniLM", 384), ("BioBERT", 768)):
            text = MIMIC4_STAYS * min(args.max_note_tokens, 512) * dim * 2
            print(f"MIMIC-IV PHE, {name} at 512 tokens: text store {text / GIB:.1f} GiB; per trial per epoch "
                  f"{text / GIB:.1f} GiB text + at most {series_bound / GIB:.1f} GiB series "
                  f"({args.max_series_bins} bins x {CHANNELS} x float32 per stay)")


if __name__ == "__main__":
    main()
