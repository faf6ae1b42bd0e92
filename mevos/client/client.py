"""Python client of the mevos.v1 Tracking API.

    with TrackingClient("127.0.0.1:50051") as client:
        for result in client.track(frames, first_mask, settings={"top_k": 10}):
            result.labels                        # H x W uint8 object ids

    # many replicas, balanced by gRPC (round_robin + health checks); sessions move on failure/drain:
    with TrackingClient("10.0.0.1:50051,10.0.0.2:50051") as client:   # or "dns:///mevos:50051"
        for result in client.track(frames, first_mask, resume=True):
            result.resumed                       # True after the session moved to another replica

    # or interactively, adding / correcting / removing objects mid-stream:
    with client.session(settings={"mem_frames": 10}) as s:
        s.send(frame0, masks=labels0)
        first = s.receive()
        s.send(frame1, remove=[2])
        ...

Every failure of a call is a ClientError with the gRPC status code attached.
"""

from __future__ import annotations

import ipaddress
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mevos.errors import MevosError, require
from mevos.proto import codec

require("grpc", "serve", "the gRPC client", package="grpcio")
import grpc  # noqa: E402

from mevos.proto.mevos.v1 import tracking_pb2 as pb  # noqa: E402
from mevos.proto.mevos.v1 import tracking_pb2_grpc as pb_grpc  # noqa: E402

if TYPE_CHECKING:
    from mevos.client.resume import ResumableSession

#: SessionSettings fields a client may set (unset: the server's defaults)
SETTING_FIELDS = ("top_k", "temperature", "mem_frames", "refine_rounds", "radius", "short_side")


class ClientError(MevosError):
    """A failed call: `code` is the status code name (e.g. 'INVALID_ARGUMENT'), `details` the
    server's message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, exc: BaseException) -> ClientError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(code.name if code is not None else "UNKNOWN", details or "")


def is_movable(err: ClientError, resuming: bool = False) -> bool:
    """Whether a session that failed with `err` should move to another replica: UNAVAILABLE (the
    replica died, refused because it drains, or ended the session at the end of its grace), or a
    CANCELLED the client did not ask for (a server that stops cancels the calls still open: the
    caller checks that it did not cancel); while already moving, also a replica at its session
    limit (the balancer picks another next time)."""
    if err.code in ("UNAVAILABLE", "CANCELLED"):
        return True
    return resuming and err.code == "RESOURCE_EXHAUSTED" and "concurrent sessions" in err.details


@dataclass
class TrackResult:
    """One frame's answer. labels: H x W uint8 ids; objects: id -> (score, area);
    timings: server-side milliseconds by stage; latency_s: client send -> receive;
    client_frame_id: the id the request carried, echoed (None when it had none);
    resumed: the frame was tracked after the session moved to another replica (re-seeded from the
    last label map, not the original first mask); moves: how often the session had moved by then."""

    index: int
    labels: np.ndarray
    objects: dict[int, tuple[float, int]]
    timings: dict[str, float]
    session_id: str
    latency_s: float | None = None
    client_frame_id: int | None = None
    resumed: bool = False
    moves: int = 0

    @classmethod
    def from_proto(cls, r: pb.TrackResponse, latency_s: float | None = None) -> TrackResult:
        t = r.timings
        return cls(
            index=int(r.frame_index),
            labels=codec.decode_label_map(r.labels, what=f"response {r.frame_index} labels"),
            objects={o.object_id: (o.score, o.area) for o in r.objects},
            timings={"decode": t.decode_ms, "queue": t.queue_ms, "track": t.track_ms,
                     "batch_wait": t.batch_wait_ms, "encode": t.encode_ms, "total": t.total_ms},
            session_id=r.session_id,
            latency_s=latency_s,
            client_frame_id=r.client_frame_id if r.HasField("client_frame_id") else None,
            resumed=r.resumed,
        )


def make_settings(settings: Mapping[str, Any] | pb.SessionSettings | None = None, encoding: str = "png",
                  client_tag: str = "") -> pb.SessionSettings:
    """SessionSettings from a dict of SETTING_FIELDS (None values are left unset)."""
    if isinstance(settings, pb.SessionSettings):
        return settings
    s = pb.SessionSettings(mask_encoding=cast(pb.MaskEncoding.ValueType, codec.MASK_ENCODINGS[encoding]),
                           client_tag=client_tag)
    for k, v in (settings or {}).items():
        if k not in SETTING_FIELDS:
            raise MevosError(f"unknown session setting {k!r}; known: {', '.join(SETTING_FIELDS)}")
        if v is not None:
            setattr(s, k, v)
    return s


_CLOSE = object()


class RequestStream:
    """One Track call fed from a queue: put() sends a request, close() half-closes (once)."""

    def __init__(self, stub: pb_grpc.TrackingStub, metadata: list[tuple[str, str]], timeout: float | None) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()
        self.half_closed = False
        self.call = stub.Track(self._iter(), metadata=metadata, timeout=timeout)

    def _iter(self) -> Iterator[pb.TrackRequest]:
        while True:
            item = self.requests.get()
            if item is _CLOSE:
                return
            yield item

    def put(self, req: pb.TrackRequest) -> None:
        self.requests.put(req)

    def close(self) -> None:
        if not self.half_closed:
            self.half_closed = True
            self.requests.put(_CLOSE)


class StreamSession:
    """One open Track stream. send() queues a frame, blocking while `window` frames are sent but
    not yet answered; receive() returns the next answer in order. Not thread-safe per direction, but
    send and receive may run on two threads."""

    def __init__(self, stub: pb_grpc.TrackingStub, settings: pb.SessionSettings, image_format: str,
                 jpeg_quality: int, window: int, metadata: list[tuple[str, str]], timeout: float | None) -> None:
        self._settings = settings
        self._format, self._quality = codec.IMAGE_FORMATS[image_format], jpeg_quality
        self._window = threading.Semaphore(max(1, window))  # frames sent but not yet answered
        self._sent_at: deque[float] = deque()
        self._sent = 0
        self._stream = RequestStream(stub, metadata, timeout)
        self._call = self._stream.call

    def request(self, frame: np.ndarray, masks: np.ndarray | None = None,
                remove: Iterable[int] = (), frame_id: int | None = None) -> pb.TrackRequest:
        """The TrackRequest send() would send (settings attached to the first)."""
        req = pb.TrackRequest(frame=codec.encode_image(frame, self._format, self._quality),
                              remove_object_ids=list(remove))
        if frame_id is not None:
            req.client_frame_id = frame_id
        if masks is not None:
            req.masks.CopyFrom(codec.encode_label_map(np.asarray(masks), "png"))
        if self._sent == 0:
            req.settings.CopyFrom(self._settings)
        return req

    def send(self, frame: np.ndarray, masks: np.ndarray | None = None, remove: Iterable[int] = (),
             frame_id: int | None = None) -> None:
        """Queue one frame; masks: H x W ids of new/corrected objects; remove: ids to stop tracking;
        frame_id: echoed in the frame's TrackResult.client_frame_id."""
        self.send_request(self.request(frame, masks, remove, frame_id))

    def send_request(self, req: pb.TrackRequest) -> None:
        """Queue a raw TrackRequest as is (for tests and tools)."""
        if self._stream.half_closed:
            raise MevosError("the session is closed for sending")
        while not self._window.acquire(timeout=0.1):
            if self._call.done():  # the server ended the stream: receive() reports why
                return
        self._sent_at.append(time.perf_counter())
        self._stream.put(req)
        self._sent += 1

    def close_send(self) -> None:
        """Half-close: no more frames; the answers to those sent still arrive."""
        self._stream.close()

    def receive(self) -> TrackResult:
        """The next answer, in order. Raises ClientError when the stream failed, StopIteration when
        it ended normally."""
        try:
            r = next(self._call)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None
        self._window.release()
        sent = self._sent_at.popleft() if self._sent_at else None
        return TrackResult.from_proto(r, None if sent is None else time.perf_counter() - sent)

    def __iter__(self) -> Iterator[TrackResult]:
        while True:
            try:
                yield self.receive()
            except StopIteration:
                return

    def cancel(self) -> None:
        """Abandon the stream (the server frees the session)."""
        self._call.cancel()

    def ended(self) -> bool:
        """True once the stream is over (receive() then says how)."""
        return bool(self._call.done())

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.cancel()
        else:
            self.close_send()


def is_local_target(target: str) -> bool:
    """True for a gRPC target on this machine: a loopback address, localhost, or a unix socket."""
    t = target
    if t.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if t.startswith(scheme):
            t = t[len(scheme):]
            break
    if t.startswith("["):
        host = t[1:].split("]", 1)[0]
    elif t.count(":") > 1:  # a bare IPv6 address
        host = t
    else:
        host = t.rsplit(":", 1)[0] if ":" in t else t
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TrackingClient:
    """A channel to one mevos server or to many replicas. target: `host:port`, a comma list
    `host:port,host:port,...` of replicas, or a gRPC URI (`dns:///name:port`, `ipv4:...`); a list
    or a dns: name is balanced by gRPC's round_robin with client-side health checks, so replicas
    that are down or draining get no new sessions (balance=True/False forces the choice).
    token: bearer token (None: $MEVOS_TOKEN if set); tls: use TLS (root_certificates: PEM bytes
    of the CA, None = system roots). A token is never sent over a plaintext channel to another
    machine (anyone on the path could read it) unless allow_plaintext_token=True says that this
    network is trusted."""

    def __init__(self, target: str, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, options: Iterable[tuple[str, Any]] = (),
                 allow_plaintext_token: bool = False, balance: bool | None = None) -> None:
        from mevos import env
        from mevos.client.targets import parse_target

        self.target = target
        self.targets = parse_target(target, balance)
        source = "token" if token is not None else "$MEVOS_TOKEN"
        token = token if token is not None else env.value("MEVOS_TOKEN")
        secure = tls or root_certificates is not None
        local = all(is_local_target(a) for a in self.targets.addresses or (self.targets.uri,))
        if token and not secure and not allow_plaintext_token and not local:
            raise MevosError(f"refusing to send the bearer token ({source}) to {target} over a plaintext channel; "
                             "use TLS (tls=True or root_certificates=...; `mevos stream --tls/--tls-ca`), or pass "
                             "allow_plaintext_token=True on a trusted network")
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", -1)]
        if self.targets.service_config is not None:
            # ours, not one a DNS TXT record might carry
            opts += [("grpc.service_config", self.targets.service_config), ("grpc.service_config_disable_resolution", 1)]
        opts += list(options)
        uri = self.targets.uri
        if secure:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(uri, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(uri, options=opts)
        self.stub = pb_grpc.TrackingStub(self.channel)

    def server_info(self, timeout: float | None = 10.0) -> pb.ServerInfo:
        try:
            return self.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """grpc.health.v1 status name of `service` ('' = the whole server): SERVING, NOT_SERVING, ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            r = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=timeout)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server's health is SERVING; ClientError(UNAVAILABLE) after `timeout`."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                if self.health(timeout=min(2.0, max(0.1, deadline - time.monotonic()))) == "SERVING":
                    return
            except ClientError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise ClientError("UNAVAILABLE", f"server at {self.target} not SERVING after {timeout:g} s ({last})")

    def session(self, settings: Mapping[str, Any] | pb.SessionSettings | None = None, encoding: str = "png",
                image_format: str = "jpeg", jpeg_quality: int = 90, window: int = 4, timeout: float | None = None,
                client_tag: str = "", resume: bool = False,
                resume_timeout: float = 30.0) -> StreamSession | ResumableSession:
        """Open a Track stream (nothing is sent until the first send): a StreamSession, or with
        resume=True a ResumableSession (same interface) that moves to another replica when its
        server fails (UNAVAILABLE) or drains, trying for at most resume_timeout seconds per move."""
        s = make_settings(settings, encoding, client_tag)
        if resume_timeout <= 0:
            raise MevosError(f"resume_timeout must be > 0 seconds, got {resume_timeout:g}")
        if resume:
            from mevos.client.resume import ResumableSession

            return ResumableSession(self.stub, s, image_format, jpeg_quality, window, self._metadata, timeout,
                                    resume_timeout)
        return StreamSession(self.stub, s, image_format, jpeg_quality, window, self._metadata, timeout)

    def track(self, frames: Iterable[np.ndarray], first_mask: np.ndarray,
              settings: Mapping[str, Any] | pb.SessionSettings | None = None, **session_kw: Any) -> Iterator[TrackResult]:
        """Stream `frames` (read lazily, on a sender thread) and yield the answers as they arrive.
        first_mask: H x W ids of the objects on the first frame. session_kw: as session(), e.g.
        resume=True to survive a replica's failure or drain."""
        s = self.session(settings, **session_kw)
        failure: list[BaseException] = []

        def sender() -> None:
            try:
                for i, frame in enumerate(frames):
                    s.send(frame, masks=first_mask if i == 0 else None)
                    if s.ended():
                        break
            except BaseException as exc:  # noqa: BLE001 - re-raised on the receiving thread
                failure.append(exc)
                s.cancel()
            finally:
                s.close_send()

        thread = threading.Thread(target=sender, name="mevos-stream-sender", daemon=True)
        thread.start()
        try:
            for result in s:
                yield result
        except ClientError:
            if failure:
                raise failure[0] from None
            raise
        finally:
            if thread.is_alive():
                s.cancel()
            thread.join(timeout=5)
        if failure:
            raise failure[0]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TrackingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
