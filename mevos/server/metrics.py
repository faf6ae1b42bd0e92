"""Prometheus metrics of the server, in a registry of its own (so servers in one process, as in
the tests, never share counters), served over HTTP on their own port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mevos.errors import require

#: per-frame stages (Timings in the proto), in seconds
STAGES = ("decode", "queue", "track", "batch_wait", "encode", "total")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The server's counters, gauges and histograms (names all start with mevos_)."""

    def __init__(self, max_batch: int = 8) -> None:
        pc = require("prometheus_client", "serve", "server metrics", package="prometheus-client")
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.sessions_active = pc.Gauge("mevos_sessions_active", "Track sessions open now", registry=r)
        self.sessions = pc.Counter("mevos_sessions", "Track sessions ended, by final status code",
                                   ["code"], registry=r)
        self.frames = pc.Counter("mevos_frames", "Frames answered", registry=r)
        self.errors = pc.Counter("mevos_errors", "Requests refused or failed, by status code", ["code"], registry=r)
        self.stage_seconds = pc.Histogram("mevos_stage_seconds", "Per-frame server time by stage",
                                          ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_calls = pc.Histogram("mevos_batch_calls", "Session calls per batched model call, by stage",
                                        ["op"], buckets=tuple(range(1, max_batch + 1)), registry=r)
        self.batch_seconds = pc.Histogram("mevos_batch_seconds", "Time of one batched model call, by stage",
                                          ["op"], buckets=_LATENCY_BUCKETS, registry=r)
        self.scheduler_queue = pc.Gauge("mevos_scheduler_queue_depth", "Model calls waiting for the scheduler",
                                        registry=r)
        self.session_queue = pc.Gauge("mevos_session_queue_depth", "Decoded frames waiting in session queues",
                                      registry=r)
        self._http: Any = None

    def bind_queues(self, scheduler_depth: Callable[[], float], session_depth: Callable[[], float]) -> None:
        """Queue depths are read when scraped."""
        self.scheduler_queue.set_function(scheduler_depth)
        self.session_queue.set_function(session_depth)

    def on_batch(self, op: str, calls: int, rows: int, seconds: float) -> None:
        self.batch_calls.labels(op).observe(calls)
        self.batch_seconds.labels(op).observe(seconds)

    def observe_frame(self, timings_ms: dict[str, float]) -> None:
        self.frames.inc()
        for stage in STAGES:
            self.stage_seconds.labels(stage).observe(timings_ms[stage] / 1000.0)

    def text(self) -> str:
        """The exposition text (what the HTTP endpoint serves)."""
        return self._pc.generate_latest(self.registry).decode()

    def serve_http(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 = any free port); returns the bound port."""
        server, _ = self._pc.start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
