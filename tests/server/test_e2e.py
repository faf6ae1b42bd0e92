"""End to end against a real server on loopback: masks over gRPC equal the in-process tracker's."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import pytest

from mevos.proto import codec

from .conftest import SETTINGS, reference


def _stream(client, frames, ops, **kw):  # noqa: ANN001, ANN202
    """Send frames with ops[i] = (masks, remove) and collect the results, in order."""
    with client.session(settings=SETTINGS, **kw) as s:
        results = []
        for f, (m, r) in zip(frames, ops):
            s.send(f, masks=m, remove=r)
            results.append(s.receive())
    return results


@pytest.mark.parametrize("image_format", ["raw", "png"])
def test_masks_equal_in_process_frame_for_frame(served, plain_reference, video, image_format) -> None:  # noqa: ANN001
    expected = plain_reference
    with served.client() as client:
        results = list(client.track(video.frames, video.labels[0], settings=SETTINGS, image_format=image_format,
                                    encoding="rle"))
    assert [r.index for r in results] == list(range(len(video.frames)))
    assert len({r.session_id for r in results}) == 1
    for r, want in zip(results, expected):
        np.testing.assert_array_equal(r.labels, want)
        assert sorted(r.objects) == [1, 2, 3]


def test_jpeg_frames_match_in_process_on_the_decoded_jpeg(served, backend, video) -> None:  # noqa: ANN001
    frames = video.frames[:4]
    decoded = [codec.decode_image(codec.encode_image(f, "jpeg", 90)) for f in frames]
    expected = reference(backend, decoded, [(video.labels[0], ())] + [(None, ())] * 3)
    with served.client() as client:
        results = list(client.track(frames, video.labels[0], settings=SETTINGS, image_format="jpeg", jpeg_quality=90))
    for r, want in zip(results, expected):
        np.testing.assert_array_equal(r.labels, want)


def test_add_correct_and_remove_objects_mid_stream(served, backend, video) -> None:  # noqa: ANN001
    lab = video.labels
    first = np.where(np.isin(lab[0], [1, 2]), lab[0], 0)  # start with objects 1 and 2
    add3 = np.where(lab[3] == 3, 3, 0).astype(np.uint8)  # object 3 appears on frame 3
    fix1 = np.where(lab[5] == 1, 1, 0).astype(np.uint8)  # object 1 corrected on frame 5
    ops: list[tuple[np.ndarray | None, tuple[int, ...]]] = [(None, ())] * len(video.frames)
    ops[0], ops[3], ops[5], ops[7] = (first, ()), (add3, ()), (fix1, ()), (None, (2,))
    expected = reference(backend, video.frames, ops)
    with served.client() as client:
        results = _stream(client, video.frames, ops, image_format="png")
    for i, (r, want) in enumerate(zip(results, expected)):
        np.testing.assert_array_equal(r.labels, want, err_msg=f"frame {i}")
    assert [sorted(r.objects) for r in results] == [[1, 2]] * 3 + [[1, 2, 3]] * 4 + [[1, 3]] * 3
    # Given pixels come back exactly as given, with score 1.
    np.testing.assert_array_equal(results[5].labels == 1, fix1 == 1)
    assert results[5].objects[1][0] == pytest.approx(1.0)
    assert not (results[8].labels == 2).any()


def test_three_output_encodings_decode_to_the_same_label_map(served, video) -> None:  # noqa: ANN001
    frames = video.frames[:3]
    outs = {}
    with served.client() as client:
        for enc in ("png", "rle", "raw"):
            outs[enc] = [r.labels for r in client.track(frames, video.labels[0], settings=SETTINGS, encoding=enc,
                                                        image_format="raw")]
    for enc in ("rle", "raw"):
        for a, b in zip(outs[enc], outs["png"]):
            np.testing.assert_array_equal(a, b)


def test_server_info_health_and_metrics(served) -> None:  # noqa: ANN001
    with served.client() as client:
        info = client.server_info()
        assert info.backend == "torch" and info.preset == "small" and info.device == "cpu"
        assert info.limits.max_sessions == 8 and info.defaults.top_k == 10 and not info.auth_required
        assert info.active_sessions == 0
        assert client.health() == "SERVING"
        assert client.health("mevos.v1.Tracking") == "SERVING"
    text = urllib.request.urlopen(f"http://127.0.0.1:{served.server.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("mevos_sessions_active", "mevos_frames_total", "mevos_stage_seconds_bucket",
                 "mevos_batch_calls_bucket", "mevos_scheduler_queue_depth", "mevos_session_queue_depth",
                 'mevos_sessions_total{code="OK"}'):
        assert name in text


def test_reflection_lists_the_services(served) -> None:  # noqa: ANN001
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(served.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"mevos.v1.Tracking", "grpc.health.v1.Health"} <= services
        desc = db.FindFileContainingSymbol("mevos.v1.Tracking")
        assert desc.name == "mevos/v1/tracking.proto"


def test_concurrent_sessions_keep_their_own_order(served, plain_reference, video) -> None:  # noqa: ANN001
    expected = plain_reference
    out: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            with served.client() as client:
                out[k] = list(client.track(video.frames, video.labels[0], settings=SETTINGS, image_format="raw"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(out) == [0, 1, 2]
    for results in out.values():
        assert [r.index for r in results] == list(range(len(video.frames)))
        for r, want in zip(results, expected):
            assert (r.labels == want).mean() > 0.999  # batched convolutions: last-bit float differences


def test_a_client_that_stops_reading_does_not_stall_others(served, video) -> None:  # noqa: ANN001
    with served.client() as client:
        stalled = client.session(settings=SETTINGS, image_format="raw", window=64)
        stalled.send(video.frames[0], masks=video.labels[0])
        for f in video.frames[1:]:
            stalled.send(f)  # never read
        results = list(client.track(video.frames, video.labels[0], settings=SETTINGS, image_format="raw"))
        assert len(results) == len(video.frames)
        stalled.cancel()
