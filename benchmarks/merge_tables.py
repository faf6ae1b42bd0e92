"""Merge the tables of several `benchmarks/davis_dev.sh` runs into one JSON (not a test).

Each argument is NAME=FOLDER, a davis_dev.sh output folder (its table.json holds the command, the
machine, the global scores and the per-sequence table). The merged file keeps all of that per run
and adds a summary of global J&F per run, best first.

    .venv/bin/python benchmarks/merge_tables.py --out benchmarks/results/quality_resolution.json \\
        default240=out/davis-dev-final ss320r5=out/sweep/ss320r5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="NAME=FOLDER of a davis_dev.sh run")
    p.add_argument("--what", default="", help="one line saying what the runs compare")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    runs = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        if not folder:
            p.error(f"{item!r}: expected NAME=FOLDER")
        runs[name] = json.loads((Path(folder) / "table.json").read_text())
    summary = sorted(((r["global"]["results"]["JF_mean"], n) for n, r in runs.items()), reverse=True)
    doc = {"what": args.what, "summary_JF": {n: round(jf, 4) for jf, n in summary}, "runs": runs}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(f"{n:12s} J&F {jf:.4f}  ({runs[n]['command']})" for jf, n in summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
