"""One tracking session, in two halves that run on two threads:

- RequestReader checks and decodes the stream's requests, in order, before anything reaches the
  tracker (settings, sizes, formats, limits); a bad request becomes a RequestError.
- Session runs each decoded frame through its Tracker and builds the response. Checks that need
  the tracker's state (which objects exist) happen here, still before the tracker is touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mevos.errors import InputError
from mevos.proto import codec
from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.runtime.tracker import MAX_OBJECT_ID, Tracker, TrackerConfig
from mevos.server.limits import Limits, RequestError, settings_to_config
from mevos.server.scheduler import SessionBackend


@dataclass(frozen=True)
class SessionSettings:
    """What the first message decided for the whole session."""

    config: TrackerConfig
    encoding: int  # MaskEncoding of the responses
    client_tag: str


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


def _invalid(msg: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", msg)


class RequestReader:
    """Checks and decodes the requests of one stream, in order."""

    def __init__(self, limits: Limits, defaults: TrackerConfig) -> None:
        self.limits, self.defaults = limits, defaults
        self.count = 0
        self.size: tuple[int, int] | None = None  # (height, width) of the session, from frame 0

    def read(self, req: pb.TrackRequest, received: float) -> FrameJob:
        """One request -> FrameJob, or RequestError with the documented code."""
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
            settings = SessionSettings(settings_to_config(s, lim, self.defaults), enc, s.client_tag)
        elif req.HasField("settings"):
            raise _invalid(f"frame {i}: settings are allowed only in the first message of a stream")
        if not req.HasField("frame"):
            raise _invalid(f"frame {i}: every message needs a frame")
        size = (req.frame.height, req.frame.width)
        if self.size is not None and size != self.size:
            raise _invalid(f"frame {i}: size {size[1]}x{size[0]} differs from the session's "
                           f"{self.size[1]}x{self.size[0]} (set by its first frame)")
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
        remove = tuple(int(x) for x in req.remove_object_ids)
        bad = [x for x in remove if not 1 <= x <= MAX_OBJECT_ID]
        if bad:
            raise _invalid(f"frame {i}: object ids to remove must be in 1..{MAX_OBJECT_ID}, got {bad}")
        if len(set(remove)) != len(remove):
            raise _invalid(f"frame {i}: remove_object_ids lists an id more than once: {list(remove)}")
        self.size = size
        self.count += 1
        return FrameJob(i, received, time.perf_counter(), frame, masks, remove, settings)


class Session:
    """The tracker of one stream and the building of its responses (one thread at a time)."""

    def __init__(self, session_id: str, backend: SessionBackend, settings: SessionSettings) -> None:
        self.session_id = session_id
        self.backend = backend
        self.settings = settings
        self.tracker = Tracker(backend, settings.config)
        self.frames = 0

    def _check_objects(self, job: FrameJob) -> None:
        tracked = set(self.tracker.object_ids)
        unknown = sorted(set(job.remove) - tracked)
        if unknown:
            raise RequestError("NOT_FOUND", f"frame {job.index}: cannot remove object id(s) {unknown}: not tracked "
                                            f"(tracked: {sorted(tracked)})")
        after = tracked - set(job.remove)
        if job.masks is not None:
            after |= {int(i) for i in np.unique(job.masks) if i != 0}
        limit = self.settings.config.max_objects
        if len(after) > limit:
            raise _invalid(f"frame {job.index}: {len(after)} objects would be tracked, more than max_objects {limit}")
        if not after:
            raise RequestError("FAILED_PRECONDITION", f"frame {job.index}: removing {sorted(job.remove)} would leave "
                                                      "no object to track; give masks of a new object in the same message")

    def step(self, job: FrameJob, taken: float) -> pb.TrackResponse:
        """Track one frame; `taken` = perf_counter when the job left the session queue."""
        self._check_objects(job)
        t0 = time.perf_counter()
        self.backend.wait_s = 0.0
        try:
            with self.backend.frame():
                result = self.tracker.step(job.frame, masks=job.masks, remove=job.remove)
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
        return pb.TrackResponse(frame_index=job.index, labels=label_map, objects=objects, timings=timings,
                                session_id=self.session_id)
