"""Score result masks against DAVIS ground truth with the official DAVIS-2017 semi-supervised
protocol (J: region IoU, F: boundary F-measure; first and last frames not scored).

Results are laid out like DAVIS: <results>/<sequence>/<frame>.png, one palette (or grayscale) PNG
of object ids per ground-truth frame, with the ground truth's file names. Every sequence folder
in <results> is scored unless --sequences names some. Beside the scores goes the copy-the-first-
mask baseline (the first frame's ground truth predicted on every frame), the floor to beat.

Writes <out>per_object.csv and <out>global.csv (6 decimals, the format of the official
reference tables); --out defaults to the results folder itself.

example:
  mevos eval --davis data/DAVIS --results runs/r18/davis-val --sequences blackswan,dog
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mevos.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--davis", required=True, metavar="ROOT", help="DAVIS root holding Annotations/<resolution>/<sequence>/*.png"
    )
    parser.add_argument(
        "--results", required=True, metavar="DIR", help="folder of result masks: DIR/<sequence>/<frame>.png"
    )
    parser.add_argument("--resolution", default="480p", help="annotation resolution folder (default: %(default)s)")
    parser.add_argument(
        "--sequences", metavar="A,B,...", help="comma-separated sequences to score (default: every folder in DIR)"
    )
    parser.add_argument(
        "--out",
        metavar="CSV_PREFIX",
        help="prefix of the CSV files: PREFIXper_object.csv, PREFIXglobal.csv; a folder puts them inside it "
        "(default: the results folder)",
    )
    parser.add_argument(
        "--exclude-void",
        action="store_true",
        help="leave ground-truth pixels labelled 255 out of J and F (the official code counts them as background)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="score sequences in N processes (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from mevos.atomic import write_text_atomic
    from mevos.eval.evaluate import evaluate, format_table, global_csv, per_object_csv

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    sequences = None
    if args.sequences is not None:
        sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
        if not sequences:
            raise InputError("--sequences names no sequence")
    ev = evaluate(
        args.davis,
        args.results,
        resolution=args.resolution,
        sequences=sequences,
        exclude_void=args.exclude_void,
        workers=args.workers,
    )
    rows = {"results": ev.overall, "copy_first_mask": ev.baseline}
    print(f"{len(ev.sequences)} sequences, {ev.overall.n_objects} objects")
    print(format_table(rows))

    prefix = _prefix(args.out, Path(args.results))
    per_object = write_text_atomic(Path(f"{prefix}per_object.csv"), per_object_csv(ev.per_object))
    global_ = write_text_atomic(Path(f"{prefix}global.csv"), global_csv(rows))
    print(f"wrote {per_object} and {global_}")
    return 0


def _prefix(out: str | None, results: Path) -> str:
    if out is None:
        return f"{results}/"
    if Path(out).is_dir() and not out.endswith(("/", "\\")):
        return f"{out}/"
    return out
