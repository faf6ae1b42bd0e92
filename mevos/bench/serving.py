"""The same video through the gRPC server: a real server started in this process on a free
loopback port, a real client, the torch backend. Shows what serving adds to a frame: JPEG
encode/decode of the frame, the mask encoding, the scheduler hand-off and the round trip.

Two ways of streaming: lock-step (send a frame, wait for its masks: the per-frame latency) and
pipelined (the client keeps `window` frames in flight, as `mevos stream` does: the throughput).
What serving adds to a frame is measured per frame, paired: the client's round-trip latency
minus the server's own `track` time for that frame (split into the server's decode / queue /
encode and the client plus transport), so the tracker's time, noisy on a shared machine, cancels.
"""

from __future__ import annotations

import time
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


def _lockstep(client: Any, config: TrackerConfig, frames: list[np.ndarray], first_mask: np.ndarray, warmup: int,
              device: Any) -> dict[str, Any]:
    latencies: list[float] = []
    server_ms: dict[str, list[float]] = {f: [] for f in TIMING_FIELDS}
    added: dict[str, list[float]] = {"in_server": [], "client_and_transport": [], "total": []}
    with client.session(settings=_settings(config), encoding=MASK_ENCODING, image_format=IMAGE_FORMAT,
                        window=1) as s:
        for i, frame in enumerate(frames):
            t0 = clock(device)
            s.send(frame, masks=first_mask if i == 0 else None)
            r = s.receive()
            dt = clock(device) - t0
            if i >= warmup:
                latencies.append(dt * 1e3)
                for f in TIMING_FIELDS:
                    server_ms[f].append(r.timings[f])
                # Paired per frame, so the tracker's own (noisy) time cancels out.
                added["in_server"].append(r.timings["total"] - r.timings["track"])
                added["client_and_transport"].append(dt * 1e3 - r.timings["total"])
                added["total"].append(dt * 1e3 - r.timings["track"])
        s.close_send()
        for _ in s:  # the stream ends after the last answer
            pass
    timed = len(frames) - warmup
    return {"fps": timed / (sum(latencies) / 1e3), "latency_ms": summarize(latencies),
            "server_ms": {f: summarize(v) for f, v in server_ms.items()},
            "added_ms": {k: summarize(v) for k, v in added.items()}}


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
             warmup: int, pipelined: bool) -> dict[str, Any]:
    """Start a server on port 0 with `backend`, stream `frames` lock-step (and pipelined), stop it.
    The first `warmup` frames of each stream are untimed; a 2-frame session before them warms
    the connection and the server's threads."""
    reason = grpc_unavailable()
    if reason:
        raise MissingExtraError("grpcio", "serve", "the gRPC benchmark")
    from mevos.client import TrackingClient
    from mevos.server import ServerConfig, create_server

    dev = backend.device
    t0 = time.perf_counter()
    server, port = create_server(backend, ServerConfig(host="127.0.0.1", port=0, defaults=config))
    try:
        with TrackingClient(f"127.0.0.1:{port}") as client:
            client.wait_ready(timeout=30.0)
            startup = time.perf_counter() - t0
            _lockstep(client, config, frames[:2], first_mask, 1, dev)
            with Meters(dev) as meters:
                out: dict[str, Any] = {"lockstep": _lockstep(client, config, frames, first_mask, warmup, dev)}
                if pipelined:
                    out["pipelined"] = _pipelined(client, config, frames, first_mask, warmup, dev)
    finally:
        server.stop(grace=1.0)
    return {"status": "ok", "server_startup_s": startup, "image_format": IMAGE_FORMAT, "mask_encoding": MASK_ENCODING,
            "frames_warmup": warmup, "frames_timed": len(frames) - warmup, **out, **meters.memory()}
