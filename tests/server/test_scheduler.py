"""The batching scheduler: one session alone gets the backend's exact results; sessions in
parallel share batched calls whose results match the unbatched ones."""

from __future__ import annotations

import threading

import numpy as np
import torch

from mevos.runtime.tracker import Tracker
from mevos.server.scheduler import Scheduler

from .conftest import TRACKER


def test_single_calls_pass_through_exactly(backend) -> None:  # noqa: ANN001
    sched = Scheduler(backend, max_batch=4, max_wait_s=0.001)
    try:
        sb = sched.session_backend()
        img = torch.rand(1, 3, 32, 48)
        masks = torch.rand(2, 1, 32, 48)
        for a, b in zip(sb.encode_key(img), backend.encode_key(img)):
            assert torch.equal(a, b)
        assert torch.equal(sb.encode_value(img, masks), backend.encode_value(img, masks))
    finally:
        sched.close()


def test_batched_calls_match_unbatched(backend) -> None:  # noqa: ANN001
    sched = Scheduler(backend, max_batch=8)
    calls = []
    for n in (1, 3, 2):
        img = torch.rand(1, 3, 32, 48)
        masks = torch.rand(n, 1, 32, 48)
        key, res3, res2 = backend.encode_key(img)
        value = backend.encode_value(img, masks)
        calls.append((img, masks, res3, res2, value))
    from mevos.server.scheduler import _Call, _signature

    def batch(op: str, args_list: list[tuple[torch.Tensor, ...]], rows: list[int]) -> list[object]:
        return sched._execute([_Call(op, a, r, _signature(op, a)) for a, r in zip(args_list, rows)])

    try:
        keys = batch("encode_key", [(c[0],) for c in calls], [1, 1, 1])
        for (img, *_), got in zip(calls, keys):
            for a, b in zip(got, backend.encode_key(img)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        values = batch("encode_value", [(c[0], c[1]) for c in calls], [1, 3, 2])
        for c, got in zip(calls, values):
            torch.testing.assert_close(got, c[4], rtol=1e-4, atol=1e-5)
        logits = batch("decode", [(c[4], c[4], c[2], c[3]) for c in calls], [1, 3, 2])
        for c, got in zip(calls, logits):
            torch.testing.assert_close(got, backend.decode(c[4], c[4], c[2], c[3]), rtol=1e-4, atol=1e-4)
    finally:
        sched.close()


def test_parallel_sessions_batch_and_match_in_process(backend, video, plain_reference) -> None:  # noqa: ANN001
    seen: list[int] = []
    sched = Scheduler(backend, max_batch=4, max_wait_s=0.05,
                      on_batch=lambda op, calls, rows, s: seen.append(calls))
    frames = video.frames[:5]
    ops = [(video.labels[0], ())] + [(None, ())] * 4
    expected = plain_reference[:5]
    out: dict[int, list[np.ndarray]] = {}

    def session(k: int) -> None:
        sb = sched.session_backend()
        tracker = Tracker(sb, TRACKER)
        labels = []
        for f, (m, r) in zip(frames, ops):
            with sb.frame():
                labels.append(tracker.step(f, masks=m, remove=r).labels)
        out[k] = labels

    threads = [threading.Thread(target=session, args=(k,)) for k in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sched.close()
    assert sorted(out) == [0, 1, 2]
    assert max(seen) > 1, "parallel sessions never shared a batch"
    for labels in out.values():
        for got, want in zip(labels, expected):
            # Batched convolutions may differ from single ones in the last float bits.
            assert (got == want).mean() > 0.999


def test_largest_group_goes_first_unless_a_call_starves(backend) -> None:  # noqa: ANN001
    from mevos.server.scheduler import STARVATION, _Call, _signature

    sched = Scheduler(backend, max_batch=8, max_wait_s=0.01)
    try:
        small, large = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32)
        a = _Call("encode_key", (small,), 1, _signature("encode_key", (small,)))
        b = _Call("encode_key", (large,), 1, _signature("encode_key", (large,)))
        c = _Call("encode_key", (large,), 1, _signature("encode_key", (large,)))
        assert sched._pick([a, b, c]) == [b, c]
        a.submitted -= 2 * STARVATION * sched.max_wait_s
        assert sched._pick([a, b, c]) == [a]
    finally:
        sched.close()
