"""Replicas on loopback: 1, 2 and 3 `mevos serve` processes behind gRPC's round_robin, and a
failover run (kill -9 of one of 3 replicas mid-stream).

Every run streams the same DAVIS sequence (scaled to a 240 short side, JPEG in, run-length out,
`--window` frames in flight) from `--sessions` concurrent sessions over one balanced channel,
with `resume` on. Each configuration records aggregate frames/s, client latency (send -> mask
received, p50/p99) and how the sessions spread over the replicas. The failover run kills replica
0 with SIGKILL once every session has about a third of its answers, and records frames lost,
duplicated and reordered, the extra latency of the first frame answered after the move, the
time from the kill to that answer, and the J&F of the moved sessions against the undisturbed.

On a 2-core machine the replicas share the same two cores (and here, other people's jobs), so
aggregate throughput cannot grow with replicas; the point on such a machine is the spread and the
failover, not scaling. Writes benchmarks/results/replicas.json and replicas.png.

    python benchmarks/replicas.py [--replicas 1 2 3] [--sessions 6] [--frames 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DAVIS = REPO / ".." / "shared" / "data" / "davis2016"


def _replica_of(replicas: Any, session_id: str) -> int | None:
    for i in range(len(replicas.procs)):
        if f'"session": "{session_id}"' in replicas.log(i):
            return i
    return None


def _latency(runs: list[Any]) -> dict[str, float]:
    lat = np.array([x for r in runs for x in r.latency_s]) * 1000
    return {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1),
            "mean": round(float(lat.mean()), 1)}


def _delivery(runs: list[Any], frames: int) -> dict[str, int]:
    lost = sum(frames - len(set(r.indices)) for r in runs)
    duplicated = sum(len(r.indices) - len(set(r.indices)) for r in runs)
    reordered = sum(sum(1 for a, b in zip(r.indices, r.indices[1:]) if b <= a) for r in runs)
    return {"frames_lost": lost, "frames_duplicated": duplicated, "frames_reordered": reordered,
            "errors": sum(r.error is not None for r in runs)}


def run_config(n: int, args: argparse.Namespace, clip: Any, kill_at: float | None = None) -> dict[str, Any]:
    from mevos.bench.environment import load_average
    from mevos.bench.replicas import ReplicaSet, jf, stream_sessions

    settings: dict[str, Any] = {}
    with ReplicaSet(n, cwd=REPO) as replicas:
        # warm-up (not timed): one short session per replica, so each has run the model once
        stream_sessions(replicas.target, n, clip.frames[:3], clip.labels[0], settings, window=args.window)
        answered = [0] * args.sessions
        kill = threading.Event()
        killed_at: list[float] = []

        def on_frame(k: int, index: int) -> None:
            answered[k] += 1
            if kill_at is not None and min(answered) >= kill_at * args.frames:
                kill.set()

        def killer() -> None:
            if kill.wait(3600):
                killed_at.append(time.perf_counter())
                replicas.kill(0)

        t = threading.Thread(target=killer, daemon=True)
        if kill_at is not None:
            t.start()
        load_before = load_average()
        t0 = time.perf_counter()
        runs = stream_sessions(replicas.target, args.sessions, clip.frames, clip.labels[0], settings,
                               window=args.window, on_frame=on_frame)
        wall = time.perf_counter() - t0
        spread = [0] * n
        for r in runs:
            i = _replica_of(replicas, r.session_ids[0]) if r.session_ids else None
            if i is not None:
                spread[i] += 1
    total = sum(len(r.indices) for r in runs)
    out: dict[str, Any] = {
        "replicas": n, "sessions": args.sessions, "frames_per_session": args.frames,
        "wall_s": round(wall, 2), "aggregate_fps": round(total / wall, 3), "latency_ms": _latency(runs),
        "sessions_per_replica": spread, **_delivery(runs, args.frames),
        "load_average": {"before": load_before, "after": load_average()},
    }
    if kill_at is not None:
        moved = [r for r in runs if r.moved]
        kept = [r for r in runs if not r.moved]
        extra, recover = [], []
        for r in moved:
            first = r.resumed.index(True)
            before = np.median(r.latency_s[:first]) if first else float("nan")
            extra.append(round(float(r.latency_s[first] - before) * 1000, 1))
            if killed_at:
                recover.append(round((r.received_at[first] - killed_at[0]) * 1000, 1))
        out["failover"] = {
            "killed": "replica 0, SIGKILL, once every session had "
                      f"{int(kill_at * args.frames)} of {args.frames} answers",
            "sessions_moved": len(moved),
            "moves": [m for r in moved for m in r.moves],
            "extra_latency_first_frame_after_move_ms": extra,
            "kill_to_first_answer_after_move_ms": recover,
            "jf_moved": [round(jf(clip.labels, np.stack(r.labels)), 4) for r in moved],
            "jf_undisturbed": [round(jf(clip.labels, np.stack(r.labels)), 4) for r in kept],
            "first_frame_after_move": [r.indices[r.resumed.index(True)] for r in moved],
            "latency_ms_by_frame": {"moved": [[round(x * 1000) for x in r.latency_s] for r in moved],
                                    "undisturbed": [[round(x * 1000) for x in r.latency_s] for r in kept]},
        }
        f = out["failover"]
        if f["jf_moved"] and f["jf_undisturbed"]:
            f["jf_difference"] = round(float(np.mean(f["jf_moved"]) - np.mean(f["jf_undisturbed"])), 4)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ns = [r["replicas"] for r in runs]
    axes[0].bar([str(n) for n in ns], [r["aggregate_fps"] for r in runs], color="tab:blue")
    axes[0].set(xlabel="replicas (same 2 cores)", ylabel="frames/s, all sessions",
                title=f"{results['sessions']} sessions: aggregate throughput")
    axes[1].plot(ns, [r["latency_ms"]["p50"] for r in runs], "o-", label="p50")
    axes[1].plot(ns, [r["latency_ms"]["p99"] for r in runs], "s-", label="p99")
    axes[1].set(xlabel="replicas", ylabel="ms (send -> mask)", title="client latency", xticks=ns)
    axes[1].legend()
    f = results.get("failover", {}).get("failover")
    if f:
        for lat in f["latency_ms_by_frame"]["undisturbed"]:
            axes[2].plot(lat, color="tab:gray", alpha=0.5)
        for lat, first in zip(f["latency_ms_by_frame"]["moved"], f["first_frame_after_move"]):
            axes[2].plot(lat, color="tab:red")
            axes[2].plot([first], [lat[first]], "kx")  # the first frame answered after the move
        axes[2].set(xlabel="frame", ylabel="ms (send -> mask)",
                    title=f"kill -9 of 1 of 3: moved (red) vs undisturbed (grey)\n"
                          f"J&F moved {np.mean(f['jf_moved']):.3f} vs {np.mean(f['jf_undisturbed']):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--sequence", default="blackswan")
    parser.add_argument("--window", type=int, default=2, help="frames in flight per session (default 2)")
    parser.add_argument("--kill-at", type=float, default=1 / 3, help="fraction of answers before the kill")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "replicas"), help="output path without extension")
    args = parser.parse_args(argv)

    import torch

    from mevos.bench.environment import device_info, machine_info, versions
    from mevos.bench.replicas import davis_clip

    clip = davis_clip(DAVIS.resolve(), args.sequence, args.frames, short_side=240)
    scaling = []
    for n in args.replicas:
        r = run_config(n, args, clip)
        scaling.append(r)
        print(f"{n} replica(s): {r['aggregate_fps']} frames/s, latency {r['latency_ms']}, spread "
              f"{r['sessions_per_replica']}, lost {r['frames_lost']}", flush=True)
    failover = None
    if not args.no_failover:
        failover = run_config(3, args, clip, kill_at=args.kill_at)
        f = failover["failover"]
        print(f"failover: lost {failover['frames_lost']}, duplicated {failover['frames_duplicated']}, reordered "
              f"{failover['frames_reordered']}, errors {failover['errors']}, moved {f['sessions_moved']}, extra "
              f"latency {f['extra_latency_first_frame_after_move_ms']} ms, J&F moved {f['jf_moved']} vs "
              f"undisturbed {f['jf_undisturbed']}", flush=True)
    results = {
        "benchmark": "replicas",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "device": device_info(torch.device("cpu")),
        "versions": versions(),
        "video": f"DAVIS-2016 {args.sequence}, first {args.frames} frames at {clip.frames[0].shape[1]}x"
                 f"{clip.frames[0].shape[0]}",
        "settings": "server defaults (shipped small weights, one torch thread per replica); JPEG q90 in, RLE out; "
                    "resume on; one balanced channel (round_robin + health checks) for all sessions",
        "sessions": args.sessions,
        "window": args.window,
        "note": "every replica runs on the same 2-core machine (shared with other jobs; load in each run): "
                "aggregate throughput cannot grow with replicas here",
        "scaling": scaling,
        "failover": failover,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    ok = all(r["frames_lost"] == 0 and r["errors"] == 0 and r["frames_reordered"] == 0
             for r in scaling + ([failover] if failover else []))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
