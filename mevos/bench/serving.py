"""The same video through the gRPC server: a real server started in this process on a free
loopback port, a real client, the torch backend. Shows what serving adds to a frame: JPEG
encode/decode of the frame, the mask encoding, the scheduler hand-off and the round trip.

Two ways of streaming: lock-step (send a frame, wait for its masks: the per-frame latency) and
pipelined (the client keeps `window` frames in flight, as `mevos stream` does: the throughput).
What serving adds to a frame is measured per frame, paired: the client's round-trip latency
minus the server's own `track` time for that frame (less the batching wait it holds), split into
the server's decode / queue / batching / encode and the client plus transport, so the tracker's
time, noisy on a shared machine, cancels. The thread hand-offs to the scheduler inside `track`
are not in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mevos.bench.measure import Meters, clock, summarize
from mevos.errors import MissingExtraError
from mevos.runtime.backend import Backend
from mevos.runtime.tracker import TrackerConfig

#: What the client sends and asks for (those of `mevos stream`).
IMAGE_FORMAT = "jpeg"
MASK_ENCODING = "rle"
WINDOW = 4
TIMING_FIELDS = ("decode", "queue", "batch_wait", "track", "encode", "total")


def grpc_unavailable() -> str | None:
    """Why the server cannot run here, or None."""
    try:
        import grpc  # noqa: F401
        import grpc_health  # noqa: F401
        import grpc_reflection  # noqa: F401
    except ImportError as exc:
        return f"grpcio is not installed ({exc}); pip install 'mevos[serve]'"
    return None


def _settings(config: TrackerConfig) -> dict[str, Any]:
    return {"top_k": config.top_k, "temperature": config.temperature, "mem_frames": config.mem_frames,
            "refine_rounds": config.refine_rounds, "radius": config.radius}


class _Lockstep:
    """Raw per-frame figures of lock-step streams, accumulated over rounds."""

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.server: dict[str, list[float]] = {f: [] for f in TIMING_FIELDS}
        # What serving adds, paired per frame so that the tracker's own (noisy) time cancels:
        # round trip minus the server's track time, plus the batching wait the track time holds.
        self.added: dict[str, list[float]] = {"in_server": [], "client_and_transport": [], "total": []}

    def stream(self, client: Any, config: TrackerConfig, frames: list[np.ndarray], first_mask: np.ndarray,
               warmup: int, device: Any) -> None:
        with client.session(settings=_settings(config), encoding=MASK_ENCODING, image_format=IMAGE_FORMAT,
                            window=1) as s:
            for i, frame in enumerate(frames):
                t0 = clock(device)
                s.send(frame, masks=first_mask if i == 0 else None)
                r = s.receive()
                ms = (clock(device) - t0) * 1e3
                if i < warmup:
                    continue
                t = r.timings
                self.latency.append(ms)
                for f in TIMING_FIELDS:
                    self.server[f].append(t[f])
                tracker_ms = t["track"] - t["batch_wait"]
                self.added["in_server"].append(t["total"] - tracker_ms)
                self.added["client_and_transport"].append(ms - t["total"])
                self.added["total"].append(ms - tracker_ms)
            s.close_send()
            for _ in s:  # the stream ends after the last answer
                pass

    def result(self) -> dict[str, Any]:
        return {"fps": len(self.latency) / (sum(self.latency) / 1e3), "latency_ms": summarize(self.latency),
                "server_ms": {f: summarize(v) for f, v in self.server.items()},
                "added_ms": {k: summarize(v) for k, v in self.added.items()}}


def _pipelined(client: Any, config: TrackerConfig, frames: list[np.ndarray], first_mask: np.ndarray, warmup: int,
               device: Any) -> dict[str, Any]:
    received: list[float] = []
    latencies: list[float] = []
    for r in client.track(frames, first_mask, settings=_settings(config), encoding=MASK_ENCODING,
                          image_format=IMAGE_FORMAT, window=WINDOW):
        received.append(clock(device))
        if r.index >= warmup and r.latency_s is not None:
            latencies.append(r.latency_s * 1e3)
    timed = len(frames) - warmup
    span = received[-1] - received[warmup - 1] if warmup >= 1 else received[-1] - received[0]
    return {"fps": timed / span if span > 0 else float("nan"), "window": WINDOW, "latency_ms": summarize(latencies)}


def run_grpc(backend: Backend, config: TrackerConfig, frames: list[np.ndarray], first_mask: np.ndarray,
             warmup: int, pipelined: bool, in_process: Callable[[], dict[str, Any]], rounds: int = 2
             ) -> dict[str, Any]:
    """Start a server on port 0 with `backend`; `rounds` times, run `in_process` (the Tracker in
    this process on the same frames) and then stream `frames` lock-step; then once pipelined;
    stop the server. Alternating keeps the two sides close in time on a machine whose load
    drifts. The first `warmup` frames of each stream are untimed; a 2-frame session first warms
    the connection and the server's threads."""
    reason = grpc_unavailable()
    if reason:
        raise MissingExtraError("grpcio", "serve", "the gRPC benchmark")
    from mevos.client import TrackingClient
    from mevos.server import ServerConfig, create_server

    dev = backend.device
    t0 = time.perf_counter()
    server, port = create_server(backend, ServerConfig(host="127.0.0.1", port=0, defaults=config))
    local: list[float] = []
    try:
        with TrackingClient(f"127.0.0.1:{port}") as client:
            client.wait_ready(timeout=30.0)
            startup = time.perf_counter() - t0
            _Lockstep().stream(client, config, frames[:2], first_mask, 1, dev)
            lock = _Lockstep()
            with Meters(dev) as meters:
                for _ in range(rounds):
                    local += in_process()["frame_ms"]
                    lock.stream(client, config, frames, first_mask, warmup, dev)
                out: dict[str, Any] = {"lockstep": lock.result()}
                if pipelined:
                    out["pipelined"] = _pipelined(client, config, frames, first_mask, warmup, dev)
    finally:
        server.stop(grace=1.0)
    return {"status": "ok", "server_startup_s": startup, "image_format": IMAGE_FORMAT, "mask_encoding": MASK_ENCODING,
            "rounds": rounds, "frames_warmup": warmup, "frames_timed": len(frames) - warmup,
            "in_process": {"fps": len(local) / (sum(local) / 1e3), "ms_per_frame": summarize(local)},
            **out, **meters.memory()}
