"""Sessions on the fast tracker (what `mevos serve --device cuda` runs by default), here on the CPU
with every CUDA feature off: the same masks as the in-process Tracker, including objects added,
corrected and removed mid-stream (the session hands over to a Tracker then)."""

from __future__ import annotations

import numpy as np
import pytest

from mevos.runtime.fast import FastOptions, FastTracker
from mevos.runtime.tracker import TrackerConfig

from .conftest import SETTINGS, reference, start


@pytest.fixture(scope="module")
def fast_served(backend):  # noqa: ANN001, ANN201
    s = start(backend)
    # What ServerConfig(fast=True) installs on CUDA (server.app._fast_sessions), eager on the CPU.
    s.server.servicer.fast = lambda config: FastTracker(backend.model, config, device="cpu",
                                                          options=FastOptions.eager_cpu())
    yield s
    s.server.stop(grace=0)


def test_fast_sessions_match_the_tracker_and_hand_over_mid_stream(fast_served, backend, video) -> None:  # noqa: ANN001
    lab = video.labels
    first = np.where(np.isin(lab[0], [1, 2]), lab[0], 0)
    add3 = np.where(lab[3] == 3, 3, 0).astype(np.uint8)
    ops: list[tuple[np.ndarray | None, tuple[int, ...]]] = [(None, ())] * len(video.frames)
    ops[0], ops[3], ops[7] = (first, ()), (add3, ()), (None, (2,))
    expected = reference(backend, video.frames, ops)
    with fast_served.client() as client, client.session(settings=SETTINGS, image_format="png") as s:
        results = []
        for f, (m, r) in zip(video.frames, ops):
            s.send(f, masks=m, remove=r)
            results.append(s.receive())
    for i, (r, want) in enumerate(zip(results, expected)):
        np.testing.assert_array_equal(r.labels, want, err_msg=f"frame {i}")
    assert [sorted(r.objects) for r in results] == [[1, 2]] * 3 + [[1, 2, 3]] * 4 + [[1, 3]] * 3
    assert TrackerConfig(**SETTINGS).mem_frames == 4
