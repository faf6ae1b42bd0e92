"""Per-stage latency of one frame, in the order of Tracker.step, with the tracker's own tensors.

The stages of a propagated frame (Algorithm 1), each timed alone, the device synchronised before
every clock read:

    preprocess           uint8 frame -> device, float, padded (Geometry.image)
    encode_key           E: key, res3, res2 (and the query view of the key)
    affinity_topk        top-k affinity of the query over the T memory frames
    readout              values and masks read through the top-k (two readouts)
    refine_encode_value  V over the current masks, R times
    refine_decode        D, sigmoid and soft aggregation, R times
    memory_write         V over the final masks, pooled masks, copy into a memory slot
    postprocess          soft aggregation, crop, argmax label map, copy to the host

The network stages do not depend on the memory size and the memory stages do not depend on the
backend, so they are measured apart and cached: network stages per (backend, precision,
resolution, objects), memory stages per (affinity implementation, device, resolution, objects,
memory frames). The frame's latency is the sum of the stage medians. A time budget may cut
the repetitions of an expensive measurement short (see measure.Iterations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.bench.measure import Iterations, clock, summarize, sync
from mevos.bench.workload import FilledMemory
from mevos.kernels import ops, reference
from mevos.kernels.reference import soft_aggregate, with_background
from mevos.runtime.backend import Backend
from mevos.runtime.geometry import STRIDE, Geometry
from mevos.runtime.memory import AffinityConfig

NETWORK_STAGES = ("preprocess", "encode_key", "refine_encode_value", "refine_decode", "memory_write", "postprocess")
MEMORY_STAGES = ("affinity_topk", "readout")
#: All stages, in frame order (the stacked bars and the tables use this order).
STAGES = ("preprocess", "encode_key", "affinity_topk", "readout", "refine_encode_value", "refine_decode",
          "memory_write", "postprocess")

AffinityFn = Callable[..., tuple[Tensor, Tensor]]
ReadoutFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AffinityImpl:
    """How the memory is read: 'ops' (what the tracker calls) or 'dense' (the baseline)."""

    name: str

    def functions(self) -> tuple[AffinityFn, ReadoutFn]:
        if self.name == "dense":
            return (lambda q, m, **kw: reference.dense_topk_affinity(q, m, **{k: v for k, v in kw.items()
                                                                               if k != "chunk_size"}),
                    lambda w, i, v: reference.readout(w, i, v, chunk_size=max(1, w.shape[0])))
        return ops.topk_affinity, lambda w, i, v: ops.readout(w, i, v)

    def path(self, query: Tensor, keys: Tensor, k: int) -> str:
        """Which code actually runs: 'dense reference', 'fused CUDA kernel' or 'chunked reference'."""
        if self.name == "dense":
            return "dense reference"
        if ops.fused_enabled(query, keys):
            try:
                from mevos.kernels import fused

                why = fused.topk_unsupported(query, keys, k)
            except (ImportError, AttributeError):  # the kernels' module changed shape: say so, do not fail
                return "fused CUDA kernel (cover not checked)"
            return "fused CUDA kernel" if why is None else f"chunked reference ({why})"
        return "chunked reference"


def _query(key: Tensor) -> Tensor:
    """key 1 x Ck x h x w -> P x Ck, as Tracker.step forms it."""
    return key[0].reshape(key.shape[1], -1).t()


@torch.inference_mode()
def time_memory(impl: AffinityImpl, query: Tensor, memory: FilledMemory, frames: int, affinity: AffinityConfig,
                warmup: int, repeat: int, budget_s: float | None = None) -> tuple[dict[str, list[float]], str]:
    """Top-k affinity and the two readouts over the first `frames` memory frames, as
    MemoryBank.read runs them when every object is known in every frame. -> (ms lists, path)."""
    device = query.device
    keys, values, masks, pinned = memory.first(frames)
    t, p = keys.shape[:2]
    k = min(affinity.top_k, t * p)
    topk, read = impl.functions()
    kw = dict(k=k, temperature=affinity.temperature, grid=memory.geometry.grid, pinned=pinned.to(device),
              radius=affinity.radius, chunk_size=affinity.chunk_size)
    flat_v, flat_m = values.reshape(t * p, -1), masks.reshape(t * p, -1)
    out: dict[str, list[float]] = {s: [] for s in MEMORY_STAGES}
    for record in Iterations(warmup, repeat, budget_s):
        t0 = clock(device)
        weights, indices = topk(query, keys, **kw)
        t1 = clock(device)
        read(weights, indices, flat_v)
        read(weights, indices, flat_m)
        t2 = clock(device)
        if record:
            out["affinity_topk"].append((t1 - t0) * 1e3)
            out["readout"].append((t2 - t1) * 1e3)
    return out, impl.path(query, keys, k)


@torch.inference_mode()
def readout_inputs(query: Tensor, memory: FilledMemory, objects: int, affinity: AffinityConfig
                   ) -> tuple[Tensor, Tensor]:
    """A real memory readout for the refinement stages: (readout O x Cv x h x w, coarse masks
    O x 1 x H'' x W''), from all memory frames, computed once (untimed)."""
    keys, values, masks, pinned = memory.first(memory.keys.shape[0])
    t, p = keys.shape[:2]
    h, w = memory.geometry.grid
    weights, indices = reference.topk_affinity(query.float(), keys, k=min(affinity.top_k, t * p),
                                               temperature=affinity.temperature, grid=(h, w), pinned=pinned)
    rv = reference.readout(weights, indices, values.reshape(t * p, -1))
    rm = reference.readout(weights, indices, masks.reshape(t * p, -1))
    readout = rv.view(p, objects, -1).permute(1, 2, 0).reshape(objects, -1, h, w)
    coarse = F.interpolate(rm.t().reshape(objects, 1, h, w), size=memory.geometry.padded, mode="bilinear",
                           align_corners=False).clamp(0, 1)
    return readout, coarse


@torch.inference_mode()
def time_network(backend: Backend, frame: np.ndarray, geometry: Geometry, readout: Tensor, coarse: Tensor,
                 refine_rounds: int, warmup: int, repeat: int, budget_s: float | None = None
                 ) -> dict[str, list[float]]:
    """The network stages of one propagated frame (see the module docstring), `warmup` untimed
    frames then `repeat` timed ones. readout O x Cv x h x w and coarse O x 1 x H'' x W'' come
    from a real memory read; they are moved to the backend's device."""
    dev = backend.device
    readout, coarse = readout.to(dev), coarse.to(dev)
    o = coarse.shape[0]
    ids = list(range(1, o + 1))
    lut = torch.tensor([0, *ids], dtype=torch.uint8, device=dev)
    p = geometry.grid[0] * geometry.grid[1]
    slot_v = torch.empty(p, o, backend.config.value_dim, device=dev)
    slot_m = torch.empty(p, o, device=dev)
    out: dict[str, list[float]] = {s: [] for s in NETWORK_STAGES}
    for record in Iterations(warmup, repeat, budget_s):
        ms: dict[str, float] = dict.fromkeys(NETWORK_STAGES, 0.0)
        t0 = clock(dev)
        image = geometry.image(torch.as_tensor(frame), dev)
        t1 = clock(dev)
        ms["preprocess"] = t1 - t0
        key, res3, res2 = backend.encode_key(image)
        _query(key)
        t2 = clock(dev)
        ms["encode_key"] = t2 - t1
        probs = coarse
        for _ in range(refine_rounds):
            ta = clock(dev)
            value = backend.encode_value(image, probs.to(image.dtype))
            tb = clock(dev)
            logits = backend.decode(readout.to(value.dtype), value, res3, res2)
            probs = soft_aggregate(torch.sigmoid(logits.float())[:, 0])[1:].unsqueeze(1)
            tc = clock(dev)
            ms["refine_encode_value"] += tb - ta
            ms["refine_decode"] += tc - tb
        probs = probs[:, 0].float()
        t3 = clock(dev)
        values = backend.encode_value(image, probs.unsqueeze(1).to(image.dtype))
        small = F.avg_pool2d(probs.unsqueeze(1), STRIDE)[:, 0]
        slot_v.copy_(values.reshape(o, -1, p).permute(2, 0, 1))
        slot_m.copy_(small.reshape(o, p).t())
        t4 = clock(dev)
        ms["memory_write"] = t4 - t3
        full = geometry.to_input(with_background(probs) if refine_rounds > 0 else soft_aggregate(probs))
        lut[full.argmax(dim=0)].cpu().numpy()
        full[1:].float().cpu().numpy()
        t5 = clock(dev)
        ms["postprocess"] = t5 - t4
        if record:
            for s in NETWORK_STAGES:
                out[s].append(ms[s] * 1e3)
    sync(dev)
    return out


def compose(network: dict[str, list[float]], memory: dict[str, list[float]]) -> dict[str, dict[str, float | int]]:
    """Stage statistics in frame order."""
    both = {**network, **memory}
    return {s: summarize(both[s]) for s in STAGES if s in both}


def frame_ms(stages: dict[str, dict[str, float | int]]) -> float:
    """The frame's latency: the sum of the stage medians."""
    return float(sum(float(v["median"]) for v in stages.values()))
