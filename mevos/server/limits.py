"""What the server allows, and the checks of a session's settings against it.

Every rejection is a RequestError carrying the gRPC status code (by name, so this module does
not need grpc) that docs/serving.md documents for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mevos.errors import MevosError, UsageError
from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.runtime.geometry import STRIDE
from mevos.runtime.tracker import MAX_OBJECT_ID, TrackerConfig

MAX_TEMPERATURE = 10.0
MAX_CLIENT_TAG = 128


class RequestError(MevosError):
    """A request the server refuses: `code` is a grpc.StatusCode name (INVALID_ARGUMENT, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Server limits (ServerInfo.limits on the wire)."""

    max_sessions: int = 8
    max_frame_side: int = 2048
    max_objects: int = 32
    max_message_bytes: int = 16 * 1024 * 1024
    idle_timeout_s: float = 30.0
    max_top_k: int = 64
    max_mem_frames: int = 50
    max_refine_rounds: int = 4
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    session_queue: int = 4  # decoded frames buffered per session (backpressure beyond)
    max_session_memory_bytes: int = 4 * 2**30  # estimated memory of one session (mevos.server.budget)

    def __post_init__(self) -> None:
        checks = [
            (self.max_sessions >= 1, "max_sessions must be >= 1"),
            (self.max_frame_side >= STRIDE, f"max_frame_side must be >= {STRIDE}"),
            (1 <= self.max_objects <= MAX_OBJECT_ID, f"max_objects must be in 1..{MAX_OBJECT_ID}"),
            (self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024"),
            (self.idle_timeout_s > 0, "idle_timeout_s must be > 0"),
            (self.max_top_k >= 1 and self.max_mem_frames >= 0 and self.max_refine_rounds >= 0,
             "max_top_k must be >= 1, max_mem_frames and max_refine_rounds >= 0"),
            (self.max_batch >= 1 and self.batch_wait_ms >= 0, "max_batch must be >= 1 and batch_wait_ms >= 0"),
            (self.session_queue >= 1, "session_queue must be >= 1"),
            (self.max_session_memory_bytes >= 2**20, "max_session_memory_bytes must be >= 1 MiB"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(f"server limit: {msg}")

    @property
    def transport_max_bytes(self) -> int:
        """gRPC's own receive limit: well above max_message_bytes, so that mevos sees (and answers
        with INVALID_ARGUMENT) moderately oversized messages; only far larger ones hit the
        transport's RESOURCE_EXHAUSTED."""
        return 2 * self.max_message_bytes + 64 * 1024

    def check_defaults(self, d: TrackerConfig) -> None:
        """The server's default settings must themselves be within the limits."""
        settings_to_config(pb.SessionSettings(), self, d)

    def to_proto(self) -> pb.Limits:
        return pb.Limits(
            max_sessions=self.max_sessions, max_frame_side=self.max_frame_side, max_objects=self.max_objects,
            max_message_bytes=self.max_message_bytes, idle_timeout_s=self.idle_timeout_s,
            max_top_k=self.max_top_k, max_mem_frames=self.max_mem_frames,
            max_refine_rounds=self.max_refine_rounds, max_batch=self.max_batch, batch_wait_ms=self.batch_wait_ms,
            max_session_memory_bytes=self.max_session_memory_bytes,
        )


def defaults_to_proto(d: TrackerConfig) -> pb.SessionSettings:
    """The server's default TrackerConfig as SessionSettings (unset radius/short_side stay unset)."""
    s = pb.SessionSettings(top_k=d.top_k, temperature=d.temperature, mem_frames=d.mem_frames,
                           refine_rounds=d.refine_rounds, mask_encoding=pb.MASK_ENCODING_PNG)
    if d.radius is not None:
        s.radius = d.radius
    if d.short_side is not None:
        s.short_side = d.short_side
    return s


def _bad(msg: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", f"settings: {msg}")


def settings_to_config(s: pb.SessionSettings, limits: Limits, defaults: TrackerConfig) -> TrackerConfig:
    """SessionSettings -> TrackerConfig: unset fields from `defaults`, every field range-checked."""
    cfg = defaults
    if s.HasField("top_k"):
        if not 1 <= s.top_k <= limits.max_top_k:
            raise _bad(f"top_k {s.top_k} is outside 1..{limits.max_top_k}")
        cfg = replace(cfg, top_k=s.top_k)
    if s.HasField("temperature"):
        if not (math.isfinite(s.temperature) and 0 < s.temperature <= MAX_TEMPERATURE):
            raise _bad(f"temperature {s.temperature} is outside (0, {MAX_TEMPERATURE}]")
        cfg = replace(cfg, temperature=float(s.temperature))
    if s.HasField("mem_frames"):
        if s.mem_frames > limits.max_mem_frames:
            raise _bad(f"mem_frames {s.mem_frames} is outside 0..{limits.max_mem_frames}")
        cfg = replace(cfg, mem_frames=s.mem_frames)
    if s.HasField("refine_rounds"):
        if s.refine_rounds > limits.max_refine_rounds:
            raise _bad(f"refine_rounds {s.refine_rounds} is outside 0..{limits.max_refine_rounds}")
        cfg = replace(cfg, refine_rounds=s.refine_rounds)
    if s.HasField("radius"):
        if s.radius > limits.max_frame_side // STRIDE:
            raise _bad(f"radius {s.radius} is outside 0..{limits.max_frame_side // STRIDE}")
        cfg = replace(cfg, radius=s.radius)
    if s.HasField("short_side"):
        if not STRIDE <= s.short_side <= limits.max_frame_side:
            raise _bad(f"short_side {s.short_side} is outside {STRIDE}..{limits.max_frame_side}")
        cfg = replace(cfg, short_side=s.short_side)
    if s.mask_encoding not in (pb.MASK_ENCODING_UNSPECIFIED, pb.MASK_ENCODING_PNG, pb.MASK_ENCODING_RLE,
                               pb.MASK_ENCODING_RAW):
        raise _bad(f"mask_encoding {s.mask_encoding} is not PNG, RLE or RAW")
    if len(s.client_tag) > MAX_CLIENT_TAG:
        raise _bad(f"client_tag is longer than {MAX_CLIENT_TAG} characters")
    return replace(cfg, max_objects=limits.max_objects)
