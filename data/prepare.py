"""Command line and library entry: source -> materialised cohort directory (ARCHITECTURE §2, step 1).

    python -m miracl_grid.data.prepare --source synthetic --out DIR            # embedded default cohort
    python -m miracl_grid.data.prepare --source mimic3:PATH --out DIR [--notes notes.parquet]
    python -m miracl_grid.data.prepare --source mimic3:PATH --out DIR --noteevents NOTEEVENTS.csv.gz --icustays ICUSTAYS.csv.gz
    python -m miracl_grid.data.prepare --source mimic4:TASKDIR[,TSDIR] --out DIR          # FlexCare/MIRACL split kept
    python -m miracl_grid.data.prepare --source mimic4:LISTFILE[,TSDIR] --out DIR [--split-seed S]
    python -m miracl_grid.data.prepare --source mimic3-raw:MIMIC_III_DIR --out DIR [--noteevents MIMIC_III_DIR/NOTEEVENTS.csv.gz]
    python -m miracl_grid.data.prepare --verify DIR                            # full check of a cohort directory

``synthetic`` first writes the generated cohort in the mimic3-benchmarks phenotyping layout
into ``DIR/source/`` (`miracl_grid.data.synthetic.generate_synthetic_cohort`) and then reads it with
`miracl_grid.data.readers.read_mimic3_phenotyping`, the very reader a MIMIC-III user runs. Sources without
a split (one MIMIC-IV listfile) get a patient-wise 8:2 split (`miracl_grid.data.split.assign_split`, ``--split-seed``).
Then `miracl_grid.data.materialise.materialise` discretises, z-scores, hashes, writes and encodes the notes
(reusing an identical cohort and existing text features after a full check of their files).
The whole preparation holds ``DIR``'s writer lock (`miracl_grid.data.locking`): a second ``prepare`` into the
same directory is refused while the first runs.

``--verify DIR`` checks an existing cohort directory without writing: the manifest's digest, the
whole sha256 of every recorded file, the derived manifest fields and the patient-wise split
(`miracl_grid.data.dataset.CohortData` with ``verify="full"``), and every text feature set it lists.

The CLI logs progress, one ``stage NAME: S s`` line per stage, whether the text features were
reused, and prints the output directory last. Bad input exits with code 2 and the
`miracl_grid.data.errors.CohortError` message (no traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import pandas as pd

from miracl_grid.data.cohort import Cohort
from miracl_grid.data.errors import CohortError
from miracl_grid.data.locking import exclusive_writer
from miracl_grid.data.materialise import load_manifest, materialise
from miracl_grid.data.noteevents import DEFAULT_NOTE_RULE, NoteRule
from miracl_grid.data.numbers import parse_numbers
from miracl_grid.data.mimic4 import DUPLICATE_STAY_POLICIES, read_mimic4_multimodal
from miracl_grid.data.readers import UNKNOWN_CATEGORY_POLICIES, read_mimic3_phenotyping
from miracl_grid.data.split import assign_split

logger = logging.getLogger("miracl_grid.data.prepare")

SOURCE_FORMS = "synthetic | mimic3:PATH | mimic4:TASKDIR|LISTFILE[,TSDIR] | mimic3-raw:MIMIC_III_DIR"
STAGES = ("generate", "read", "discretise", "write", "text", "checksums")


def parse_source(source: str) -> tuple[str, list[str]]:
    """'synthetic' | 'mimic3:PATH' | 'mimic4:TASKDIR|LISTFILE[,TSDIR]' | 'mimic3-raw:DIR' -> (kind, arguments)."""
    kind, _, rest = source.partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic" and not rest:
        return kind, []
    if kind in ("mimic3", "mimic3-raw") and rest:
        return kind, [rest]
    if kind == "mimic4" and rest:
        parts = rest.split(",")
        if len(parts) <= 2 and all(parts):
            return kind, parts
    raise CohortError(f"--source {source!r}: expected {SOURCE_FORMS}")


def note_rule_from_arguments(window_hours: str | None, max_notes: int | None) -> NoteRule | None:
    """CLI values -> NoteRule (None when both are defaults); 'stay' = the whole ICU stay, max_notes 0 = all."""
    if window_hours is None and max_notes is None:
        return None
    window = DEFAULT_NOTE_RULE.window_hours
    if window_hours is not None:
        if window_hours.strip().lower() == "stay":
            window = None
        else:
            values, bad = parse_numbers(pd.Series([window_hours], dtype=object))
            if bad[0] or pd.isna(values[0]):
                raise CohortError(f"--note-window-hours {window_hours!r}: expected hours > 0 or 'stay'")
            window = float(values[0])
    kept = DEFAULT_NOTE_RULE.max_notes if max_notes is None else (max_notes or None)
    try:
        return NoteRule(window_hours=window, max_notes=kept, categories=DEFAULT_NOTE_RULE.categories)
    except ValueError as error:
        raise CohortError(f"--note-window-hours/--max-notes: {error}") from None


def _summary_dict(summary) -> dict | str:
    if hasattr(summary, "to_json_dict"):
        return summary.to_json_dict()
    return asdict(summary) if is_dataclass(summary) else str(summary)


def read_source(source: str, out: Path, *, notes: str | os.PathLike | None = None,
                noteevents: str | os.PathLike | None = None, icustays: str | os.PathLike | None = None,
                note_rule: NoteRule | None = None, duplicate_stays: str = "join-notes", patients: int = 1600,
                hours: int = 48, seed: int = 0, test_fraction: float = 0.2, split_seed: int = 0,
                unknown_categories: str = "error", drop_bad_stays: bool = False,
                progress: bool = True) -> Cohort:
    """Source string -> Cohort with a split (synthetic files are generated into ``out/source``)."""
    kind, arguments = parse_source(source)
    options = dict(unknown_categories=unknown_categories, drop_bad_stays=drop_bad_stays, progress=progress)
    note_options = (noteevents, icustays, note_rule)
    if kind not in ("mimic3", "mimic3-raw") and any(option is not None for option in note_options):
        raise CohortError("--noteevents/--icustays/--note-window-hours/--max-notes apply to mimic3 sources only")
    if kind == "mimic3-raw" and icustays is not None:
        raise CohortError("--icustays: a mimic3-raw source reads ICUSTAYS from its own folder")
    if kind != "mimic4" and duplicate_stays != "join-notes":
        raise CohortError("--duplicate-stays applies to mimic4 sources only")
    generate_seconds = None
    if kind == "synthetic":
        from miracl_grid.data.synthetic import generate_synthetic_cohort
        started = time.perf_counter()
        summary = generate_synthetic_cohort(out / "source", num_patients=patients, max_hours=hours, seed=seed,
                                            test_fraction=test_fraction)
        generate_seconds = time.perf_counter() - started
        logger.info("generated synthetic cohort (%d patients, %d h, seed %d) in %s", patients, hours, seed,
                    out / "source")
        cohort = read_mimic3_phenotyping(out / "source", notes, **options)
        cohort.source["synthetic"] = {"num_patients": patients, "max_hours": hours, "seed": seed,
                                      "test_fraction": test_fraction,
                                      "summary": _summary_dict(summary)}
    elif kind == "mimic3":
        cohort = read_mimic3_phenotyping(arguments[0], notes, noteevents=noteevents, icustays=icustays,
                                         note_rule=note_rule, **options)
    elif kind == "mimic3-raw":  # raw MIMIC-III CSV tables, the benchmark's rules and split (miracl_grid.data.mimic3_raw)
        from miracl_grid.data.mimic3_raw import read_mimic3_raw
        cohort = read_mimic3_raw(arguments[0], notes, noteevents=noteevents, note_rule=note_rule, **options)
    else:
        if notes is not None:
            raise CohortError("--notes applies to synthetic, mimic3 and mimic3-raw sources; a MIMIC-IV listfile "
                              "carries its notes in a past_medical_history/note/text column")
        cohort = read_mimic4_multimodal(arguments[0], arguments[1] if len(arguments) > 1 else None,
                                        duplicate_stays=duplicate_stays, **options)
    if generate_seconds is not None:
        cohort.timings = {"generate": generate_seconds, **cohort.timings}
    assign_split(cohort, test_fraction=test_fraction, seed=split_seed)
    return cohort


def prepare_cohort(source: str, out: str | os.PathLike, *, notes: str | os.PathLike | None = None,
                   noteevents: str | os.PathLike | None = None, icustays: str | os.PathLike | None = None,
                   note_rule: NoteRule | None = None, duplicate_stays: str = "join-notes",
                   encoder: str | None = None, max_tokens: int = 512, max_bins: int = 512,
                   patients: int = 1600, hours: int = 48, seed: int = 0, test_fraction: float = 0.2,
                   split_seed: int = 0, text_batch_size: int = 64, unknown_categories: str = "error",
                   drop_bad_stays: bool = False, progress: bool = True, note_encoder=None) -> Path:
    """Read ``source``, assign a split, materialise into ``out``; returns the cohort directory.
    note_encoder: see `miracl_grid.data.materialise.materialise`."""
    out = Path(out)
    with exclusive_writer(out):   # also covers the synthetic source files written into out/source
        cohort = read_source(source, out, notes=notes, noteevents=noteevents, icustays=icustays,
                             note_rule=note_rule, duplicate_stays=duplicate_stays, patients=patients, hours=hours,
                             seed=seed, test_fraction=test_fraction, split_seed=split_seed,
                             unknown_categories=unknown_categories, drop_bad_stays=drop_bad_stays,
                             progress=progress)
        logger.info("read %d stays of %d patients (%d dropped)", cohort.num_stays,
                    cohort.stays["patient_id"].nunique(), len(cohort.dropped))
        return materialise(cohort, out, max_bins=max_bins, encoder=encoder, max_tokens=max_tokens,
                           text_batch_size=text_batch_size, progress=progress, note_encoder=note_encoder)


def verify_cohort(directory: str | os.PathLike):
    """Full check of a cohort directory (module docstring); returns its `CohortData`, CohortError if bad."""
    from miracl_grid.data.dataset import CohortData

    data = CohortData(directory, verify="full")
    for key in data.text_keys:
        data.text(key)
    return data


def _input_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (exit 2): CohortError and the text encoder's TextFeatureError."""
    errors: tuple[type[Exception], ...] = (CohortError,)
    try:
        from miracl_grid.data.text_features import TextFeatureError
    except ImportError:  # pragma: no cover - text_features is part of the package
        return errors
    return errors + (TextFeatureError,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m miracl_grid.data.prepare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic", help=f"{SOURCE_FORMS} (default synthetic)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="cohort directory to write (or reuse)")
    target.add_argument("--verify", type=Path, metavar="DIR", help="check the cohort directory DIR fully "
                        "(every file's sha256, derived fields, split) and write nothing")
    parser.add_argument("--notes", default=None, help="notes table (CSV or parquet, columns stay,text)")
    parser.add_argument("--noteevents", default=None, help="mimic3, mimic3-raw: the MIMIC-III NOTEEVENTS table "
                        "(csv or csv.gz); each stay's notes are selected by miracl_grid.data.noteevents' rule")
    parser.add_argument("--icustays", default=None, help="mimic3 with --noteevents: the MIMIC-III ICUSTAYS table "
                        "(stay times)")
    parser.add_argument("--note-window-hours", default=None, help="--noteevents: hours after INTIME whose notes "
                        f"are used (default {DEFAULT_NOTE_RULE.window_hours:g}; 'stay' = the whole ICU stay)")
    parser.add_argument("--max-notes", type=int, default=None, help="--noteevents: first notes kept per stay "
                        f"(default {DEFAULT_NOTE_RULE.max_notes}; 0 = all)")
    parser.add_argument("--duplicate-stays", choices=DUPLICATE_STAY_POLICIES, default="join-notes",
                        help="mimic4: a stay on several rows (several notes of its admission): join-notes "
                        "(default; distinct notes in listfile order) or last (the last row's note, as MIRACL's loader)")
    parser.add_argument("--encoder", default=None, help="text encoder: Hugging Face id or path "
                        "(default: miracl_grid.data.text_features.DEFAULT_ENCODER)")
    parser.add_argument("--max-tokens", type=int, default=512, help="tokens kept per note (default 512)")
    parser.add_argument("--max-bins", type=int, default=512, help="last hourly bins kept per stay (default 512)")
    parser.add_argument("--text-batch-size", type=int, default=64, help="notes per encoder batch (default 64)")
    parser.add_argument("--patients", type=int, default=1600, help="synthetic: number of patients")
    parser.add_argument("--hours", type=int, default=48, help="synthetic: maximum stay length in hours")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of patients in test (0.2)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-wise split for sources "
                        "without one (MIMIC-IV)")
    parser.add_argument("--unknown-categories", choices=UNKNOWN_CATEGORY_POLICIES, default="error",
                        help="unknown categorical values: error (default) or read as missing and count")
    parser.add_argument("--drop-bad-stays", action="store_true", help="drop stays with a bad series file "
                        "(recorded with the reason in the manifest) instead of stopping")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if arguments.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    if arguments.verify is not None:
        try:
            data = verify_cohort(arguments.verify)
        except _input_errors() as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{arguments.verify}: ok ({len(data.manifest['files'])} files fully hashed, {data.num_stays} stays, "
              f"hash {data.cohort_hash[:12]})")
        return 0
    try:
        out = prepare_cohort(arguments.source, arguments.out, notes=arguments.notes,
                             noteevents=arguments.noteevents, icustays=arguments.icustays,
                             note_rule=note_rule_from_arguments(arguments.note_window_hours, arguments.max_notes),
                             duplicate_stays=arguments.duplicate_stays, encoder=arguments.encoder,
                             max_tokens=arguments.max_tokens, max_bins=arguments.max_bins,
                             patients=arguments.patients, hours=arguments.hours, seed=arguments.seed,
                             test_fraction=arguments.test_fraction, split_seed=arguments.split_seed,
                             text_batch_size=arguments.text_batch_size,
                             unknown_categories=arguments.unknown_categories,
                             drop_bad_stays=arguments.drop_bad_stays, progress=not arguments.quiet)
    except _input_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    manifest = load_manifest(out)
    timings = manifest["timings"]
    for stage in STAGES:
        if stage in timings:
            logger.info("stage %s: %.2f s", stage, timings[stage])
    key = manifest["text"]["default_key"]
    if manifest["reused"]["text"]:
        logger.info("text features %s reused", key)
    else:
        notes = manifest["num_stays"] - manifest["missingness"]["all"]["without_note"]
        logger.info("encoded %d notes in %.1f s", notes, timings.get("text", 0.0))
    logger.info("cohort %s: %d stays, %d patients, hash %s%s (total %.1f s)", out, manifest["num_stays"],
                manifest["num_patients"], manifest["cohort_hash"][:12],
                " (reused)" if manifest["reused"]["cohort"] else "", time.perf_counter() - started)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
