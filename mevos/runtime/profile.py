"""The profiling hook of the trackers: per-stage milliseconds of one frame, for the benchmark.

A tracker's step(..., profile=True) creates a StageClock; every stage boundary calls mark(stage),
which waits for the device and charges the time since the previous mark to that stage. Without
profile the trackers hold no clock and never wait, so a profiled frame costs a few device
synchronisations more than an unprofiled one and nothing else differs: the benchmark times the
code users run.
"""

from __future__ import annotations

import time

import torch

#: Stages of a propagated frame, in order (the fast tracker merges the refinement rounds into
#: one "refine" stage, a CUDA graph, and uploads into "upload").
STAGES = ("upload", "preprocess", "encode_key", "affinity_topk", "readout", "refine_encode_value", "refine_decode",
          "refine", "memory_write", "postprocess")


class StageClock:
    """Milliseconds per stage of one frame on `device` (synchronised before every clock read)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self._sync()
        self._last = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def mark(self, stage: str) -> None:
        """Charge the time since the previous mark to `stage` (added up over repeated marks)."""
        self._sync()
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._last) * 1e3
        self._last = now


def mark(clock: StageClock | None, stage: str) -> None:
    """clock.mark(stage) when profiling, else nothing."""
    if clock is not None:
        clock.mark(stage)
