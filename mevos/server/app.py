"""Assembles a server: gRPC (Tracking + health + reflection, optional TLS and token auth), the
shared batching scheduler, and Prometheus metrics over HTTP.

    server, port = create_server(backend, ServerConfig(port=0))   # tests: any free loopback port
    ...
    server.stop(grace=5.0)    # drain: refuse new sessions, let open ones finish, then end them
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mevos.errors import InputError, UsageError, require
from mevos.runtime.backend import Backend
from mevos.runtime.tracker import TrackerConfig
from mevos.server.limits import Limits
from mevos.server.logs import LOGGER, log_event
from mevos.server.metrics import Metrics
from mevos.server.scheduler import Scheduler

grpc = require("grpc", "serve", "the gRPC server", package="grpcio")

SERVICE = "mevos.v1.Tracking"
#: reflection is served under both names; grpcurl and most tools ask for v1 first
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
#: after the grace, how long sessions get to finish their frame and send their UNAVAILABLE status
END_WAIT_S = 5.0


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
    fast: bool = False  # sessions run the fast tracker (torch backend on CUDA; runtime.options.use_fast_tracker)

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


def _check_tls(cert: bytes, key: bytes, cert_path: str, key_path: str) -> None:
    """UsageError unless the PEMs parse and the key matches the certificate (gRPC only says
    'Failed to bind' for either, after logging to stderr)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        c, k = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        c.write_bytes(cert)
        k.write_bytes(key)
        try:
            ctx.load_cert_chain(str(c), str(k))
        except ssl.SSLError as exc:
            what = ("the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc)
                    else "not a valid PEM certificate chain and private key")
            raise UsageError(f"TLS: {cert_path} and {key_path}: {what} ({exc.reason or exc})") from None


def _check_port_free(host: str, port: int) -> None:
    """UsageError when host:port cannot be bound (in use, or not an address of this machine).
    gRPC would fail too, but with a RuntimeError and C-core log lines."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {_address(host, port)}: {exc.strerror}") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                s.bind(addr)
            except OSError as exc:
                why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise UsageError(f"cannot listen on {_address(host, port)}: {why}") from None


def _parser(cls: Any, on_error: Callable[[int], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: bytes that do not parse become on_error(nbytes),
    which the servicer answers with INVALID_ARGUMENT (gRPC's own answer would be INTERNAL)."""
    from google.protobuf.message import DecodeError

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeError, ValueError):
            return on_error(len(data))

    return parse


def _tracking_handler(servicer: Any) -> Any:
    """mevos.v1.Tracking as the generated add_TrackingServicer_to_server registers it, but with
    deserializers that never raise."""
    from mevos.proto.mevos.v1 import tracking_pb2 as pb
    from mevos.server.session import Unparsable

    handlers = {
        "Track": grpc.stream_stream_rpc_method_handler(
            servicer.Track, request_deserializer=_parser(pb.TrackRequest, Unparsable),
            response_serializer=pb.TrackResponse.SerializeToString),
        "GetServerInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetServerInfo, request_deserializer=_parser(pb.GetServerInfoRequest, Unparsable),
            response_serializer=pb.ServerInfo.SerializeToString),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _reflection_v1_handler(servicer: Any) -> Any:
    """grpc.reflection.v1 served by the v1alpha servicer: the two protocols' messages are
    field-for-field the same (v1 is v1alpha renamed), so the v1alpha classes parse v1 bytes."""
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString)
    return grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler})


class MevosServer:
    """A running server. `port` and `metrics_port` are the bound ports."""

    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

        from mevos.proto.mevos.v1 import tracking_pb2 as pb
        from mevos.server.auth import TokenAuthInterceptor
        from mevos.server.servicer import ModelInfo, TrackingServicer

        lim = config.limits
        lim.check_defaults(config.defaults)
        preflight(config)
        self.config = config
        self.metrics = Metrics(lim.max_batch)
        self.scheduler = Scheduler(backend, lim.max_batch, lim.batch_wait_ms / 1000.0, self.metrics.on_batch)
        info = ModelInfo(config.model_description, backend.config.name, backend.name, str(backend.device))
        self.servicer = TrackingServicer(self.scheduler, lim, config.defaults, self.metrics, info,
                                         auth_required=config.token is not None,
                                         fast=_fast_sessions(backend) if config.fast else None)
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
        self.grpc_server.add_generic_rpc_handlers((_tracking_handler(self.servicer),))
        self.health = health.HealthServicer()
        self._serving = health_pb2.HealthCheckResponse.SERVING
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        names = (pb.DESCRIPTOR.services_by_name["Tracking"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, REFLECTION_V1, reflection.SERVICE_NAME)
        reflector = reflection.ReflectionServicer(names)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, self.grpc_server)
        self.grpc_server.add_generic_rpc_handlers((_reflection_v1_handler(reflector),))

        address = _address(config.host, config.port)
        try:
            if config.tls_cert is not None and config.tls_key is not None:
                creds = grpc.ssl_server_credentials([(_read(config.tls_key, "key"),
                                                      _read(config.tls_cert, "certificate"))])
                bound = self.grpc_server.add_secure_port(address, creds)
            else:
                bound = self.grpc_server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
            bound = 0
        if bound == 0:
            self.servicer.close()
            self.scheduler.close()
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
        """Drain: health NOT_SERVING and new sessions refused with UNAVAILABLE (the server keeps
        answering, so clients and load balancers see why); open sessions get `grace` seconds to
        finish, then end with UNAVAILABLE; then the server stops. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = 0.0 if grace is None else max(0.0, grace)
        # Health first: balancing clients stop picking this server before its sessions are told to move.
        self.health.enter_graceful_shutdown()
        self.servicer.draining.set()
        log_event(LOGGER, "draining", sessions=self.active_sessions, grace_s=grace)
        self._wait_sessions(grace)
        if self.active_sessions:
            log_event(LOGGER, "grace_ended", logging.WARNING, sessions=self.active_sessions, grace_s=grace)
            self.servicer.end_sessions(grace)
            self._wait_sessions(END_WAIT_S)
        self.grpc_server.stop(0.5).wait()
        self.servicer.close()
        self.scheduler.close()
        self.metrics.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        log_event(LOGGER, "stopped")

    def _wait_sessions(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.active_sessions and time.monotonic() < deadline:
            time.sleep(0.05)

    def wait(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def _fast_sessions(backend: Backend) -> Callable[[TrackerConfig], Any]:
    """A fast-tracker factory for the sessions, after compiling and running the fused kernels once
    (at start, so no session's first frame waits for NVRTC)."""
    from mevos.runtime.backend import TorchBackend
    from mevos.runtime.fast import FastOptions, FastTracker, warm_kernels

    if not isinstance(backend, TorchBackend) or backend.device.type != "cuda":
        raise UsageError(f"the fast tracker runs the torch backend on CUDA, not {backend.name} on {backend.device}")
    path = warm_kernels(backend.device, backend.config.key_dim)
    log_event(LOGGER, "fast_tracker", affinity=path)
    options = FastOptions(fp16=backend.fp16)

    def make(config: TrackerConfig) -> FastTracker:
        return FastTracker(backend.model, config, device=backend.device, options=options)

    return make


def preflight(config: ServerConfig) -> None:
    """The start-up checks that can fail on the operator's input, each one clear UsageError:
    readable, matching TLS files and a free port."""
    if config.tls_cert is not None and config.tls_key is not None:
        _check_tls(_read(config.tls_cert, "certificate"), _read(config.tls_key, "key"), config.tls_cert, config.tls_key)
    _check_port_free(config.host, config.port)


def create_server(backend: Backend, config: ServerConfig | None = None) -> tuple[MevosServer, int]:
    """Build and start a server; returns (server, bound port). Use port=0 for any free port."""
    server = MevosServer(backend, config or ServerConfig())
    server.start()
    return server, server.port
