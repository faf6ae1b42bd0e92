"""The mevos.v1.Tracking servicer: thin. Each Track call gets a session slot, a StreamRun (reader
thread + bounded queue) and a Session (tracker); errors become status codes with context.abort.
A watchdog thread cancels calls whose responses the client stopped taking."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from mevos import __version__
from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.proto.mevos.v1 import tracking_pb2_grpc as pb_grpc
from mevos.runtime.tracker import FrameTracker, TrackerConfig
from mevos.server.budget import MemoryBudget
from mevos.server.limits import Limits, RequestError, defaults_to_proto
from mevos.server.logs import LOGGER, log_event
from mevos.server.metrics import Metrics
from mevos.server.scheduler import Scheduler
from mevos.server.session import RequestReader, Session, Unparsable
from mevos.server.stream import End, Gone, StreamRun

#: longest status message sent or logged (a message can quote a request)
MAX_MESSAGE = 1000
#: how often the watchdog looks for stalled sends
WATCH_S = 0.25


@dataclass(frozen=True)
class ModelInfo:
    model: str
    preset: str
    backend: str
    device: str


class SessionRegistry:
    """Open sessions, at most `limit`; release is idempotent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._runs: dict[str, StreamRun | None] = {}

    def acquire(self, sid: str) -> bool:
        with self._lock:
            if len(self._runs) >= self.limit:
                return False
            self._runs[sid] = None
            return True

    def attach(self, sid: str, run: StreamRun) -> None:
        with self._lock:
            if sid in self._runs:
                self._runs[sid] = run

    def release(self, sid: str) -> bool:
        with self._lock:
            return self._runs.pop(sid, False) is not False

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._runs)

    def queued_frames(self) -> int:
        with self._lock:
            return sum(r.depth for r in self._runs.values() if r is not None)

    def runs(self) -> list[StreamRun]:
        with self._lock:
            return [r for r in self._runs.values() if r is not None]


def clip(message: str) -> str:
    """A status message short enough for gRPC's metadata and the logs."""
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "... (truncated)"


class TrackingServicer(pb_grpc.TrackingServicer):
    def __init__(self, scheduler: Scheduler, limits: Limits, defaults: TrackerConfig, metrics: Metrics,
                 info: ModelInfo, auth_required: bool, fast: Callable[[TrackerConfig], FrameTracker] | None = None
                 ) -> None:
        self.scheduler, self.limits, self.defaults = scheduler, limits, defaults
        self.fast = fast  # sessions start on the fast tracker (see Session)
        self.metrics, self.info, self.auth_required = metrics, info, auth_required
        self.sessions = SessionRegistry(limits.max_sessions)
        self.budget = MemoryBudget(scheduler.backend.config, limits.max_session_memory_bytes, limits.max_frame_side)
        self.draining = threading.Event()
        self.stopping = threading.Event()  # the drain's grace ended: open sessions are being ended
        self.grace_s: float | None = None
        self.log: logging.Logger = LOGGER
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="mevos-send-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        """Cancel calls whose pending send (blocked by flow control: the client does not read)
        has waited longer than the idle timeout, so that their slots are freed."""
        limit = self.limits.idle_timeout_s
        while not self._closed.wait(WATCH_S):
            now = time.perf_counter()
            for run in self.sessions.runs():
                since = run.sending_since
                if since is not None and now - since > limit:
                    run.stop(f"the client took no response for {limit:g} s (it stopped reading); "
                             "the session was cancelled")

    def end_sessions(self, grace_s: float) -> None:
        """The drain's grace ended: end every open session with UNAVAILABLE."""
        self.grace_s = grace_s
        self.stopping.set()
        for run in self.sessions.runs():
            run.stop(self._shutdown_message())

    def _shutdown_message(self) -> str:
        return (f"the server is shutting down: the grace period of {self.grace_s:g} s ended before this session "
                "did; reconnect to another instance")

    def close(self) -> None:
        self._closed.set()

    def _reject(self, context: grpc.ServicerContext, code: str, message: str, **fields: Any) -> None:
        message = clip(message)
        self.metrics.errors.labels(code).inc()
        log_event(self.log, "rejected", logging.WARNING, code=code, message=message, **fields)
        context.abort(getattr(grpc.StatusCode, code), message)

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        if isinstance(request, Unparsable):
            self._reject(context, "INVALID_ARGUMENT", f"{request.nbytes} bytes that are not a valid GetServerInfoRequest "
                                                      "(protobuf parse error)", peer=context.peer())
        i = self.info
        return pb.ServerInfo(
            version=__version__, model=i.model, preset=i.preset, backend=i.backend, device=i.device,
            limits=self.limits.to_proto(), defaults=defaults_to_proto(self.defaults),
            active_sessions=self.sessions.active, auth_required=self.auth_required,
        )

    def Track(self, request_iterator: Iterator[pb.TrackRequest],
              context: grpc.ServicerContext) -> Iterator[pb.TrackResponse]:
        sid = uuid.uuid4().hex[:12]
        peer = context.peer()
        if self.draining.is_set():
            self._reject(context, "UNAVAILABLE", "the server is shutting down; retry on another instance",
                         session=sid, peer=peer)
        if not self.sessions.acquire(sid):
            self._reject(context, "RESOURCE_EXHAUSTED",
                         f"the server is at its limit of {self.limits.max_sessions} concurrent sessions; retry later",
                         session=sid, peer=peer)
        run = StreamRun(request_iterator, RequestReader(self.limits, self.defaults, self.budget),
                        self.limits.session_queue, name=f"mevos-reader-{sid}")
        run.bind_call(context.cancel)
        self.sessions.attach(sid, run)

        def ended() -> None:  # gRPC calls this when the call ends, for whatever reason
            run.cancel()
            if self.sessions.release(sid):
                self.metrics.sessions_active.set(self.sessions.active)

        if not context.add_callback(ended):  # the call already ended before we got here
            ended()
        self.metrics.sessions_active.set(self.sessions.active)
        run.start()
        t_start, code, frames, session = time.perf_counter(), "CANCELLED", 0, None
        message = ""
        try:
            while True:
                if self.stopping.is_set():
                    raise RequestError("UNAVAILABLE", self._shutdown_message())
                item = run.next_item(self.limits.idle_timeout_s, context.time_remaining())
                if item is None and self.stopping.is_set():
                    raise RequestError("UNAVAILABLE", self._shutdown_message())
                if item is None or isinstance(item, Gone):
                    break  # cancelled or vanished client: nobody to answer
                if isinstance(item, End):
                    if item.count == 0:
                        raise RequestError("INVALID_ARGUMENT", "the stream ended before its first message")
                    code = "OK"
                    break
                if session is None:
                    assert item.settings is not None and item.geometry is not None
                    session = Session(sid, self.scheduler.session_backend(), item.settings, self.budget, item.geometry,
                                      self.fast)
                    resumed: dict[str, Any] = {}
                    if item.settings.resumed_from is not None:
                        resumed = {"resumed_from": item.settings.resumed_from, "first_index": item.settings.first_index}
                    log_event(self.log, "session_start", session=sid, peer=peer, tag=item.settings.client_tag,
                              size=f"{item.frame.shape[1]}x{item.frame.shape[0]}",
                              config=item.settings.config.__dict__, **resumed)
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise RequestError("DEADLINE_EXCEEDED", "the call's deadline passed")
                response = session.step(item, time.perf_counter())
                t = response.timings
                self.metrics.observe_frame({"decode": t.decode_ms, "queue": t.queue_ms, "track": t.track_ms,
                                            "batch_wait": t.batch_wait_ms, "encode": t.encode_ms,
                                            "total": t.total_ms})
                if self.draining.is_set():  # tell the client to move the session (it may, or ride out the grace)
                    response.draining = True
                frames += 1
                run.sending()
                yield response
                run.sent()
        except RequestError as exc:
            code, message = exc.code, clip(exc.message)
            self.metrics.errors.labels(code).inc()
            log_event(self.log, "request_error", logging.WARNING, session=sid, code=code, message=message)
            context.abort(getattr(grpc.StatusCode, code), message)
        except Exception:
            if self.stopping.is_set():  # the scheduler closed under a frame at the end of the drain
                code, message = "UNAVAILABLE", self._shutdown_message()
                self.metrics.errors.labels(code).inc()
                log_event(self.log, "request_error", logging.WARNING, session=sid, code=code, message=message)
                context.abort(grpc.StatusCode.UNAVAILABLE, message)
            code, message = "INTERNAL", f"internal error in session {sid}; the server log has the details"
            self.metrics.errors.labels(code).inc()
            log_event(self.log, "internal_error", logging.ERROR, exc_info=True, session=sid)
            context.abort(grpc.StatusCode.INTERNAL, message)
        finally:
            run.cancel()
            ended()
            if code == "CANCELLED" and run.stop_reason is not None:  # ended by the server while sending
                code = "UNAVAILABLE" if self.stopping.is_set() else code
                message = run.stop_reason
            self.metrics.sessions.labels(code).inc()
            log_event(self.log, "session_end", session=sid, code=code, frames=frames,
                      seconds=round(time.perf_counter() - t_start, 3), message=message)
