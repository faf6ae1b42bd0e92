"""Malformed input: every case ends only its own stream, with its documented status code and
message, while a healthy session on the same server goes on untouched (checked after each case
against the in-process tracker)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from mevos.client import ClientError
from mevos.proto import codec
from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.runtime.tracker import Tracker

from .conftest import SETTINGS, TRACKER, Served, start

MAX_SIDE, MAX_OBJECTS, MAX_BYTES = 256, 3, 200_000


@pytest.fixture(scope="module")
def strict(backend) -> Iterator[Served]:  # noqa: ANN001
    s = start(backend, max_sessions=3, max_frame_side=MAX_SIDE, max_objects=MAX_OBJECTS,
              max_message_bytes=MAX_BYTES)
    yield s
    s.server.stop(grace=0)


class Healthy:
    """A session kept open across all cases; each check() sends its next frame and compares."""

    def __init__(self, served: Served, backend, video) -> None:  # noqa: ANN001
        self.client = served.client()
        self.session = self.client.session(settings=SETTINGS, image_format="raw")
        self.oracle = Tracker(backend, TRACKER)
        self.video = video
        self.n = 0

    def check(self) -> None:
        v, k = self.video, self.n % len(self.video.frames)
        masks = v.labels[0] if self.n == 0 else None
        self.session.send(v.frames[k], masks=masks)
        got = self.session.receive()
        want = self.oracle.step(v.frames[k], masks=masks)
        assert got.index == self.n
        np.testing.assert_array_equal(got.labels, want.labels)
        self.n += 1


@pytest.fixture(scope="module")
def healthy(strict, backend, video) -> Iterator[Healthy]:  # noqa: ANN001
    h = Healthy(strict, backend, video)
    h.check()
    yield h
    h.session.close_send()
    h.client.close()


# -- request builders ----------------------------------------------------------------------------

def _video():  # noqa: ANN202
    from mevos.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(height=120, width=160, num_frames=3, num_objects=3, seed=3))


V = _video()
F0, F1 = V.frames[0], V.frames[1]
L0 = V.labels[0]


def settings(**kw: object) -> pb.SessionSettings:
    s = pb.SessionSettings(**SETTINGS)  # type: ignore[arg-type]
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def image(frame: np.ndarray = F0, fmt: str = "raw", **changes: object) -> pb.Image:
    msg = codec.encode_image(frame, fmt)
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


def labels(lab: np.ndarray = L0, enc: str = "png", **changes: object) -> pb.LabelMap:
    msg = codec.encode_label_map(lab, enc)
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


def first(**kw: object) -> pb.TrackRequest:
    parts: dict[str, object] = {"settings": settings(), "frame": image(), "masks": labels()}
    parts.update(kw)
    return pb.TrackRequest(**{k: v for k, v in parts.items() if v is not None})  # type: ignore[arg-type]


def later(**kw: object) -> pb.TrackRequest:
    parts: dict[str, object] = {"frame": image(F1)}
    parts.update(kw)
    return pb.TrackRequest(**{k: v for k, v in parts.items() if v is not None})  # type: ignore[arg-type]


def _png(mode: str, size: tuple[int, int] = (160, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_truncated() -> bytes:
    data = image(F0, "jpeg").data
    return data[: len(data) // 2]


def _four_objects() -> np.ndarray:
    lab = L0.copy()
    lab[:5, :5] = 4
    return lab


# name -> (requests, code, message pattern, responses expected before the error)
CASES: dict[str, tuple[Callable[[], list[pb.TrackRequest]], str, str, int]] = {
    "empty stream": (lambda: [], "INVALID_ARGUMENT", "ended before its first message", 0),
    "frame before settings": (lambda: [first(settings=None)], "INVALID_ARGUMENT", "must carry settings", 0),
    "settings again later": (lambda: [first(), later(settings=settings())], "INVALID_ARGUMENT",
                             "settings are allowed only in the first message", 1),
    "message without frame": (lambda: [first(frame=None)], "INVALID_ARGUMENT", "every message needs a frame", 0),
    "first frame without masks": (lambda: [first(masks=None)], "INVALID_ARGUMENT", "first message needs masks", 0),
    "corrupt JPEG": (lambda: [first(frame=image(fmt="jpeg", data=b"\xff\xd8\xff\xe0garbage"))],
                     "INVALID_ARGUMENT", "frame 0: cannot decode as JPEG", 0),
    "truncated JPEG": (lambda: [first(), later(frame=image(F1, "jpeg", data=_jpeg_truncated()))],
                       "INVALID_ARGUMENT", "frame 1: cannot decode as JPEG .*truncated", 1),
    "corrupt PNG": (lambda: [first(frame=image(fmt="png", data=b"\x89PNG\r\n\x1a\nbroken"))],
                    "INVALID_ARGUMENT", "cannot decode as PNG", 0),
    "PNG declared as JPEG": (lambda: [first(frame=image(fmt="png", format=pb.IMAGE_FORMAT_JPEG))],
                             "INVALID_ARGUMENT", "cannot decode as JPEG", 0),
    "unspecified image format": (lambda: [first(frame=image(format=pb.IMAGE_FORMAT_UNSPECIFIED))],
                                 "INVALID_ARGUMENT", "image format 0 is not", 0),
    "unknown image format": (lambda: [first(frame=image(format=9))], "INVALID_ARGUMENT", "image format 9 is not", 0),
    "wrong raw size": (lambda: [first(frame=image(data=F0.tobytes()[:-3]))], "INVALID_ARGUMENT",
                       r"raw RGB of 160x120 needs 57600 bytes, got 57597", 0),
    "declared size differs from JPEG": (lambda: [first(frame=image(fmt="jpeg", width=161))], "INVALID_ARGUMENT",
                                        "declared size 161x120 but the JPEG is 160x120", 0),
    "zero frame size": (lambda: [first(frame=image(width=0))], "INVALID_ARGUMENT", "width and height must be set", 0),
    "oversized frame": (lambda: [first(frame=image(np.zeros((120, 300, 3), np.uint8)))], "INVALID_ARGUMENT",
                        f"exceeds the server's max_frame_side {MAX_SIDE}", 0),
    "frame size changes mid-stream": (lambda: [first(), later(frame=image(F1[:112]))], "INVALID_ARGUMENT",
                                      "frame 1: size 160x112 differs from the session's 160x120", 1),
    "mask size mismatch": (lambda: [first(masks=labels(L0[:, :150]))], "INVALID_ARGUMENT",
                           "masks are 150x120 but the frame is 160x120", 0),
    "mask without object": (lambda: [first(masks=labels(np.zeros_like(L0)))], "INVALID_ARGUMENT",
                            "masks have no object", 0),
    "corrupt mask PNG": (lambda: [first(masks=labels(data=b"not a png"))], "INVALID_ARGUMENT",
                         "masks: cannot decode as PNG", 0),
    "RGB mask PNG": (lambda: [first(masks=labels(data=_png("RGB")))], "INVALID_ARGUMENT", "PNG mode 'RGB'", 0),
    "RLE mask of wrong length": (lambda: [first(masks=labels(enc="rle", data=bytes([1, 10, 0, 0, 0])))],
                                 "INVALID_ARGUMENT", "runs cover 10 pixels but 160x120 has 19200", 0),
    "raw mask of wrong size": (lambda: [first(masks=labels(enc="raw", data=b"\x01" * 100))], "INVALID_ARGUMENT",
                               "needs 19200 bytes, got 100", 0),
    "unspecified mask encoding": (lambda: [first(masks=labels(encoding=pb.MASK_ENCODING_UNSPECIFIED))],
                                  "INVALID_ARGUMENT", "mask encoding 0 is not", 0),
    "remove unknown object id": (lambda: [first(), later(remove_object_ids=[7])], "NOT_FOUND",
                                 r"cannot remove object id\(s\) \[7\]: not tracked", 1),
    "remove id out of range": (lambda: [first(), later(remove_object_ids=[300])], "INVALID_ARGUMENT",
                               r"must be in 1..255, got \[300\]", 1),
    "remove id twice": (lambda: [first(), later(remove_object_ids=[1, 1])], "INVALID_ARGUMENT", "more than once", 1),
    "remove every object": (lambda: [first(), later(remove_object_ids=[1, 2, 3])], "FAILED_PRECONDITION",
                            "would leave no object", 1),
    "too many objects at start": (lambda: [first(masks=labels(_four_objects()))], "INVALID_ARGUMENT",
                                  f"4 objects, more than max_objects {MAX_OBJECTS}", 0),
    "too many objects added": (lambda: [first(), later(masks=labels(np.where(L0 == 1, 4, 0).astype(np.uint8)))],
                               "INVALID_ARGUMENT", f"4 objects would be tracked, more than max_objects {MAX_OBJECTS}", 1),
    "top_k 0": (lambda: [first(settings=settings(top_k=0))], "INVALID_ARGUMENT", "top_k 0 is outside 1..64", 0),
    "top_k too large": (lambda: [first(settings=settings(top_k=1000))], "INVALID_ARGUMENT", "top_k 1000 is outside", 0),
    "negative temperature": (lambda: [first(settings=settings(temperature=-1.0))], "INVALID_ARGUMENT",
                             "temperature -1.0 is outside", 0),
    "mem_frames too large": (lambda: [first(settings=settings(mem_frames=10_000))], "INVALID_ARGUMENT",
                             "mem_frames 10000 is outside 0..50", 0),
    "refine_rounds too large": (lambda: [first(settings=settings(refine_rounds=9))], "INVALID_ARGUMENT",
                                "refine_rounds 9 is outside 0..4", 0),
    "short_side too small": (lambda: [first(settings=settings(short_side=4))], "INVALID_ARGUMENT",
                             f"short_side 4 is outside 8..{MAX_SIDE}", 0),
    "unknown output encoding": (lambda: [first(settings=settings(mask_encoding=9))], "INVALID_ARGUMENT",
                                "mask_encoding 9 is not", 0),
    "message too large": (lambda: [first(frame=image(fmt="jpeg", data=image(fmt="jpeg").data + bytes(MAX_BYTES)))],
                          "INVALID_ARGUMENT", f"exceeds max_message_bytes {MAX_BYTES}", 0),
}


def _run(served: Served, requests: list[pb.TrackRequest]) -> tuple[int, ClientError | None]:
    with served.client() as client:
        s = client.session()
        for r in requests:
            s.send_request(r)
        s.close_send()
        n = 0
        try:
            for _ in s:
                n += 1
        except ClientError as exc:
            return n, exc
        return n, None


def _wait_sessions(served: Served, n: int) -> int:
    deadline = time.monotonic() + 1.0
    while served.server.active_sessions != n and time.monotonic() < deadline:
        time.sleep(0.02)
    return served.server.active_sessions


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input(name: str, strict: Served, healthy: Healthy) -> None:
    build, code, pattern, answered = CASES[name]
    n, err = _run(strict, build())
    assert err is not None, f"{name}: the server accepted it"
    assert err.code == code, f"{name}: {err}"
    import re

    assert re.search(pattern, err.details), f"{name}: message {err.details!r} does not match {pattern!r}"
    assert n == answered
    assert _wait_sessions(strict, 1) == 1  # only the healthy session is left
    healthy.check()


def test_there_are_at_least_20_cases() -> None:
    assert len(CASES) >= 20


def test_sessions_beyond_the_limit_are_refused(strict: Served, healthy: Healthy) -> None:
    with strict.client() as client:
        held = [client.session(settings=SETTINGS, image_format="raw") for _ in range(2)]
        for s in held:
            s.send(F0, masks=L0)
            s.receive()
        assert strict.server.active_sessions == 3
        n, err = _run(strict, [first()])
        assert err is not None and err.code == "RESOURCE_EXHAUSTED" and "limit of 3 concurrent sessions" in err.details
        for s in held:
            s.close_send()
            assert len(list(s)) == 0
    assert _wait_sessions(strict, 1) == 1
    healthy.check()
