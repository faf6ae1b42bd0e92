"""Does a smaller training crop learn as much per step? (not a test)

For each seed, trains the same steps of a phase from the same seeded weights on the same seeded
clips at crop_size and at a smaller crop (`--crops`), then scores the weights reached in float32 on
the same fixed batches at crop_size (`train_throughput.measure`, this tree only). The seeds give
the spread of that score between runs that differ only in their random draws: a crop whose
difference lies within that spread learns as much per step.

  nice -n 10 .venv/bin/python benchmarks/train_crop_loss.py --phases corr,joint --crops 256,224 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from train_throughput import measure  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/unlabeled/davis2016-train")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--phases", default="corr,joint")
    p.add_argument("--crops", type=_ints, default=[256, 224], help="training crops; the first is the reference")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/train_crop_loss.json")
    args = p.parse_args()

    from mevos.bench.environment import load_average, machine_info, versions

    t0 = time.time()
    doc: dict[str, Any] = {
        "schema": "mevos.bench.train_crop_loss/1", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv, "machine": machine_info(), "versions": versions(),
        "settings": {k: v for k, v in vars(args).items()}, "load_average_start": load_average(), "phases": {},
    }
    for phase in args.phases.split(","):
        runs: dict[str, dict[str, float]] = {}
        for seed in args.seeds:
            for crop in args.crops:
                key = "corr_crop_size" if phase == "corr" else "joint_crop_size"
                r = measure(phase, args.preset, args.data, args.steps, 0, args.eval_batches, args.threads,
                            overrides=[f"seed={seed}", f"{key}={crop}"])
                runs.setdefault(str(seed), {})[str(crop)] = round(r["eval_fp32"]["total"], 5)
                print(f"{phase} seed {seed} crop {crop}: fp32 eval {r['eval_fp32']['total']:.4f} "
                      f"({r['samples_per_cpu_s']:.2f} clips per CPU second)", file=sys.stderr, flush=True)
        ref = str(args.crops[0])
        diffs = {str(c): [round(runs[str(s)][str(c)] - runs[str(s)][ref], 5) for s in args.seeds] for c in args.crops[1:]}
        # Spread between runs that differ only in their draws: the reference crop's score over seeds
        # relative to each seed's own eval batches is not available (each seed draws its own), so the
        # spread is the standard deviation of the differences themselves, beside their mean.
        doc["phases"][phase] = {
            "eval_fp32_total": runs,
            "difference_to_reference": {c: {"per_seed": d, "mean": round(statistics.fmean(d), 5),
                                            "stdev": round(statistics.stdev(d), 5) if len(d) > 1 else None}
                                        for c, d in diffs.items()},
        }
    doc["load_average_end"] = load_average()
    doc["wall_seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
