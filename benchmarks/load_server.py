"""Bounded load test of `mevos serve` on loopback: N concurrent sessions stream the demo video.

For each session count (default 1, 4, 8) a fresh server is started as a subprocess on a free
loopback port, warmed up with one short session, then N client threads each stream the same
100-frame demo video (JPEG frames, run-length masks back, `--window` frames in flight). It
checks that every session got every frame, in order, and records throughput (frames/s over all
sessions), per-frame latency (client send -> mask received: p50/p95/p99), the server's mean
batch size per model stage (from its metrics), and the batching gain: throughput relative to one
session, and, for the largest count, relative to the same count with batching off (--max-batch 1).

Not a test: it takes minutes. Writes benchmarks/results/server_load.json and server_load.png.

    python benchmarks/load_server.py [--sessions 1 4 8] [--frames 100] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`mevos serve` on a free loopback port; stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, args: argparse.Namespace, max_batch: int, max_sessions: int) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        port_file = Path(self.tmp.name) / "port"
        self.metrics_port = free_port()
        cmd = [sys.executable, "-m", "mevos", "serve", "--port", "0", "--port-file", str(port_file),
               "--metrics-port", str(self.metrics_port), "--max-batch", str(max_batch),
               "--batch-wait-ms", str(args.batch_wait_ms), "--max-sessions", str(max_sessions),
               "--device", args.device, "--log-format", "text"]
        if args.checkpoint:
            cmd += ["--model", args.checkpoint]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.log = open(Path(self.tmp.name) / "server.log", "w+")
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=self.log, cwd=REPO)
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise SystemExit(f"server did not start:\n{self.log.read()[-3000:]}")
            time.sleep(0.1)
        self.port = int(port_file.read_text())

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.tmp.cleanup()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mean_batch(metrics_text: str) -> dict[str, float]:
    """Mean session calls per batched model call, by stage, from the server's histograms."""
    out = {}
    for op in ("encode_key", "encode_value", "decode"):
        s = re.search(rf'^mevos_batch_calls_sum{{op="{op}"}} (\S+)$', metrics_text, re.MULTILINE)
        c = re.search(rf'^mevos_batch_calls_count{{op="{op}"}} (\S+)$', metrics_text, re.MULTILINE)
        if s and c and float(c.group(1)) > 0:
            out[op] = round(float(s.group(1)) / float(c.group(1)), 3)
    return out


def run_sessions(target: str, frames: list[np.ndarray], mask: np.ndarray, n: int, window: int,
                 timeout: float) -> dict[str, Any]:
    """n concurrent sessions of all frames; latencies and order checks."""
    from mevos.client import TrackingClient

    latencies: list[list[float]] = [[] for _ in range(n)]
    indices: list[list[int]] = [[] for _ in range(n)]
    errors: list[str] = []
    barrier = threading.Barrier(n + 1)

    def session(k: int) -> None:
        try:
            with TrackingClient(target) as client:
                barrier.wait()
                for r in client.track(frames, mask, encoding="rle", image_format="jpeg", window=window,
                                      timeout=timeout, client_tag=f"load {k}"):
                    indices[k].append(r.index)
                    latencies[k].append(r.latency_s or 0.0)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            errors.append(f"session {k}: {exc}")

    threads = [threading.Thread(target=session, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout + 30)
    seconds = time.perf_counter() - t0
    lat = np.array([x for per in latencies for x in per]) * 1000
    received = sum(len(i) for i in indices)
    in_order = all(i == list(range(len(i))) for i in indices)
    return {
        "sessions": n,
        "frames_per_session": len(frames),
        "frames_received": received,
        "frames_lost": n * len(frames) - received,
        "in_order": in_order,
        "errors": errors,
        "seconds": round(seconds, 3),
        "throughput_fps": round(received / seconds, 2),
        "per_session_fps": round(received / seconds / n, 2),
        "latency_ms": {p: round(float(np.percentile(lat, q)), 1) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}
        if lat.size else {},
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if r["max_batch"] > 1]
    off = [r for r in results["runs"] if r["max_batch"] == 1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["sessions"] for r in runs]
    a.plot(xs, [r["throughput_fps"] for r in runs], "o-", label=f"batching (max {runs[0]['max_batch']})")
    if off:
        a.plot([r["sessions"] for r in off], [r["throughput_fps"] for r in off], "s", color="C3",
               label="no batching (max 1)")
    a.set_xlabel("concurrent sessions")
    a.set_ylabel("frames / s (all sessions)")
    a.set_title("throughput")
    a.set_xticks(xs)
    a.set_ylim(bottom=0)
    a.legend()
    for p, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        b.plot(xs, [r["latency_ms"][p] for r in runs], style, label=p)
    b.set_xlabel("concurrent sessions")
    b.set_ylabel("ms (send -> mask)")
    b.set_title("per-frame latency")
    b.set_xticks(xs)
    b.set_ylim(bottom=0)
    b.legend()
    fig.suptitle(f"mevos serve, {results['video']}, {results['device_note']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--window", type=int, default=2, help="frames in flight per session (default 2)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the largest count with batching off")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=None, help="server torch threads (default: the server's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline of one session, seconds")
    parser.add_argument("--out", default=str(RESULTS / "server_load"), help="output path without extension")
    args = parser.parse_args(argv)

    from mevos.data.synthetic import SyntheticConfig, generate

    # The demo's video (mevos.demo), made 100 frames long.
    video = generate(SyntheticConfig(num_frames=args.frames, num_objects=3, seed=0, name="demo"))
    frames, mask = video.frames, video.labels[0]
    plan = [(n, args.max_batch) for n in args.sessions]
    if not args.no_baseline:
        plan.append((max(args.sessions), 1))
    runs = []
    for n, max_batch in plan:
        with ServerProcess(args, max_batch, max_sessions=max(args.sessions) + 1) as server:
            target = f"127.0.0.1:{server.port}"
            run_sessions(target, frames[:5], mask, 1, args.window, args.timeout)  # warm-up, not timed
            before = mean_batch(server.metrics())
            load_before = os.getloadavg()[0]
            r = run_sessions(target, frames, mask, n, args.window, args.timeout)
            r["max_batch"] = max_batch
            # The machine may be shared: its load says how much the figures can be trusted.
            r["loadavg_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
            r["mean_batch_calls"] = mean_batch(server.metrics())
            r["mean_batch_calls_warmup"] = before
        runs.append(r)
        print(f"sessions {n} max_batch {max_batch}: {r['throughput_fps']} FPS, latency {r['latency_ms']}, "
              f"lost {r['frames_lost']}, in order {r['in_order']}, batches {r['mean_batch_calls']}", flush=True)
    single = next((r for r in runs if r["sessions"] == 1 and r["max_batch"] > 1), None)
    for r in runs:
        if single:
            r["gain_vs_one_session"] = round(r["throughput_fps"] / single["throughput_fps"], 2)
    top = max(args.sessions)
    on = next((r for r in runs if r["sessions"] == top and r["max_batch"] > 1), None)
    off = next((r for r in runs if r["sessions"] == top and r["max_batch"] == 1), None)
    results = {
        "benchmark": "server_load",
        "video": f"synthetic demo video {frames[0].shape[1]}x{frames[0].shape[0]}, {video.num_objects} objects, "
                 f"{len(frames)} frames",
        "settings": "server defaults (top_k 10, mem_frames 20, refine_rounds 2); JPEG q90 in, RLE out",
        "window": args.window,
        "batch_wait_ms": args.batch_wait_ms,
        "device": args.device,
        "device_note": f"{args.device}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
        "torch_threads": args.threads or "server default (1 on the CPU)",
        "torch_threads_note": "server and clients share the machine's cores",
        "weights": args.checkpoint or "default (untrained small preset unless shipped weights exist)",
        "runs": runs,
        "batching_gain_at_max_sessions": round(on["throughput_fps"] / off["throughput_fps"], 2) if on and off else None,
        "all_frames_delivered_in_order": all(r["frames_lost"] == 0 and r["in_order"] and not r["errors"] for r in runs),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0 if results["all_frames_delivered_in_order"] else 1


if __name__ == "__main__":
    sys.exit(main())
