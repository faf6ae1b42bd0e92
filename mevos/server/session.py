"""One tracking session, in two halves that run on two threads:

- RequestReader checks and decodes the stream's requests, in order, before anything reaches the
  tracker (settings, sizes, formats, limits); a bad request becomes a RequestError.
- Session runs each decoded frame through its Tracker and builds the response. Checks that need
  the tracker's state (which objects exist) happen here, still before the tracker is touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mevos.errors import InputError
from mevos.proto import codec
from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.runtime.tracker import MAX_OBJECT_ID, FrameTracker, Tracker, TrackerConfig
from mevos.runtime.geometry import Geometry
from mevos.server.budget import MemoryBudget
from mevos.server.limits import Limits, RequestError, settings_to_config
from mevos.server.scheduler import SessionBackend

#: ids quoted in an error message at most (a request can list a million)
MAX_QUOTED_IDS = 10
#: longest Resume.session_id, and largest Resume.frame_index (frame indices stay exact as doubles)
MAX_RESUME_ID = 64
MAX_RESUME_INDEX = 2**53


def quote_ids(ids: list[int] | tuple[int, ...]) -> str:
    """`[1, 2, 3]`, or the first MAX_QUOTED_IDS and how many there are in all."""
    if len(ids) <= MAX_QUOTED_IDS:
        return str(list(ids))
    return f"[{', '.join(str(i) for i in ids[:MAX_QUOTED_IDS])}, ...] ({len(ids)} in all)"


class Unparsable:
    """A request whose bytes are not a valid protobuf message (made by the server's deserializer,
    so that the stream ends with INVALID_ARGUMENT instead of gRPC's INTERNAL)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


@dataclass(frozen=True)
class SessionSettings:
    """What the first message decided for the whole session."""

    config: TrackerConfig
    encoding: int  # MaskEncoding of the responses
    client_tag: str
    resumed_from: str | None = None  # the moved session's id (SessionSettings.resume), None: a new session
    first_index: int = 0  # frame_index of the stream's first frame (the resume's, else 0)


@dataclass
class FrameJob:
    """One checked, decoded request."""

    index: int
    received: float  # perf_counter when the request arrived
    decoded: float  # perf_counter when decoding finished
    frame: np.ndarray  # H x W x 3 uint8
    masks: np.ndarray | None  # H x W uint8 or None
    remove: tuple[int, ...]
    settings: SessionSettings | None = None  # only on the first frame
    client_frame_id: int | None = None
    geometry: Geometry | None = None  # only on the first frame


def _invalid(msg: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", msg)


def _resume(s: pb.SessionSettings) -> tuple[str | None, int]:
    """(resumed_from, first_index) of SessionSettings.resume, range-checked."""
    if not s.HasField("resume"):
        return None, 0
    r = s.resume
    if len(r.session_id) > MAX_RESUME_ID:
        raise _invalid(f"settings: resume.session_id is longer than {MAX_RESUME_ID} characters")
    if r.frame_index > MAX_RESUME_INDEX:
        raise _invalid(f"settings: resume.frame_index {r.frame_index} is above 2^53")
    return r.session_id, int(r.frame_index)


class RequestReader:
    """Checks and decodes the requests of one stream, in order."""

    def __init__(self, limits: Limits, defaults: TrackerConfig, budget: MemoryBudget) -> None:
        self.limits, self.defaults, self.budget = limits, defaults, budget
        self.count = 0
        self.size: tuple[int, int] | None = None  # (height, width) of the session, from frame 0

    def read(self, req: pb.TrackRequest | Unparsable, received: float) -> FrameJob:
        """One request -> FrameJob, or RequestError with the documented code."""
        if isinstance(req, Unparsable):
            raise _invalid(f"message {self.count}: {req.nbytes} bytes that are not a valid TrackRequest "
                           "(protobuf parse error)")
        try:
            return self._read(req, received)
        except InputError as exc:  # undecodable bytes (codec.CodecError) and other bad input
            raise _invalid(str(exc)) from None

    def _read(self, req: pb.TrackRequest, received: float) -> FrameJob:
        i, lim = self.count, self.limits
        nbytes = req.ByteSize()
        if nbytes > lim.max_message_bytes:
            raise _invalid(f"message {i}: {nbytes} bytes exceeds max_message_bytes {lim.max_message_bytes}")
        settings = None
        if i == 0:
            if not req.HasField("settings"):
                raise _invalid("the first message of a Track stream must carry settings (and the first frame "
                               "with its masks)")
            s = req.settings
            enc = s.mask_encoding or pb.MASK_ENCODING_PNG
            settings = SessionSettings(settings_to_config(s, lim, self.defaults), enc, s.client_tag,
                                       *_resume(s))
        elif req.HasField("settings"):
            raise _invalid(f"frame {i}: settings are allowed only in the first message of a stream")
        if not req.HasField("frame"):
            raise _invalid(f"frame {i}: every message needs a frame")
        width, height = codec.image_size(req.frame, lim.max_frame_side, what=f"frame {i}")
        size = (height, width)
        if self.size is not None and size != self.size:
            raise _invalid(f"frame {i}: size {size[1]}x{size[0]} differs from the session's "
                           f"{self.size[1]}x{self.size[0]} (set by its first frame)")
        geometry = self.budget.geometry(size, settings.config, f"frame {i}") if settings is not None else None
        frame = codec.decode_image(req.frame, lim.max_frame_side, what=f"frame {i}")
        masks = None
        if req.HasField("masks"):
            m = req.masks
            if (m.height, m.width) != size:
                raise _invalid(f"frame {i}: masks are {m.width}x{m.height} but the frame is {size[1]}x{size[0]}")
            masks = codec.decode_label_map(m, lim.max_frame_side, what=f"frame {i} masks")
            ids = np.unique(masks)
            ids = ids[ids != 0]
            if ids.size == 0:
                raise _invalid(f"frame {i}: masks have no object (every pixel is 0 = background)")
            if ids.size > lim.max_objects:
                raise _invalid(f"frame {i}: masks have {ids.size} objects, more than max_objects {lim.max_objects}")
        elif i == 0:
            raise _invalid("the first message needs masks with at least one object")
        if geometry is not None and settings is not None and masks is not None:
            self.budget.check(geometry, settings.config, int(ids.size), f"frame {i}")
        remove = tuple(int(x) for x in req.remove_object_ids)
        bad = [x for x in remove if not 1 <= x <= MAX_OBJECT_ID]
        if bad:
            raise _invalid(f"frame {i}: object ids to remove must be in 1..{MAX_OBJECT_ID}, got {quote_ids(bad)}")
        if len(set(remove)) != len(remove):
            raise _invalid(f"frame {i}: remove_object_ids lists an id more than once: {quote_ids(remove)}")
        self.size = size
        self.count += 1
        frame_id = req.client_frame_id if req.HasField("client_frame_id") else None
        return FrameJob(i, received, time.perf_counter(), frame, masks, remove, settings, frame_id, geometry)


class Session:
    """The tracker of one stream and the building of its responses (one thread at a time)."""

    def __init__(self, session_id: str, backend: SessionBackend, settings: SessionSettings,
                 budget: MemoryBudget, geometry: Geometry,
                 fast: Callable[[TrackerConfig], FrameTracker] | None = None) -> None:
        self.session_id = session_id
        self.backend = backend
        self.settings = settings
        self.budget, self.geometry = budget, geometry
        # The fast tracker when the server runs it; it hands the session over to a Tracker the
        # first time objects are added, corrected or removed after the first frame.
        self.tracker: FrameTracker = fast(settings.config) if fast else Tracker(backend, settings.config)
        self.frames = 0

    def _tracker_for(self, job: FrameJob) -> FrameTracker:
        from mevos.runtime.fast import FastTracker

        if isinstance(self.tracker, FastTracker) and self.frames > 0 and (job.masks is not None or job.remove):
            self.tracker = self.tracker.to_tracker(self.backend)
        return self.tracker

    def _check_objects(self, job: FrameJob) -> None:
        tracked = set(self.tracker.object_ids)
        unknown = sorted(set(job.remove) - tracked)
        if unknown:
            raise RequestError("NOT_FOUND", f"frame {job.index}: cannot remove object id(s) {quote_ids(unknown)}: "
                                            f"not tracked (tracked: {quote_ids(sorted(tracked))})")
        after = tracked - set(job.remove)
        if job.masks is not None:
            after |= {int(i) for i in np.unique(job.masks) if i != 0}
        limit = self.settings.config.max_objects
        if len(after) > limit:
            raise _invalid(f"frame {job.index}: {len(after)} objects would be tracked, more than max_objects {limit}")
        if not after:
            raise RequestError("FAILED_PRECONDITION", f"frame {job.index}: removing {quote_ids(sorted(job.remove))} "
                                                      "would leave no object to track; give masks of a new object in "
                                                      "the same message")
        if len(after) > len(tracked):
            self.budget.check(self.geometry, self.settings.config, len(after), f"frame {job.index}")

    def step(self, job: FrameJob, taken: float) -> pb.TrackResponse:
        """Track one frame; `taken` = perf_counter when the job left the session queue."""
        self._check_objects(job)
        t0 = time.perf_counter()
        self.backend.wait_s = 0.0
        try:
            with self.backend.frame():
                result = self._tracker_for(job).step(job.frame, masks=job.masks, remove=job.remove)
        except InputError as exc:  # the tracker's own checks: the reader should have caught these
            raise _invalid(f"frame {job.index}: {exc}") from None
        t1 = time.perf_counter()
        labels = result.labels
        objects = []
        for j, oid in sorted(enumerate(result.object_ids), key=lambda x: x[1]):
            where = labels == oid
            area = int(where.sum())
            score = float(result.probs[j][where].mean()) if area else 0.0
            objects.append(pb.ObjectResult(object_id=oid, score=score, area=area))
        label_map = codec.encode_label_map(labels, self.settings.encoding)
        t2 = time.perf_counter()
        ms = 1000.0
        timings = pb.Timings(
            decode_ms=(job.decoded - job.received) * ms,
            queue_ms=max(0.0, taken - job.decoded) * ms,
            track_ms=(t1 - t0) * ms,
            batch_wait_ms=self.backend.wait_s * ms,
            encode_ms=(t2 - t1) * ms,
            total_ms=(t2 - job.received) * ms,
        )
        self.frames += 1
        response = pb.TrackResponse(frame_index=self.settings.first_index + job.index, labels=label_map,
                                    objects=objects, timings=timings, session_id=self.session_id,
                                    resumed=self.settings.resumed_from is not None)
        if job.client_frame_id is not None:
            response.client_frame_id = job.client_frame_id
        return response
