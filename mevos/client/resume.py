"""A Track session that survives its server: failover and drain on the client side.

When the stream fails with UNAVAILABLE (the replica died, or its drain's grace ended), or a
response says the server is draining, the session is reopened through the same channel (the
balancer picks a healthy replica), seeded with the last frame that got an answer and that
answer's label map as the new first mask, with the session's settings and a `resume` marker; the
frames that had no answer yet are sent again, and the caller goes on receiving, every frame once
and in order. The re-seed's own response only repeats the last label map and is dropped.

On a drain no frame is re-sent: the client half-closes the old stream, takes its remaining
answers (the server answers during its grace period), holds new frames meanwhile, and then
moves. After a failure, the frames in flight (at most `window`) are tracked again elsewhere.

What a move loses: the memory of the old replica (its pinned first frame and recent frames) is
replaced by the one re-seed frame, so masks after a move can differ a little from an undisturbed
run; objects with no pixel in the last label map are not carried over (a later removal of such an
id is dropped). When the last label map has no object at all, the seed is the session's
original first frame and mask.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mevos.client.client import ClientError, RequestStream, TrackResult, is_movable
from mevos.errors import MevosError
from mevos.proto import codec
from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.proto.mevos.v1 import tracking_pb2_grpc as pb_grpc

#: first and largest pause between attempts to reopen a session (doubling)
BACKOFF_S = (0.05, 2.0)


@dataclass
class _Pending:
    """A frame sent, not yet answered."""

    index: int  # the session's frame index
    request: pb.TrackRequest
    ids: frozenset[int]  # object ids its masks give
    sent_at: float


@dataclass
class _Seed:
    """The last answered frame: what a move re-seeds from."""

    index: int
    frame: pb.Image
    labels: np.ndarray


@dataclass
class MoveLog:
    """What happened to a session: one entry per move (why, when, frames re-sent)."""

    moves: list[dict[str, Any]] = field(default_factory=list)


class ResumableSession:
    """A Track session that moves to another replica instead of failing (see the module doc).
    Same interface as StreamSession: send(), receive(), close_send(), cancel(), iteration.
    resume_timeout: how long one move may keep trying (replicas refusing or unreachable) before
    the last error is raised."""

    def __init__(self, stub: pb_grpc.TrackingStub, settings: pb.SessionSettings, image_format: str,
                 jpeg_quality: int, window: int, metadata: list[tuple[str, str]], timeout: float | None,
                 resume_timeout: float = 30.0) -> None:
        self._stub, self._metadata = stub, metadata
        self._settings = settings
        self._format, self._quality = codec.IMAGE_FORMATS[image_format], jpeg_quality
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._resume_timeout = resume_timeout
        self._lock = threading.Lock()
        self._window = threading.Semaphore(max(1, window))
        self._pending: deque[_Pending] = deque()
        self._next = 0
        self._closed = False  # the caller half-closed
        self._holding = False  # a drain move is under way: new frames wait for the next stream
        self._first: _Pending | None = None
        self._seed: _Seed | None = None
        self._skip = 0  # responses to drop (the re-seed's)
        self._resumed = False
        self._failed: BaseException | None = None
        self._origin = ""  # session id on the first replica
        self.log = MoveLog()
        self._stream = RequestStream(stub, metadata, self._remaining())

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise ClientError("DEADLINE_EXCEEDED", "the session's deadline passed while moving it to another server")
        return left

    @property
    def moves(self) -> int:
        """How many times the session moved to another replica."""
        return len(self.log.moves)

    def ended(self) -> bool:
        """True once the session failed for good (receive() raises why)."""
        return self._failed is not None

    def send(self, frame: np.ndarray, masks: np.ndarray | None = None, remove: Iterable[int] = (),
             frame_id: int | None = None) -> None:
        """Queue one frame (as StreamSession.send); blocks while `window` frames are unanswered."""
        if self._closed:
            raise MevosError("the session is closed for sending")
        req = pb.TrackRequest(frame=codec.encode_image(frame, self._format, self._quality),
                              remove_object_ids=list(remove))
        if frame_id is not None:
            req.client_frame_id = frame_id
        ids: frozenset[int] = frozenset()
        if masks is not None:
            m = np.asarray(masks)
            req.masks.CopyFrom(codec.encode_label_map(m, "png"))
            ids = frozenset(int(i) for i in np.unique(m) if i != 0)
        while not self._window.acquire(timeout=0.1):
            if self._failed is not None:
                return
        with self._lock:
            if self._next == 0:
                req.settings.CopyFrom(self._settings)
            p = _Pending(self._next, req, ids, time.perf_counter())
            self._next += 1
            if self._first is None:
                self._first = p
            self._pending.append(p)
            if not self._holding:
                self._stream.put(req)

    def close_send(self) -> None:
        """Half-close: no more frames; the answers to those sent still arrive."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if not self._holding:
                    self._stream.close()

    def cancel(self) -> None:
        """Abandon the session (the server frees it)."""
        with self._lock:
            if self._failed is None:
                self._failed = ClientError("CANCELLED", "the session was cancelled by the client")
            self._stream.call.cancel()

    def receive(self) -> TrackResult:
        """The next answer, in order, whatever replica gave it. ClientError when the session failed
        (not UNAVAILABLE, or no replica took it within resume_timeout); StopIteration at the end."""
        trying_since: float | None = None
        attempt = 0
        while True:
            if isinstance(self._failed, ClientError) and self._failed.code == "CANCELLED":
                raise self._failed
            stream = self._stream
            why: ClientError | None = None  # why the session must move
            try:
                r = next(stream.call)
            except StopIteration:
                with self._lock:
                    if not self._pending and self._closed:
                        raise
                why = ClientError("UNAVAILABLE", "the server is draining" if stream.half_closed
                                  else "the stream ended with frames unanswered")
            except Exception as exc:  # grpc.RpcError
                err = ClientError.from_rpc(exc)
                if err.code == "CANCELLED" and self._failed is not None:
                    raise self._failed from None
                if not is_movable(err, resuming=trying_since is not None):
                    self._failed = err
                    raise err from None
                why = err
            if why is not None:
                if trying_since is not None and time.monotonic() - trying_since > self._resume_timeout:
                    self._failed = ClientError(why.code, f"{why.details} (no server took the session in "
                                                         f"{self._resume_timeout:g} s of trying to move it)")
                    raise self._failed
                if trying_since is None:
                    trying_since = time.monotonic()
                elif attempt:
                    time.sleep(min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (attempt - 1)))
                attempt += 1
                try:
                    self._reopen(str(why))
                except ClientError as exc:
                    self._failed = exc
                    raise
                continue
            if self._skip:
                self._skip -= 1
                continue
            return self._answer(r)

    def _answer(self, r: pb.TrackResponse) -> TrackResult:
        with self._lock:
            p = self._pending.popleft()
        now = time.perf_counter()
        result = TrackResult.from_proto(r, now - p.sent_at)
        # Numbered by the client: also right against a server that predates `resume`.
        result.index, result.resumed, result.moves = p.index, self._resumed, self.moves
        if not self._origin:
            self._origin = result.session_id
        self._seed = _Seed(p.index, p.request.frame, result.labels)
        self._window.release()
        if r.draining:
            with self._lock:
                if not self._holding and not self._stream.half_closed:
                    self._holding = True  # new frames wait; the old stream answers what it has
                    self._stream.close()
        return result

    def _reopen(self, why: str) -> None:
        """A new stream on whichever replica the balancer picks: re-seed, then every unanswered
        frame. why: "CODE: details" of what ended the old one, for the move log."""
        with self._lock:
            old = self._stream
            old.call.cancel()
            timeout = self._remaining()
            stream = RequestStream(self._stub, self._metadata, timeout)
            seed = self._seed
            resent = len(self._pending)
            if seed is None:  # nothing answered yet: simply start over
                self._skip = 0
                tracked: set[int] | None = None
            else:
                settings = pb.SessionSettings()
                settings.CopyFrom(self._settings)
                settings.resume.session_id = self._origin[:64]
                settings.resume.frame_index = seed.index
                labels = seed.labels
                frame = seed.frame
                if not labels.any() and self._first is not None:  # every object lost: the original seed
                    frame = self._first.request.frame
                    labels = codec.decode_label_map(self._first.request.masks, what="first mask")
                first = pb.TrackRequest(settings=settings, frame=frame,
                                        masks=codec.encode_label_map(labels, "rle"))
                stream.put(first)
                self._skip = 1
                self._resumed = True
                tracked = {int(i) for i in np.unique(labels) if i != 0}
            for p in self._pending:
                req = p.request
                if tracked is not None:
                    kept = [i for i in req.remove_object_ids if i in tracked]
                    if len(kept) != len(req.remove_object_ids):  # ids the re-seed no longer has
                        req = pb.TrackRequest()
                        req.CopyFrom(p.request)
                        del req.remove_object_ids[:]
                        req.remove_object_ids.extend(kept)
                    tracked = (tracked - set(kept)) | set(p.ids)
                stream.put(req)
            if self._closed:
                stream.close()
            self._holding = False
            self._stream = stream
            self.log.moves.append({"why": why, "at_frame": None if seed is None else seed.index + 1,
                                   "resent": resent, "time": time.time()})

    def __iter__(self) -> Iterator[TrackResult]:
        while True:
            try:
                yield self.receive()
            except StopIteration:
                return

    def __enter__(self) -> ResumableSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.cancel()
        else:
            self.close_send()
