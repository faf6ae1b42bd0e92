"""Issue 14 on in-process servers (cheap): round_robin with health checks skips a NOT_SERVING
replica, the resume marker on the wire, a resumable session moving between two replicas on a
drain, and the errors a move can end with."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mevos.client import ClientError, TrackingClient
from mevos.proto import codec
from mevos.proto.mevos.v1 import tracking_pb2 as pb

from .conftest import SETTINGS, TRACKER, Served, reference, start


def test_round_robin_spreads_sessions_and_skips_a_not_serving_replica(backend, video) -> None:  # noqa: ANN001
    from grpc_health.v1 import health_pb2

    replicas = [start(backend) for _ in range(3)]
    try:
        target = ",".join(f"127.0.0.1:{r.port}" for r in replicas)

        def open_sessions(client: TrackingClient, n: int) -> list[int]:
            sessions = [client.session(settings=SETTINGS, image_format="raw") for _ in range(n)]
            for s in sessions:
                s.send(video.frames[0], masks=video.labels[0])
                s.receive()
            counts = [r.server.active_sessions for r in replicas]
            for s in sessions:
                s.close_send()
                assert list(s) == []
            deadline = time.monotonic() + 5
            while any(r.server.active_sessions for r in replicas) and time.monotonic() < deadline:
                time.sleep(0.02)
            return counts

        with TrackingClient(target) as client:
            client.wait_ready()
            time.sleep(0.5)
            assert open_sessions(client, 3) == [1, 1, 1]
            # Only the health status changes: the replica would still take sessions if asked.
            replicas[1].server.health.set("mevos.v1.Tracking", health_pb2.HealthCheckResponse.NOT_SERVING)
            time.sleep(0.5)
            assert open_sessions(client, 4) == [2, 0, 2]
    finally:
        for r in replicas:
            r.server.stop(0)


def _first(video, resume: pb.Resume | None = None) -> pb.TrackRequest:  # noqa: ANN001
    settings = pb.SessionSettings(top_k=10, mem_frames=4, refine_rounds=1)
    if resume is not None:
        settings.resume.CopyFrom(resume)
    return pb.TrackRequest(settings=settings, frame=codec.encode_image(video.frames[0], "raw"),
                           masks=codec.encode_label_map(video.labels[0], "rle"))


def test_resume_marker_numbers_frames_from_it_and_marks_responses(served: Served, video) -> None:  # noqa: ANN001
    with served.client() as client:
        s = client.session()
        s.send_request(_first(video, pb.Resume(session_id="abc", frame_index=7)))
        s.send(video.frames[1])
        s.close_send()
        answers = [s.receive(), s.receive()]
    assert [a.index for a in answers] == [7, 8]
    assert all(a.resumed for a in answers)
    with served.client() as client:  # without the marker: a new session, as before
        s = client.session()
        s.send_request(_first(video))
        s.close_send()
        a = s.receive()
    assert a.index == 0 and not a.resumed


@pytest.mark.parametrize("resume, message", [
    (pb.Resume(session_id="x" * 65), "resume.session_id is longer than 64"),
    (pb.Resume(frame_index=2**53 + 1), "resume.frame_index"),
])
def test_bad_resume_markers_are_invalid_argument(served: Served, video, resume, message: str) -> None:  # noqa: ANN001
    with served.client() as client:
        s = client.session()
        s.send_request(_first(video, resume))
        with pytest.raises(ClientError) as err:
            s.receive()
    assert err.value.code == "INVALID_ARGUMENT" and message in err.value.details


def test_a_drain_moves_a_resumable_session_and_says_so(backend, video, plain_reference) -> None:  # noqa: ANN001
    a, b = start(backend), start(backend)
    try:
        with TrackingClient(f"127.0.0.1:{a.port},127.0.0.1:{b.port}") as client:
            client.wait_ready()
            time.sleep(0.3)
            s = client.session(settings=SETTINGS, image_format="raw", encoding="rle", window=2, resume=True)
            s.send(video.frames[0], masks=video.labels[0])
            first = s.receive()
            on_a = a.server.active_sessions == 1
            drained, other = (a, b) if on_a else (b, a)
            stopper = threading.Thread(target=drained.server.stop, kwargs={"grace": 30.0})
            stopper.start()
            results = [first]
            for frame in video.frames[1:]:
                s.send(frame)
                results.append(s.receive())
            s.close_send()
            assert list(s) == []
            stopper.join(30)
            assert not stopper.is_alive()  # the drain ended as soon as the session had left
    finally:
        a.server.stop(0)
        b.server.stop(0)
    assert [r.index for r in results] == list(range(len(video.frames)))
    moved = [r.resumed for r in results]
    assert moved[0] is False and moved[-1] is True and s.moves == 1
    k = moved.index(True)
    assert moved == [False] * k + [True] * (len(moved) - k)
    # before the move: exactly the in-process tracker's masks
    for r, want in zip(results[:k], plain_reference[:k]):
        np.testing.assert_array_equal(r.labels, want)
    # after it: the in-process tracker re-seeded the same way (last answer as the first mask)
    seed = k - 1
    ops = [(results[seed].labels, ())] + [(None, ())] * (len(video.frames) - k)
    again = reference(backend, video.frames[seed:], ops, TRACKER)
    for r, want in zip(results[k:], again[1:]):
        np.testing.assert_array_equal(r.labels, want)


def test_a_move_with_nowhere_to_go_fails_after_resume_timeout(backend, video) -> None:  # noqa: ANN001
    only = start(backend)
    with only.client() as client:
        s = client.session(settings=SETTINGS, image_format="raw", resume=True, resume_timeout=1.0)
        s.send(video.frames[0], masks=video.labels[0])
        s.receive()
        only.server.stop(0)  # ends the session with UNAVAILABLE; nothing else to go to
        s.send(video.frames[1])
        t0 = time.monotonic()
        with pytest.raises(ClientError) as err:
            s.receive()
    assert err.value.code == "UNAVAILABLE" and "no server took the session in 1 s" in err.value.details
    assert time.monotonic() - t0 < 20


def test_errors_other_than_unavailable_are_not_retried(served: Served, video) -> None:  # noqa: ANN001
    with served.client() as client:
        s = client.session(settings=SETTINGS, image_format="raw", resume=True)
        s.send(video.frames[0], masks=video.labels[0])
        s.receive()
        s.send(video.frames[1], remove=[9])
        with pytest.raises(ClientError) as err:
            s.receive()
    assert err.value.code == "NOT_FOUND" and s.moves == 0


def test_clients_built_from_the_old_proto_still_work(served: Served, video) -> None:  # noqa: ANN001
    """A client generated from the proto before issue 14 (no resume, resumed, draining) talks to
    this server: its requests parse, and it parses the responses (new fields are unknown to it)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    old = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(old)
    old.name = "old/mevos/v1/tracking.proto"
    old.package = "old.mevos.v1"
    messages = {m.name: m for m in old.message_type}
    for name, fields in (("TrackResponse", ("resumed", "draining")), ("SessionSettings", ("resume",))):
        kept = [f for f in messages[name].field if f.name not in fields]
        del messages[name].field[:]
        messages[name].field.extend(kept)
    old.message_type.remove(messages["Resume"])
    del old.service[:]  # only the messages matter here
    for m in old.message_type:
        for f in m.field:
            if f.type_name:
                f.type_name = f.type_name.replace(".mevos.v1.", ".old.mevos.v1.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(old)
    OldRequest = message_factory.GetMessageClass(pool.FindMessageTypeByName("old.mevos.v1.TrackRequest"))
    OldResponse = message_factory.GetMessageClass(pool.FindMessageTypeByName("old.mevos.v1.TrackResponse"))
    request = OldRequest.FromString(_first(video).SerializeToString())
    with served.client() as client:
        track = client.channel.stream_stream("/mevos.v1.Tracking/Track", request_serializer=OldRequest.SerializeToString,
                                             response_deserializer=OldResponse.FromString)
        answers = list(track(iter([request])))
    assert len(answers) == 1 and answers[0].frame_index == 0
    labels = codec.decode_label_map(pb.LabelMap.FromString(answers[0].labels.SerializeToString()))
    np.testing.assert_array_equal(labels, video.labels[0])
    assert not hasattr(answers[0], "resumed")
