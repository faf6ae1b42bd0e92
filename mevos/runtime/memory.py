"""The reference memory: pinned frames plus a ring buffer of recent frames, in preallocated,
contiguous buffers so that reading it never copies (the common case) and memory use is flat.

Layout (S = max_pinned + mem_frames slots, P = h*w grid cells, O objects, position-major):
keys S x P x Ck, values S x P x O x Cv, masks S x P x O, valid S x O (object o exists in slot s).
Used slots are always [0, n). Objects added later are valid only in the slots written after they
appeared, so each object reads only the frames in which it was known.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mevos.kernels import ops
from mevos.runtime.profile import StageClock, mark


@dataclass(frozen=True)
class AffinityConfig:
    """How a query reads the memory (paper defaults: top-k 10, temperature 0.05). impl: which code
    computes it, one of mevos.kernels.ops.IMPLS ('auto': the fused kernels where the device has
    them, else the chunked reference; 'dense': the materialised baseline)."""

    top_k: int = 10
    temperature: float = 0.05
    radius: int | None = None
    chunk_size: int = 1024
    impl: str = "auto"

    def __post_init__(self) -> None:
        ops.check_impl(self.impl)


class MemoryBank:
    """Keys, per-object values and masks of the reference frames of one tracking session."""

    def __init__(self, mem_frames: int, max_pinned: int, grid: tuple[int, int], key_dim: int, value_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.mem_frames, self.max_pinned = mem_frames, max_pinned
        self.grid = grid
        self.key_dim, self.value_dim = key_dim, value_dim
        self.device, self.dtype = device, dtype
        self.object_ids: list[int] = []
        slots, positions = max_pinned + mem_frames, grid[0] * grid[1]
        self.keys = torch.zeros(slots, positions, key_dim, device=device, dtype=dtype)
        self.values = torch.zeros(slots, positions, 0, value_dim, device=device, dtype=dtype)
        self.masks = torch.zeros(slots, positions, 0, device=device, dtype=dtype)
        self.valid = torch.zeros(slots, 0, dtype=torch.bool)
        self.pinned = torch.zeros(slots, dtype=torch.bool)
        self.stamp = [0] * slots  # frame number of each slot, to find the oldest
        self.used = 0

    @property
    def num_pinned(self) -> int:
        return int(self.pinned[: self.used].sum())

    def add_objects(self, ids: list[int]) -> None:
        """Append object channels (zero, invalid in every slot so far)."""
        new = [i for i in ids if i not in self.object_ids]
        if not new:
            return
        s, p, n = self.keys.shape[0], self.keys.shape[1], len(new)
        z = dict(device=self.device, dtype=self.dtype)
        self.values = torch.cat([self.values, torch.zeros(s, p, n, self.value_dim, **z)], dim=2)
        self.masks = torch.cat([self.masks, torch.zeros(s, p, n, **z)], dim=2)
        self.valid = torch.cat([self.valid, torch.zeros(s, n, dtype=torch.bool)], dim=1)
        self.object_ids.extend(new)

    def remove_objects(self, ids: list[int]) -> None:
        """Drop object channels from every slot."""
        keep = [j for j, i in enumerate(self.object_ids) if i not in ids]
        idx = torch.tensor(keep, dtype=torch.long)
        self.values = self.values.index_select(2, idx.to(self.device)).contiguous()
        self.masks = self.masks.index_select(2, idx.to(self.device)).contiguous()
        self.valid = self.valid.index_select(1, idx)
        self.object_ids = [self.object_ids[j] for j in keep]

    def write(self, key: Tensor, values: Tensor, masks: Tensor, pinned: bool, stamp: int) -> None:
        """Store one frame. key P x Ck; values P x O x Cv and masks P x O for all current objects.

        A pinned frame takes a new pinned slot (past max_pinned, the oldest pinned slot other than
        the first frame's is overwritten); others go to the ring buffer, overwriting its oldest slot.
        With mem_frames 0 there is no ring buffer: a frame that is not pinned is not stored.
        """
        if not pinned and self.mem_frames == 0:
            return
        slot = self._slot_for(pinned)
        self.keys[slot].copy_(key)
        self.values[slot].copy_(values)
        self.masks[slot].copy_(masks)
        self.valid[slot] = True
        self.pinned[slot] = pinned
        self.stamp[slot] = stamp

    def _slot_for(self, pinned: bool) -> int:
        same = [s for s in range(self.used) if bool(self.pinned[s]) == pinned]
        limit = self.max_pinned if pinned else self.mem_frames
        if len(same) < limit:
            self.used += 1
            return self.used - 1
        if pinned:
            first = min(same, key=lambda s: self.stamp[s])
            same = [s for s in same if s != first] or [first]
        return min(same, key=lambda s: self.stamp[s])

    def affinity_path(self, cfg: AffinityConfig) -> str:
        """Which top-k code a read with `cfg` runs now (the benchmark's record of it)."""
        n = max(1, self.used)
        keys = self.keys[:n]
        return ops.describe(cfg.impl, keys[0], keys, min(cfg.top_k, n * keys.shape[1]))

    def read(self, query: Tensor, cfg: AffinityConfig, out: tuple[Tensor, Tensor] | None = None,
             clock: StageClock | None = None, error_flag: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query P x Ck -> (readout values O x Cv x P, warped masks O x P), float32; written into
        `out` (two such buffers) when given, else into new tensors.

        Objects are grouped by the set of slots they are valid in; in the common case (all objects
        known since the first frame) that is one group and the buffers are read without a copy.
        Nothing here waits for the device: the slot bookkeeping and the pinned flags stay on the host.
        clock: the profiling hook; the top-k is charged to affinity_topk, the rest to readout.
        error_flag: passed to the fused kernels, which then set it instead of waiting for the
        device to raise (the fast tracker reads it once per frame).
        """
        n, p, o = self.used, self.keys.shape[1], len(self.object_ids)
        if out is None:
            out = (torch.empty(o, self.value_dim, p, device=self.device, dtype=torch.float32),
                   torch.empty(o, p, device=self.device, dtype=torch.float32))
        out_v, out_m = out
        valid = self.valid[:n]
        groups: dict[tuple[bool, ...], list[int]] = {}
        for j in range(o):
            groups.setdefault(tuple(valid[:, j].tolist()), []).append(j)
        for pattern, objs in groups.items():
            slots = [s for s, ok in enumerate(pattern) if ok]
            if slots == list(range(n)):
                keys, pinned = self.keys[:n], self.pinned[:n]
                vals, msks = self.values[:n], self.masks[:n]
            else:
                sel = torch.tensor(slots, dtype=torch.long)
                keys, pinned = self.keys[sel.to(self.device)], self.pinned[sel]
                vals, msks = self.values[sel.to(self.device)], self.masks[sel.to(self.device)]
            if len(objs) != o:
                ob = torch.tensor(objs, dtype=torch.long, device=self.device)
                vals, msks = vals.index_select(2, ob), msks.index_select(2, ob)
            t = keys.shape[0]
            k = min(cfg.top_k, t * p)
            weights, indices = ops.topk_affinity(
                query, keys, k=k, temperature=cfg.temperature, grid=self.grid, pinned=pinned,
                radius=cfg.radius, chunk_size=cfg.chunk_size, impl=cfg.impl, error_flag=error_flag,
            )
            mark(clock, "affinity_topk")
            g = len(objs)
            # Two reads over the same top-k rather than one over a concatenation, which would copy
            # the whole T x P memory every frame.
            rv = ops.readout(weights, indices, vals.reshape(t * p, g * self.value_dim), chunk_size=cfg.chunk_size,
                             impl=cfg.impl, error_flag=error_flag)
            rm = ops.readout(weights, indices, msks.reshape(t * p, g), chunk_size=cfg.chunk_size, impl=cfg.impl,
                             error_flag=error_flag)
            if g == o:  # every object in one group: plain copies, no index tensor to upload
                out_v.copy_(rv.view(p, g, self.value_dim).permute(1, 2, 0))
                out_m.copy_(rm.t())
            else:
                idx = torch.tensor(objs, dtype=torch.long, device=self.device)
                out_v[idx] = rv.view(p, g, self.value_dim).permute(1, 2, 0)
                out_m[idx] = rm.t()
            mark(clock, "readout")
        return out_v, out_m
