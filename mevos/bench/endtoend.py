"""End-to-end FPS: the real Tracker (or the GPU fast path) over the synthetic video.

The first `mem_frames + 2` frames are warm-up (the memory fills up and every shape has been
seen once); the FPS is over the frames after them, with the memory full, so it is the
steady-state rate of a long stream. A frame's time covers everything Tracker.step does: upload,
the three networks, the memory read and write, and the label map back on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mevos.bench.measure import Meters, clock, summarize
from mevos.runtime.backend import Backend
from mevos.runtime.tracker import Tracker, TrackerConfig


def warmup_frames(mem_frames: int) -> int:
    """Frames before the timed ones: the first frame, mem_frames to fill the ring, one more."""
    return mem_frames + 2


def run_tracker(backend: Backend, config: TrackerConfig, frames: list[np.ndarray], first_mask: np.ndarray,
                warmup: int) -> dict[str, Any]:
    """Track `frames` with a fresh Tracker; time every frame after `warmup`. Returns fps,
    ms_per_frame statistics, frame counts and peak memory. The affinity's code is
    config.affinity_impl (the baseline: 'dense')."""
    if warmup >= len(frames):
        raise ValueError(f"{len(frames)} frames leave none to time after {warmup} warm-up frames")
    dev = backend.device
    tracker = Tracker(backend, config)
    ms: list[float] = []
    for i in range(warmup):
        tracker.step(frames[i], masks=first_mask if i == 0 else None)
    with Meters(dev) as meters:
        start = clock(dev)
        for i in range(warmup, len(frames)):
            t0 = clock(dev)
            tracker.step(frames[i], masks=first_mask if i == 0 else None)
            ms.append((clock(dev) - t0) * 1e3)
        total = clock(dev) - start
    timed = len(frames) - warmup
    return {"frames_warmup": warmup, "frames_timed": timed, "fps": timed / total, "ms_per_frame": summarize(ms),
            "frame_ms": ms, **meters.memory()}
