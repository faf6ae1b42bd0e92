"""Measurements of the fast tracker (mevos.runtime.fast): throughput, per-stage breakdown, host
synchronisations per frame, and its J&F against the fp32 baseline on DAVIS."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mevos.bench.measure import Meters, clock, summarize
from mevos.model.network import MevosNet
from mevos.runtime.backend import TorchBackend
from mevos.runtime.fast import STAGES, FastOptions, FastTracker
from mevos.runtime.tracker import Tracker, TrackerConfig, track

GOAL_FPS = 200.0
JF_TOLERANCE = 0.005


def _fresh(model: MevosNet, config: TrackerConfig, device: torch.device, options: FastOptions) -> FastTracker:
    return FastTracker(model, config, device=device, options=options)


def _warm(fast: FastTracker, frames: list[np.ndarray], first_mask: np.ndarray, warmup: int) -> None:
    prev = fast.step(frames[0], masks=first_mask)
    for i in range(1, warmup):
        cur = fast.step(frames[i])
        prev.labels  # noqa: B018 - reading waits for the device
        prev = cur
    prev.labels  # noqa: B018


def run_fast(model: MevosNet, config: TrackerConfig, frames: list[np.ndarray], first_mask: np.ndarray,
             warmup: int, device: torch.device, options: FastOptions | None = None) -> dict[str, Any]:
    """Pipelined throughput: frame t is queued before frame t-1's labels are read."""
    options = options or FastOptions()
    fast = _fresh(model, config, device, options)
    _warm(fast, frames, first_mask, warmup)
    with Meters(device) as meters:
        start = clock(device)
        prev = None
        for i in range(warmup, len(frames)):
            cur = fast.step(frames[i])
            if prev is not None:
                prev.labels  # noqa: B018 - reading waits for the device
            prev = cur
        if prev is not None:
            prev.labels  # noqa: B018 - reading waits for the device
        total = clock(device) - start
    timed = len(frames) - warmup
    return {"frames_warmup": warmup, "frames_timed": timed, "fps": timed / total,
            "ms_per_frame": {"mean": total / timed * 1e3}, "cuda_graphs": fast.graphs_active,
            "graph_error": fast.graph_error, "options": options.__dict__, **meters.memory()}


def profile_fast(model: MevosNet, config: TrackerConfig, frames: list[np.ndarray], first_mask: np.ndarray,
                 warmup: int, repeat: int, device: torch.device, options: FastOptions | None = None
                 ) -> dict[str, Any]:
    """Per-stage milliseconds (device synchronised at each stage boundary), and the host
    synchronisations torch reports per frame in an unprofiled pass (set_sync_debug_mode)."""
    options = options or FastOptions()
    fast = _fresh(model, config, device, options)
    _warm(fast, frames, first_mask, warmup)
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    n = 0
    for i in range(warmup, len(frames)):
        if n >= repeat:
            break
        result = fast.step(frames[i], profile=True)
        for s in STAGES:
            per_stage[s].append(result.stages.get(s, 0.0))
        n += 1
    syncs = _count_syncs(fast, frames[warmup:warmup + min(repeat, 10)]) if device.type == "cuda" else None
    return {"stages_ms": {s: summarize(v) for s, v in per_stage.items()},
            "frame_ms": float(sum(float(summarize(v)["median"]) for v in per_stage.values())),
            "host_syncs_per_frame": syncs, "cuda_graphs": fast.graphs_active,
            "affinity_path": fast.memory.affinity_path(config.affinity) if fast.memory is not None else None}


def _count_syncs(fast: FastTracker, frames: list[np.ndarray]) -> float | None:
    if not frames:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            results = [fast.step(f) for f in frames]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for r in results:
        r.labels  # noqa: B018
    hits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(hits) / len(frames)


def jf_parity(model: MevosNet, config: TrackerConfig, davis: Path, sequences: tuple[str, ...],
              device: torch.device, options: FastOptions | None = None) -> dict[str, Any]:
    """J&F (official protocol) of the fp32 baseline (torch fp32, dense affinity) and of the fast
    path over DAVIS sequences, their difference, and the fraction of pixels they label alike."""
    from mevos.data.davis import DavisFolder
    from mevos.eval.evaluate import GlobalScores, evaluate_sequence

    folder = DavisFolder(davis)
    seqs = list(sequences) or folder.sequences
    reference_backend = TorchBackend(model, device=device, precision="fp32")
    ref_scores, fast_scores, agree, t0 = [], [], [], time.perf_counter()
    for seq in seqs:
        frames = list(folder.frames(seq))
        first = folder.first_mask(seq)
        gt = np.stack(list(folder.masks(seq)))
        tracker = Tracker(reference_backend, dataclasses.replace(config, affinity_impl="dense"))
        ref = np.stack([tracker.step(f, masks=first if i == 0 else None).labels for i, f in enumerate(frames)])
        fast = FastTracker(model, config, device=device, options=options)
        got = np.stack([result.labels for _, result in track(fast, frames, first)])
        ref_scores += evaluate_sequence(gt, ref, name=seq)
        fast_scores += evaluate_sequence(gt, got, name=seq)
        agree.append(float((ref == got).mean()))
    ref_jf, fast_jf = GlobalScores.of(ref_scores).JF_mean, GlobalScores.of(fast_scores).JF_mean
    delta = fast_jf - ref_jf
    return {"status": "ok", "davis": str(davis), "sequences": seqs, "reference": "torch fp32, dense affinity",
            "jf_reference": ref_jf, "jf_fast": fast_jf, "jf_delta": delta, "tolerance": JF_TOLERANCE,
            "within_tolerance": abs(delta) <= JF_TOLERANCE, "pixel_agreement": float(np.mean(agree)),
            "seconds": time.perf_counter() - t0}
