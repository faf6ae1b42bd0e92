"""Compare `mevos bench` results of two code versions, stage by stage (not a test).

Each side is one or more bench JSON files of the same plan (e.g. `mevos bench --quick` run in a
worktree of the old commit and in this tree, alternating: before, after, after, before). Per
(variant, resolution, objects, memory frames, stage) the smallest of a side's medians is its figure
(the least disturbed run on a shared machine); a stage is "slower" when after / before exceeds
`--threshold`. End to end: the largest FPS of each side.

    python benchmarks/bench_compare.py --before b1.json b2.json --after a1.json a2.json \
        --out benchmarks/results/bench_quick_compare.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _key(r: dict[str, Any]) -> tuple[str, str, int, int]:
    return r["variant"], r["resolution"], int(r["objects"]), int(r["mem_frames"])


def _stages(docs: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[float]]:
    out: dict[tuple[Any, ...], list[float]] = {}
    for doc in docs:
        for r in doc["results"]["stages"]:
            for stage, s in r["stages_ms"].items():
                out.setdefault((*_key(r), stage), []).append(float(s["median"]))
            out.setdefault((*_key(r), "frame"), []).append(float(r["frame_ms"]))
    return out


def _fps(docs: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[float]]:
    out: dict[tuple[Any, ...], list[float]] = {}
    for doc in docs:
        for r in doc["results"].get("end_to_end", []):
            out.setdefault(_key(r), []).append(float(r["fps"]))
    return out


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Per-stage and end-to-end ratios of two sets of bench documents."""
    sb, sa = _stages(before), _stages(after)
    stages = []
    for key in sorted(set(sb) & set(sa)):
        b, a = min(sb[key]), min(sa[key])
        stages.append({"variant": key[0], "resolution": key[1], "objects": key[2], "mem_frames": key[3],
                       "stage": key[4], "before_ms_runs": sb[key], "after_ms_runs": sa[key], "before_ms": b,
                       "after_ms": a, "after_over_before": a / b if b > 0 else None})
    fb, fa = _fps(before), _fps(after)
    e2e = [{"variant": k[0], "resolution": k[1], "objects": k[2], "mem_frames": k[3], "before_fps": max(fb[k]),
            "after_fps": max(fa[k]), "speedup": max(fa[k]) / max(fb[k])} for k in sorted(set(fb) & set(fa))]
    slower = [s for s in stages if s["after_over_before"] is not None and s["after_over_before"] > threshold]
    return {"threshold": threshold, "stages": stages, "end_to_end": e2e, "slower": slower,
            "only_before": sorted(map(list, set(sb) - set(sa))), "only_after": sorted(map(list, set(sa) - set(sb)))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", nargs="+", required=True, type=Path, help="bench JSON files of the old code")
    p.add_argument("--after", nargs="+", required=True, type=Path, help="bench JSON files of the new code")
    p.add_argument("--threshold", type=float, default=1.10, help="after / before above this is 'slower'")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    before = [json.loads(f.read_text()) for f in args.before]
    after = [json.loads(f.read_text()) for f in args.after]
    doc = {"schema": "mevos.bench.compare/1", "command": sys.argv,
           "before": [{"file": str(f), "created": d["created"], "command": d["command"], "versions": d["versions"],
                       "load_average": d["machine"].get("load_average_start")} for f, d in zip(args.before, before)],
           "after": [{"file": str(f), "created": d["created"], "command": d["command"], "versions": d["versions"],
                      "load_average": d["machine"].get("load_average_start")} for f, d in zip(args.after, after)],
           "machine": after[0]["machine"], "device": after[0]["device"],
           **compare(before, after, args.threshold)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for s in doc["stages"]:
        flag = "  SLOWER" if s in doc["slower"] else ""
        print(f"{s['variant']:12s} {s['resolution']} O={s['objects']} T={s['mem_frames']:2d} {s['stage']:20s} "
              f"{s['before_ms']:9.1f} -> {s['after_ms']:9.1f} ms  x{s['after_over_before']:.2f}{flag}")
    for e in doc["end_to_end"]:
        print(f"e2e {e['variant']:12s} {e['resolution']} O={e['objects']} T={e['mem_frames']}: "
              f"{e['before_fps']:.2f} -> {e['after_fps']:.2f} FPS (x{e['speedup']:.2f})")
    print(f"{len(doc['slower'])} stage(s) slower than x{args.threshold}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
