"""The plumbing of one Track stream: a reader thread that pulls requests off the wire, checks and
decodes them into a bounded queue, and the handler side that takes them with an idle timeout.

The bounded queue is the backpressure: when the tracker falls behind, the reader stops pulling,
gRPC's flow control stops the client. A slow client blocks only its own handler thread (in gRPC's
send), never the shared scheduler; the handler marks each send, and the servicer's watchdog
cancels a call whose send has waited longer than the idle timeout (a client that stopped reading).
Cancellation is a flag set from `context.add_callback`; both threads poll it at least every
POLL_S, so a vanished client's session ends within a second.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.server.limits import RequestError
from mevos.server.session import FrameJob, RequestReader

POLL_S = 0.1


class End:
    """Queue item: the client half-closed the stream after `count` messages."""

    def __init__(self, count: int) -> None:
        self.count = count


class Gone:
    """Queue item: the request stream broke (the call was cancelled or the transport failed)."""


class Failure:
    """Queue item: the reader failed unexpectedly (a bug, reported as INTERNAL)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamRun:
    """Reader thread + bounded queue of one stream."""

    def __init__(self, requests: Iterator[pb.TrackRequest], reader: RequestReader, queue_size: int,
                 name: str = "mevos-reader") -> None:
        self._requests = requests
        self.reader = reader
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.cancelled = threading.Event()
        self.sending_since: float | None = None  # perf_counter when the pending send began
        self.stop_reason: str | None = None  # why the server ended the call (send timeout, shutdown)
        self._cancel_call: Callable[[], Any] | None = None
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Stop both sides (idempotent; safe from any thread, including gRPC's callbacks)."""
        self.cancelled.set()

    def bind_call(self, cancel_call: Callable[[], Any]) -> None:
        """How to cancel the gRPC call itself (context.cancel): the only way to wake a handler
        that is blocked in gRPC's send."""
        self._cancel_call = cancel_call

    def sending(self) -> None:
        """The handler hands a response to gRPC (which may block on flow control)."""
        self.sending_since = time.perf_counter()

    def sent(self) -> None:
        """gRPC took the response (asked for the next one)."""
        self.sending_since = None

    def stop(self, reason: str) -> None:
        """End the call from the server side: stop both threads and, when a send is pending,
        cancel the gRPC call so that the blocked handler returns (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel()
        if self.sending_since is not None and self._cancel_call is not None:
            self._cancel_call()

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def _put(self, item: Any) -> bool:
        while not self.cancelled.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            for req in self._requests:
                received = time.perf_counter()
                try:
                    item: Any = self.reader.read(req, received)
                except RequestError as exc:
                    item = exc
                if not self._put(item) or isinstance(item, RequestError):
                    return  # the handler ends the stream at the error; stop reading
            self._put(End(self.reader.count))
        except grpc.RpcError:  # the request iterator raises this when the call dies under it
            self._put(Gone())
        except Exception as exc:  # noqa: BLE001 - a bug: the handler turns it into INTERNAL
            self._put(Failure(exc))

    def next_item(self, idle_timeout_s: float, time_remaining: float | None) -> FrameJob | End | Gone | None:
        """The next decoded job (or End/Gone); None once cancelled. Raises RequestError
        (DEADLINE_EXCEEDED) when nothing arrives within the idle timeout or the call's deadline."""
        limit = idle_timeout_s if time_remaining is None else min(idle_timeout_s, max(time_remaining, 0.0))
        deadline = time.perf_counter() + limit
        while not self.cancelled.is_set():
            left = deadline - time.perf_counter()
            if left <= 0:
                if time_remaining is not None and time_remaining <= idle_timeout_s:
                    raise RequestError("DEADLINE_EXCEEDED", "the call's deadline passed while waiting for a frame")
                raise RequestError("DEADLINE_EXCEEDED",
                                   f"no frame for {idle_timeout_s:g} s: the session was idle too long and is closed")
            try:
                item = self.queue.get(timeout=min(POLL_S, left))
            except queue.Empty:
                continue
            if isinstance(item, RequestError):
                raise item
            if isinstance(item, Failure):
                raise item.error
            return item
        return None
