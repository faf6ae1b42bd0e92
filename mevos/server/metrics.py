"""Prometheus metrics of the server, in a registry of its own (so servers in one process, as in
the tests, never share counters), served over HTTP on their own port by a small server with a
bounded number of threads and a header timeout (prometheus_client's own opens a thread per
connection and waits forever for headers)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from mevos.errors import require

#: per-frame stages (Timings in the proto), in seconds
STAGES = ("decode", "queue", "track", "batch_wait", "encode", "total")
#: metrics HTTP: worker threads, connections waiting for one (more are closed at once), and the
#: seconds a connection may take to send its request line and headers (each read)
HTTP_THREADS, HTTP_BACKLOG, HTTP_HEADER_TIMEOUT_S = 4, 16, 5.0
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

    def serve_http(self, host: str, port: int, header_timeout_s: float = HTTP_HEADER_TIMEOUT_S) -> int:
        """Serve /metrics on host:port (0 = any free port); returns the bound port."""
        server = MetricsHTTPServer(host, port, self.text, header_timeout_s)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="mevos-metrics",
                         daemon=True).start()
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class MetricsHTTPServer(HTTPServer):
    """GET /metrics (or /) with the exposition text; HTTP_THREADS workers, at most HTTP_BACKLOG
    connections waiting for them, each read bounded by header_timeout_s."""

    daemon_threads = True

    def __init__(self, host: str, port: int, text: Callable[[], str], header_timeout_s: float) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._pool = futures.ThreadPoolExecutor(HTTP_THREADS, thread_name_prefix="mevos-metrics-http")
        self._slots = threading.BoundedSemaphore(HTTP_THREADS + HTTP_BACKLOG)
        text_fn, timeout = text, header_timeout_s

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                self.timeout = timeout
                super().setup()

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] not in ("/", "/metrics"):
                    self.send_error(404)
                    return
                body = text_fn().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        super().__init__((host, port), Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # too many at once: close, spend no thread
            self.shutdown_request(request)
            return
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a broken or slow client; nothing to report
            pass
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
