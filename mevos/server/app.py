"""Assembles a server: gRPC (Tracking + health + reflection, optional TLS and token auth), the
shared batching scheduler, and Prometheus metrics over HTTP.

    server, port = create_server(backend, ServerConfig(port=0))   # tests: any free loopback port
    ...
    server.stop(grace=5.0)    # drain: refuse new sessions, let open ones finish, then cancel
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

from mevos.errors import InputError, UsageError, require
from mevos.runtime.backend import Backend
from mevos.runtime.tracker import TrackerConfig
from mevos.server.limits import Limits
from mevos.server.logs import LOGGER, log_event
from mevos.server.metrics import Metrics
from mevos.server.scheduler import Scheduler

grpc = require("grpc", "serve", "the gRPC server", package="grpcio")

SERVICE = "mevos.v1.Tracking"


@dataclass(frozen=True)
class ServerConfig:
    """Where and how to serve. metrics_port: None = no metrics endpoint, 0 = any free port."""

    host: str = "127.0.0.1"
    port: int = 50051
    limits: Limits = field(default_factory=Limits)
    defaults: TrackerConfig = field(default_factory=TrackerConfig)
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int | None = None
    model_description: str = ""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("TLS needs both a certificate and a key file")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is outside 0..65535")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"TLS {what} file {p} does not exist")
    return p.read_bytes()


class MevosServer:
    """A running server. `port` and `metrics_port` are the bound ports."""

    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from mevos.proto.mevos.v1 import tracking_pb2 as pb
        from mevos.proto.mevos.v1 import tracking_pb2_grpc as pb_grpc
        from mevos.server.auth import TokenAuthInterceptor
        from mevos.server.servicer import ModelInfo, TrackingServicer

        lim = config.limits
        lim.check_defaults(config.defaults)
        self.config = config
        self.metrics = Metrics(lim.max_batch)
        self.scheduler = Scheduler(backend, lim.max_batch, lim.batch_wait_ms / 1000.0, self.metrics.on_batch)
        info = ModelInfo(config.model_description, backend.config.name, backend.name, str(backend.device))
        self.servicer = TrackingServicer(self.scheduler, lim, config.defaults, self.metrics, info,
                                         auth_required=config.token is not None)
        self.metrics.bind_queues(lambda: self.scheduler.queue_depth, self.servicer.sessions.queued_frames)
        interceptors = []
        if config.token is not None:
            interceptors.append(TokenAuthInterceptor(
                config.token, lambda method: self.metrics.errors.labels("UNAUTHENTICATED").inc()))
        # Every Track call holds one pool thread for its life; headroom lets over-limit calls be
        # refused promptly and GetServerInfo / health answer while all sessions are busy.
        self._pool = futures.ThreadPoolExecutor(max_workers=lim.max_sessions + 8, thread_name_prefix="mevos-grpc")
        self.grpc_server = grpc.server(
            self._pool,
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", lim.transport_max_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not silently shared
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ],
        )
        pb_grpc.add_TrackingServicer_to_server(self.servicer, self.grpc_server)
        self.health = health.HealthServicer()
        self._serving = health_pb2.HealthCheckResponse.SERVING
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        names = (pb.DESCRIPTOR.services_by_name["Tracking"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.grpc_server)

        address = _address(config.host, config.port)
        if config.tls_cert is not None and config.tls_key is not None:
            creds = grpc.ssl_server_credentials([(_read(config.tls_key, "key"), _read(config.tls_cert, "certificate"))])
            bound = self.grpc_server.add_secure_port(address, creds)
        else:
            bound = self.grpc_server.add_insecure_port(address)
        if bound == 0:
            raise UsageError(f"cannot listen on {address} (port in use, or not an address of this machine)")
        self.port = bound
        self.metrics_port: int | None = None
        if config.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve_http(config.host, config.metrics_port)
            except OSError as exc:
                raise UsageError(f"cannot serve metrics on {_address(config.host, config.metrics_port)}: {exc}") from None
        self._stopped = threading.Event()

    def start(self) -> MevosServer:
        self.grpc_server.start()
        for name in ("", SERVICE):
            self.health.set(name, self._serving)
        c = self.config
        log_event(LOGGER, "serving", address=_address(c.host, self.port), metrics_port=self.metrics_port,
                  tls=c.tls_cert is not None, auth=c.token is not None, model=c.model_description,
                  backend=self.servicer.info.backend, device=self.servicer.info.device,
                  limits=c.limits.__dict__)
        if c.host not in ("127.0.0.1", "localhost", "::1", "[::1]") and (c.tls_cert is None or c.token is None):
            log_event(LOGGER, "exposed", logging.WARNING, address=_address(c.host, self.port),
                      message="listening beyond loopback without both TLS and a token")
        return self

    @property
    def active_sessions(self) -> int:
        return self.servicer.sessions.active

    def stop(self, grace: float | None = 5.0) -> None:
        """Drain: health NOT_SERVING, new sessions refused; open sessions get `grace` seconds to
        finish, then are cancelled. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.servicer.draining.set()
        self.health.enter_graceful_shutdown()
        log_event(LOGGER, "draining", sessions=self.active_sessions, grace_s=grace)
        self.grpc_server.stop(grace).wait()
        self.scheduler.close()
        self.metrics.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        log_event(LOGGER, "stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(backend: Backend, config: ServerConfig | None = None) -> tuple[MevosServer, int]:
    """Build and start a server; returns (server, bound port). Use port=0 for any free port."""
    server = MevosServer(backend, config or ServerConfig())
    server.start()
    return server, server.port
