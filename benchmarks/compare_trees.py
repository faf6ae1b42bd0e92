"""Frame-interleaved speed comparison of the CPU Tracker in two source trees (e.g. before and after
a change), fair on a machine shared with other work: one worker process per tree, each stepping
one frame in turn on the same frames, with the same outside instrumentation in both (wrappers on
the backend instance's stage methods and the memory bank instance's read, so the stages mean the
same whatever each tree's own profiling does).

    python benchmarks/compare_trees.py /tmp/before /path/to/after --out compare.json --reps 12

Stages per frame (median over reps): encode_key, memory_read (top-k affinity + readouts),
refine_encode_value and refine_decode (R = 2 rounds), memory_encode_value (the memory entry),
other (= total - the rest: preprocess, aggregation, label map, copies), total. Also checks that
both trees give the same label maps, frame by frame.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = [(240, 427, 1, 5), (240, 427, 1, 20), (240, 427, 4, 5), (240, 427, 4, 20), (480, 854, 1, 5)]


def worker() -> None:
    """Answer setup/step commands (JSON lines on stdin) with stage timings (JSON lines on stdout)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from mevos.data.synthetic import SyntheticConfig, generate
    from mevos.runtime.backend import create_backend
    from mevos.runtime.tracker import Tracker, TrackerConfig

    backend = create_backend("torch", None, device="cpu")
    acc: dict[str, float] = {}
    value_calls: list[float] = []

    def timed(name, fn):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
        return wrapper

    def timed_value(fn):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            out = fn(*a, **k)
            value_calls.append((time.perf_counter() - t0) * 1e3)
            return out
        return wrapper

    backend.encode_key = timed("encode_key", backend.encode_key)  # type: ignore[method-assign]
    backend.encode_value = timed_value(backend.encode_value)  # type: ignore[method-assign]
    backend.decode = timed("refine_decode", backend.decode)  # type: ignore[method-assign]
    state: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "setup":
            h, w, o, mem = cmd["h"], cmd["w"], cmd["objects"], cmd["mem"]
            clip = generate(SyntheticConfig(height=h, width=w, num_frames=mem + 3 + cmd["reps"], num_objects=o,
                                            seed=0, name=f"bench-{w}x{h}-{o}obj"))
            tracker = Tracker(backend, TrackerConfig(mem_frames=mem, refine_rounds=2, max_short_side=None))
            for i in range(mem + 2):
                tracker.step(clip.frames[i], masks=clip.labels[0] if i == 0 else None)
            tracker.memory.read = timed("memory_read", tracker.memory.read)  # type: ignore[union-attr]
            state = {"tracker": tracker, "clip": clip, "i": mem + 2}
            print(json.dumps({"ok": True}), flush=True)
        elif cmd["op"] == "step":
            acc.clear()
            value_calls.clear()
            t0 = time.perf_counter()
            result = state["tracker"].step(state["clip"].frames[state["i"]])
            total = (time.perf_counter() - t0) * 1e3
            state["i"] += 1
            out = dict(acc)
            out["refine_encode_value"] = sum(value_calls[:-1])
            out["memory_encode_value"] = value_calls[-1] if value_calls else 0.0
            out["other"] = total - sum(out.values())
            out["total"] = total
            out["labels_sum"] = int(result.labels.astype(np.int64).sum())
            out["labels_hash"] = hash(result.labels.tobytes())
            print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args()
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    procs = {side: subprocess.Popen(["nice", sys.executable, os.path.abspath(__file__), "--worker"], cwd=tree,
                                    env={**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"},
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for side, tree in trees.items()}

    def ask(side: str, cmd: dict) -> dict:
        p = procs[side]
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(json.dumps(cmd) + "\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())

    results = []
    for h, w, o, mem in CONFIGS:
        for side in procs:
            ask(side, {"op": "setup", "h": h, "w": w, "objects": o, "mem": mem, "reps": args.reps})
        runs: dict[str, list[dict]] = {side: [] for side in procs}
        for rep in range(args.reps):
            for side in (list(procs) if rep % 2 == 0 else list(procs)[::-1]):
                runs[side].append(ask(side, {"op": "step"}))
        same = all(a["labels_hash"] == b["labels_hash"] for a, b in zip(runs["before"], runs["after"], strict=True))
        stages = {}
        for stage in runs["before"][0]:
            if stage.startswith("labels_"):
                continue
            b = statistics.median(x[stage] for x in runs["before"])
            a = statistics.median(x[stage] for x in runs["after"])
            stages[stage] = {"before_ms": b, "after_ms": a, "after_over_before": a / b if b > 0.05 else None}
        results.append({"resolution": f"{w}x{h}", "objects": o, "mem_frames": mem, "refine_rounds": 2,
                        "frames": args.reps, "labels_equal_per_frame": same, "stages": stages})
        print(f"{w}x{h} O={o} T={mem}: labels equal {same}; " + ", ".join(
            f"{k} {v['before_ms']:.1f}->{v['after_ms']:.1f}" for k, v in stages.items()), flush=True)
    for p in procs.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    with open(args.out, "w") as f:
        json.dump({"trees": trees, "reps": args.reps, "configs": results}, f, indent=1)


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
