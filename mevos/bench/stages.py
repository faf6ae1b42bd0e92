"""Per-stage latency of one frame: the real Tracker.step, timed through the runtime's profiling
hook (mevos.runtime.profile), so the figures are those of the code users run.

The stages of a propagated frame (Algorithm 1, mevos.runtime.propagate), the device synchronised
at every boundary:

    preprocess           uint8 frame -> device, float, padded (Geometry.image)
    encode_key           E: key, res3, res2 (and the query view of the key)
    affinity_topk        top-k affinity of the query over the T memory frames
    readout              values and masks read through the top-k (two readouts)
    refine_encode_value  V over the current masks, R times
    refine_decode        D, sigmoid and soft aggregation, R times
    memory_write         the label map as masks, V over them, pooled masks, copy into a memory slot
    postprocess          crop, argmax label map, copy to the host

The tracker starts on the clip's first frame (its mask given, pinned) and its ring is filled
with the encoded frames of a FilledMemory, so a timed step reads exactly 1 + mem_frames frames;
every timed step writes one frame back (the ring stays full). A time budget may cut the
repetitions of an expensive measurement short (see measure.Iterations).
"""

from __future__ import annotations

import numpy as np
import torch

from mevos.bench.measure import Iterations, summarize
from mevos.bench.workload import FilledMemory
from mevos.runtime.backend import Backend
from mevos.runtime.profile import STAGES as ALL_STAGES
from mevos.runtime.tracker import Tracker, TrackerConfig

#: The Tracker's stages, in frame order (the stacked bars and the tables use this order).
STAGES = ("preprocess", "encode_key", "affinity_topk", "readout", "refine_encode_value", "refine_decode",
          "memory_write", "postprocess")
assert set(STAGES) <= set(ALL_STAGES)


@torch.inference_mode()
def primed_tracker(backend: Backend, config: TrackerConfig, first_frame: np.ndarray, first_mask: np.ndarray,
                   memory: FilledMemory, frames: int) -> Tracker:
    """A Tracker after the first frame (mask given) whose memory holds `frames` frames: the first
    frame, then frames 1.. of `memory` in its ring. config.mem_frames must be frames - 1."""
    if config.mem_frames != frames - 1:
        raise ValueError(f"mem_frames {config.mem_frames} does not hold {frames} - 1 frames")
    tracker = Tracker(backend, config)
    tracker.step(first_frame, masks=first_mask)
    bank = tracker.memory
    assert bank is not None
    keys, values, masks, _ = memory.first(frames)
    o = len(bank.object_ids)
    for t in range(1, frames):
        bank.write(keys[t].to(backend.device), values[t].view(keys.shape[1], o, -1).to(backend.device),
                   masks[t].to(backend.device), pinned=False, stamp=t)
    return tracker


@torch.inference_mode()
def time_frame(tracker: Tracker, frame: np.ndarray, warmup: int, repeat: int, budget_s: float | None = None
               ) -> tuple[dict[str, list[float]], str]:
    """`warmup` untimed then `repeat` profiled Tracker.step calls on `frame`. -> (milliseconds per
    stage, one entry per timed step; which top-k code ran)."""
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for record in Iterations(warmup, repeat, budget_s):
        result = tracker.step(frame, profile=True)
        if record:
            for s in STAGES:
                out[s].append(result.stages.get(s, 0.0))
    assert tracker.memory is not None
    return out, tracker.memory.affinity_path(tracker.config.affinity)


def compose(times: dict[str, list[float]]) -> dict[str, dict[str, float | int]]:
    """Stage statistics in frame order."""
    return {s: summarize(times[s]) for s in STAGES if s in times}


def frame_ms(stages: dict[str, dict[str, float | int]]) -> float:
    """The frame's latency: the sum of the stage medians."""
    return float(sum(float(v["median"]) for v in stages.values()))
