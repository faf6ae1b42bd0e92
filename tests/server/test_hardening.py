"""Issue 13: every limit holds for everything a client can send. One test per finding, each on a
real server on loopback: the status code, the server still SERVING, and a concurrent healthy
session's masks still equal to the in-process tracker's (Healthy.check)."""

from __future__ import annotations

import io
import logging
import re
import socket
import struct
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from mevos.client import ClientError, TrackingClient
from mevos.errors import MevosError
from mevos.proto import codec
from mevos.proto.mevos.v1 import tracking_pb2 as pb
from mevos.proto.mevos.v1 import tracking_pb2_grpc as pb_grpc
from mevos.runtime.tracker import Tracker, TrackerConfig
from mevos.server import logs

from .conftest import SETTINGS, Served, start
from .test_malformed import F0, F1, L0, Healthy, _run, first, image, labels, later, settings

#: peak RSS growth allowed while a request over the memory limits is refused (the requests below
#: would allocate 15.6 GB and 12.9 GB)
RSS_BOUND_MB = 400


@pytest.fixture(scope="module")
def srv(backend) -> Iterator[Served]:  # noqa: ANN001
    s = start(backend, max_sessions=4)  # every other limit at its default
    yield s
    s.server.stop(grace=0)


@pytest.fixture(scope="module")
def healthy(srv, backend, video) -> Iterator[Healthy]:  # noqa: ANN001
    h = Healthy(srv, backend, video)
    h.check()
    yield h
    h.session.close_send()
    h.client.close()


def _still_fine(served: Served, healthy: Healthy | None = None, sessions: int = 1) -> None:
    """The server answers health checks, holds only the expected sessions, and the healthy
    session's next frame still equals the in-process tracker's."""
    with served.client() as client:
        assert client.health() == "SERVING"
        deadline = time.monotonic() + 3.0
        while client.server_info().active_sessions != sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.server_info().active_sessions == sessions
    if healthy is not None:
        healthy.check()


def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert m, field
    return int(m.group(1))


class PeakRss:
    """Peak resident memory of this process (the server runs in it) across a block, in MB."""

    def __enter__(self) -> PeakRss:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
        self.before = _status_kb("VmRSS") / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = _status_kb("VmHWM") / 1024 - self.before


# -- 1, 2: memory ----------------------------------------------------------------------------------

def test_1_memory_budget_refuses_before_allocating(srv: Served, healthy: Healthy, backend) -> None:  # noqa: ANN001
    # The case: 1024x1024, 32 objects, mem_frames 50 -> a 15.6 GB memory bank.
    frame = np.zeros((1024, 1024, 3), np.uint8)
    many = (np.arange(1024)[None, :] // 32 + 1).repeat(1024, axis=0).astype(np.uint8)  # ids 1..32
    # short_side 1024: the frame at full size (unset, the server would work at max_short_side 240).
    req = pb.TrackRequest(settings=settings(mem_frames=50, short_side=1024), frame=image(frame),
                          masks=labels(many, "raw"))
    with PeakRss() as rss:
        n, err = _run(srv, [req])
    assert err is not None and err.code == "RESOURCE_EXHAUSTED", err
    assert "32 objects" in err.details and "58 memory slots" in err.details and "4096 MiB" in err.details
    assert rss.growth < RSS_BOUND_MB, f"peak RSS grew by {rss.growth:.0f} MB"
    _still_fine(srv, healthy)

    # Objects added mid-stream are counted too (a server with a small budget, same checks).
    tight = start(backend, max_session_memory_bytes=64 * 2**20)
    try:
        one = np.where(L0 == 1, 1, 0).astype(np.uint8)
        small_many = (np.arange(160)[None, :] // 5 + 1).repeat(120, axis=0).astype(np.uint8)  # ids 1..32
        n, err = _run(tight, [first(settings=settings(mem_frames=50), masks=labels(one)), later(masks=labels(small_many))])
        assert err is not None and err.code == "RESOURCE_EXHAUSTED" and "frame 1:" in err.details, err
        assert n == 1  # the first frame was answered; nothing of it is lost
        _still_fine(tight, sessions=0)
    finally:
        tight.server.stop(0)
    _still_fine(srv, healthy)


def test_2_short_side_cannot_scale_past_max_frame_side(srv: Served, healthy: Healthy) -> None:
    # A 512x16 frame with short_side 512 would be tracked at 16384x512 (the issue: 2.5 GB in 7 s).
    thin = np.zeros((16, 512, 3), np.uint8)
    lab = np.zeros((16, 512), np.uint8)
    lab[4:12, 100:200] = 1
    req = pb.TrackRequest(settings=settings(short_side=512), frame=image(thin), masks=labels(lab))
    with PeakRss() as rss:
        n, err = _run(srv, [req])
    assert err is not None and err.code == "INVALID_ARGUMENT", err
    assert "scales the 512x16 frame to 16384x512, beyond the server's max_frame_side 2048" in err.details
    assert rss.growth < RSS_BOUND_MB, f"peak RSS grew by {rss.growth:.0f} MB"
    _still_fine(srv, healthy)


# -- 3: a client that stops reading ----------------------------------------------------------------

def test_3_client_that_stops_reading_is_cancelled_and_its_slot_freed(backend, video) -> None:  # noqa: ANN001
    idle = 1.0
    s = start(backend, idle_timeout_s=idle, max_sessions=2)
    stop, healthy_errors, healthy_frames = threading.Event(), [], [0]

    def healthy_loop() -> None:  # a concurrent session that reads, frame after frame
        try:
            h = Healthy(s, backend, video)
            while not stop.is_set():
                h.check()
                healthy_frames[0] += 1
            h.session.close_send()
            assert list(h.session) == []
            h.client.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            healthy_errors.append(exc)

    worker = threading.Thread(target=healthy_loop)
    worker.start()
    # Large responses (1024x1024 raw label maps) of cheap frames (short_side 64) fill the
    # transport's buffers after a few frames; then the server's send blocks.
    big = np.zeros((1024, 1024, 3), np.uint8)
    big[:, :512] = 200
    lab = np.zeros((1024, 1024), np.uint8)
    lab[100:400, 100:400] = 1
    jpeg = codec.encode_image(big, "jpeg")
    hold = threading.Event()

    def requests() -> Iterator[pb.TrackRequest]:
        st = pb.SessionSettings(mem_frames=2, refine_rounds=0, short_side=64, mask_encoding=pb.MASK_ENCODING_RAW)
        yield pb.TrackRequest(settings=st, frame=jpeg, masks=codec.encode_label_map(lab, "png"))
        for _ in range(100):
            yield pb.TrackRequest(frame=jpeg)
        hold.wait(30)

    channel = grpc.insecure_channel(s.target)
    try:
        call = pb_grpc.TrackingStub(channel).Track(requests())  # never read until the end
        frames = s.server.metrics.registry
        deadline = time.monotonic() + 30
        while s.server.active_sessions < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        last_count, last_change = -1.0, time.monotonic()
        while s.server.active_sessions >= 2 and time.monotonic() < deadline:
            count = frames.get_sample_value("mevos_frames_total") or 0.0
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            time.sleep(0.02)
        freed = time.monotonic()
        assert s.server.active_sessions == 1, "the non-reading session still holds its slot"
        # From the last response the server could not hand over to the slot being free again:
        assert freed - last_change <= idle + 2.0, f"freed {freed - last_change:.2f} s after the send stalled"
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.CANCELLED
        _still_fine(s, sessions=1)
    finally:
        hold.set()
        stop.set()
        worker.join(60)
        channel.close()
        s.server.stop(0)
    assert not healthy_errors, healthy_errors
    assert healthy_frames[0] >= 1


# -- 4: mem_frames 0 -------------------------------------------------------------------------------

def test_4_mem_frames_0_works(srv: Served, healthy: Healthy, backend, video) -> None:  # noqa: ANN001
    oracle = Tracker(backend, TrackerConfig(top_k=10, mem_frames=0, refine_rounds=1))
    with srv.client() as client:
        with client.session(settings={**SETTINGS, "mem_frames": 0}, image_format="raw") as s:
            for i, f in enumerate(video.frames[:4]):
                m = video.labels[0] if i == 0 else None
                s.send(f, masks=m)
                np.testing.assert_array_equal(s.receive().labels, oracle.step(f, masks=m).labels)
            s.close_send()
            assert list(s) == []  # ended with OK
    _still_fine(srv, healthy)


# -- 5: decompression bombs ------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(image(F0, "jpeg").data)
    sof = data.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height(2) width(2)
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("where", ["frame PNG", "frame JPEG", "frame JPEG, size unset", "mask PNG"])
def test_5_decompression_bombs_are_invalid_argument(where: str, srv: Served, healthy: Healthy) -> None:
    bomb_png, bomb_jpeg = _png_header(20000, 20000), _jpeg_claiming(60000, 60000)  # 400 Mpx, 3.6 Gpx
    req = {
        "frame PNG": first(frame=image(fmt="png", data=bomb_png)),
        "frame JPEG": first(frame=image(fmt="jpeg", data=bomb_jpeg)),
        "frame JPEG, size unset": first(frame=image(fmt="jpeg", data=bomb_jpeg, width=0, height=0)),
        "mask PNG": first(masks=labels(data=bomb_png)),
    }[where]
    n, err = _run(srv, [req])
    assert err is not None and err.code == "INVALID_ARGUMENT", err
    assert "too large to decode" in err.details or "exceeds the server's max_frame_side" in err.details
    _still_fine(srv, healthy)


# -- 6: error echoes, unparsable bytes, log forging, object addresses ------------------------------

def test_6a_huge_remove_list_is_not_echoed(srv: Served, healthy: Healthy) -> None:
    n, err = _run(srv, [first(), later(remove_object_ids=[300] * 1_000_000)])
    assert err is not None and err.code == "INVALID_ARGUMENT", err
    assert "(1000000 in all)" in err.details and len(err.details) < 500
    _still_fine(srv, healthy)


def test_6b_unparsable_bytes_are_invalid_argument(srv: Served, healthy: Healthy) -> None:
    channel = grpc.insecure_channel(srv.target)
    try:
        track = channel.stream_stream("/mevos.v1.Tracking/Track")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            list(track(iter([b"\xff\xff\xff\xff"]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid TrackRequest" in err.value.details()
        info = channel.unary_unary("/mevos.v1.Tracking/GetServerInfo")
        with pytest.raises(grpc.RpcError) as err:
            info(b"\x0a\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()
    _still_fine(srv, healthy)


def test_6c_client_tag_cannot_forge_text_log_lines(srv: Served, healthy: Healthy) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.TextFormatter())
    level = logs.LOGGER.level
    logs.LOGGER.addHandler(handler)
    logs.LOGGER.setLevel(logging.INFO)
    try:
        tag = "cam1\n12:00:00 error   forged event=evil"
        with srv.client() as client, client.session(settings=SETTINGS, image_format="raw", client_tag=tag) as s:
            s.send(F0, masks=L0)
            s.receive()
    finally:
        logs.LOGGER.removeHandler(handler)
        logs.LOGGER.setLevel(level)
    lines = out.getvalue().splitlines()
    assert any("session_start" in line and "forged" in line for line in lines)  # logged, escaped
    assert not any(line.startswith("12:00:00 error") for line in lines)
    _still_fine(srv, healthy)


def test_6d_no_object_address_in_messages(srv: Served, healthy: Healthy) -> None:
    n, err = _run(srv, [first(frame=image(fmt="jpeg", data=b""))])
    assert err is not None and err.code == "INVALID_ARGUMENT", err
    assert "cannot decode as JPEG" in err.details
    assert not re.search(r"0x[0-9a-f]{6,}|object at", err.details), err.details
    _still_fine(srv, healthy)


# -- 7: shutdown -----------------------------------------------------------------------------------

def test_7_drain_answers_new_clients_and_ends_sessions_with_unavailable(backend, video) -> None:  # noqa: ANN001
    s = start(backend)
    h = Healthy(s, backend, video)
    h.check()
    stopper = threading.Thread(target=s.server.stop, kwargs={"grace": 1.5})
    stopper.start()
    try:
        time.sleep(0.3)
        with s.client() as client:  # during the drain the server still answers, with reasons
            assert client.health() == "NOT_SERVING"
            with pytest.raises(ClientError) as err:
                list(client.track(video.frames[:1], video.labels[0], settings=SETTINGS))
            assert err.value.code == "UNAVAILABLE" and "shutting down" in err.value.details
        h.check()  # the open session still works within the grace
        with pytest.raises(ClientError) as err:  # and then ends with a clear status
            h.session.receive()
        assert err.value.code == "UNAVAILABLE" and "grace period of 1.5 s ended" in err.value.details
    finally:
        stopper.join(30)
        h.client.close()
    assert s.server.metrics.registry.get_sample_value("mevos_sessions_total", {"code": "UNAVAILABLE"}) == 1
    assert not s.server.metrics.registry.get_sample_value("mevos_sessions_total", {"code": "INTERNAL"})


# -- protocol --------------------------------------------------------------------------------------

def test_jpeg_without_size_and_echoed_frame_ids(srv: Served, healthy: Healthy, backend, video) -> None:  # noqa: ANN001
    frames = video.frames[:4]
    decoded = [codec.decode_image(codec.encode_image(f, "jpeg")) for f in frames]
    oracle = Tracker(backend, TrackerConfig(top_k=10, mem_frames=4, refine_rounds=1))
    ids = [1_700_000_000_000 + 33 * i for i in range(len(frames))]  # e.g. capture timestamps in ms
    with srv.client() as client, client.session(settings=SETTINGS) as s:
        for i, (f, d, fid) in enumerate(zip(frames, decoded, ids)):
            req = s.request(f, masks=video.labels[0] if i == 0 else None, frame_id=fid)
            req.frame.ClearField("width")
            req.frame.ClearField("height")
            s.send_request(req)
            r = s.receive()
            assert r.client_frame_id == fid and r.index == i
            np.testing.assert_array_equal(r.labels, oracle.step(d, masks=video.labels[0] if i == 0 else None).labels)
        s.send(frames[0])  # no id: none echoed
        assert s.receive().client_frame_id is None
        s.close_send()
        assert list(s) == []
    _still_fine(srv, healthy)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha(version: str, srv: Served, healthy: Healthy) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    channel = grpc.insecure_channel(srv.target)
    try:
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=rpb.ServerReflectionResponse.FromString)
        (answer,) = list(call(iter([rpb.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {svc.name for svc in answer.list_services_response.service}
        assert {"mevos.v1.Tracking", "grpc.health.v1.Health"} <= names
        (answer,) = list(call(iter([rpb.ServerReflectionRequest(file_containing_symbol="mevos.v1.Tracking")]),
                              timeout=10))
        assert answer.file_descriptor_response.file_descriptor_proto
    finally:
        channel.close()
    _still_fine(srv, healthy)


# -- 9: smaller ones -------------------------------------------------------------------------------

def test_9a_token_is_not_sent_in_plaintext_beyond_loopback(srv: Served, healthy: Healthy, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MEVOS_TOKEN", "s3cret")
    for target in ("10.0.0.7:50051", "example.com:50051", "dns:///example.com:443", "[2001:db8::1]:50051"):
        with pytest.raises(MevosError, match="refusing to send the bearer token"):
            TrackingClient(target)
    TrackingClient("10.0.0.7:50051", allow_plaintext_token=True).close()
    TrackingClient("10.0.0.7:50051", tls=True).close()
    with TrackingClient(srv.target) as client:  # loopback: fine (this server needs no token)
        assert client.health() == "SERVING"
    with TrackingClient(f"localhost:{srv.port}") as client:
        assert client.server_info().version
    _still_fine(srv, healthy)


def test_9b_metrics_endpoint_bounds_threads_and_times_out_headers(srv: Served, healthy: Healthy) -> None:
    from mevos.server import metrics

    before = threading.active_count()
    sockets = []
    try:
        for _ in range(60):  # half-open: connect, never send a request
            sockets.append(socket.create_connection(("127.0.0.1", srv.server.metrics_port), timeout=5))
        time.sleep(0.5)
        assert threading.active_count() - before <= metrics.HTTP_THREADS
        # Beyond the workers and the backlog, connections are closed at once.
        closed = 0
        for sk in sockets:
            sk.settimeout(0.05)
            try:
                closed += sk.recv(1) == b""
            except (TimeoutError, socket.timeout):
                pass
            except ConnectionError:
                closed += 1
        assert closed >= 60 - metrics.HTTP_THREADS - metrics.HTTP_BACKLOG
    finally:
        for sk in sockets:
            sk.close()
    # A connection that sends no request line within the header timeout is closed.
    own = metrics.Metrics()
    port = own.serve_http("127.0.0.1", 0, header_timeout_s=0.3)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sk:
            t0 = time.monotonic()
            assert sk.recv(1) == b""
            assert time.monotonic() - t0 < 4.0
    finally:
        own.close()
    time.sleep(0.2)
    url = f"http://127.0.0.1:{srv.server.metrics_port}/metrics"
    assert "mevos_sessions_active" in urllib.request.urlopen(url, timeout=10).read().decode()
    _still_fine(srv, healthy)
