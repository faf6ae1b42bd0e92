"""The inputs every measurement shares: a synthetic video at a resolution, and a reference memory
filled with real encoder outputs of its frames."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from mevos.data.synthetic import SyntheticConfig, SyntheticVideo, generate
from mevos.runtime import propagate as stages
from mevos.runtime.backend import Backend
from mevos.runtime.geometry import Geometry


@lru_cache(maxsize=8)
def video(height: int, width: int, objects: int, frames: int) -> SyntheticVideo:
    """The seeded synthetic demo video (same seed for every measurement, so every backend sees
    the same frames). Objects move through the whole video in one pass."""
    return generate(SyntheticConfig(height=height, width=width, num_frames=max(frames, 2), num_objects=objects,
                                    seed=0, name=f"bench-{width}x{height}-{objects}obj"))


@dataclass
class FilledMemory:
    """T frames of memory as the tracker's MemoryBank holds them (position-major, fp32):
    keys T x P x Ck, values T x P x O*Cv, masks T x P x O, pinned T (bool, CPU; frame 0 pinned)."""

    keys: Tensor
    values: Tensor
    masks: Tensor
    pinned: Tensor
    geometry: Geometry

    def first(self, t: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The first t frames (views, no copy)."""
        return self.keys[:t], self.values[:t], self.masks[:t], self.pinned[:t]


@torch.inference_mode()
def fill_memory(backend: Backend, clip: SyntheticVideo, frames: int) -> FilledMemory:
    """Encode `frames` distinct frames of the clip (keys by E, the memory entry of each frame's
    exact masks: runtime.propagate) into a memory like the tracker's after that many frames."""
    h0, w0 = clip.frames[0].shape[:2]
    geo = Geometry.for_size((h0, w0), None)
    dev = backend.device
    ids = list(range(1, clip.num_objects + 1))
    keys, values, masks = [], [], []
    for t in range(frames):
        i = t % len(clip.frames)
        image = geo.image(clip.frames[i], dev)
        key, _, _ = backend.encode_key(image)
        onehot = geo.masks(torch.as_tensor(clip.labels[i]).to(dev, torch.int64), ids)  # O x 1 x H x W
        value, small = stages.memory_entry(backend, image, onehot[:, 0])  # P x O x Cv, P x O
        keys.append(stages.query_of(key).float())
        values.append(value.reshape(value.shape[0], -1).float())
        masks.append(small.float())
    pinned = torch.zeros(frames, dtype=torch.bool)
    pinned[0] = True
    return FilledMemory(torch.stack(keys).contiguous(), torch.stack(values).contiguous(),
                        torch.stack(masks).contiguous(), pinned, geo)


def first_labels(clip: SyntheticVideo) -> np.ndarray:
    return clip.labels[0]
