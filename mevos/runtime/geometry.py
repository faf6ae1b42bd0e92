"""Frame geometry: resize to the working resolution, pad to the network stride, and back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mevos.errors import InputError
from mevos.model.graphs import STRIDE

__all__ = ["STRIDE", "Geometry"]


@dataclass(frozen=True)
class Geometry:
    """How a frame of `size` (H, W) maps onto the network input: scaled to `scaled` (H', W'),
    then padded at the bottom/right to `padded` (multiples of STRIDE)."""

    size: tuple[int, int]
    scaled: tuple[int, int]
    padded: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        """Feature grid (h, w) at stride 8."""
        return self.padded[0] // STRIDE, self.padded[1] // STRIDE

    @classmethod
    def for_size(cls, size: tuple[int, int], short_side: int | None) -> Geometry:
        """Geometry for a frame of `size`; `short_side` = working short side (None = as is)."""
        h, w = size
        if h < 1 or w < 1:
            raise InputError(f"frame size {h}x{w} is empty")
        if short_side is not None and short_side != min(h, w):
            s = short_side / min(h, w)
            sh, sw = max(1, round(h * s)), max(1, round(w * s))
        else:
            sh, sw = h, w
        ph, pw = -(-sh // STRIDE) * STRIDE, -(-sw // STRIDE) * STRIDE
        return cls((h, w), (sh, sw), (ph, pw))

    def image(self, frame: np.ndarray | Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """frame H x W x 3 uint8 (numpy or tensor) -> 1 x 3 x H'' x W'' float in [0, 1], padded by
        edge replication (so the padding looks like the image border, not a black bar)."""
        t = torch.as_tensor(frame)
        if t.ndim != 3 or t.shape[2] != 3:
            raise InputError(f"a frame must be H x W x 3 RGB, got shape {tuple(t.shape)}")
        if tuple(t.shape[:2]) != self.size:
            raise InputError(
                f"frame size {t.shape[0]}x{t.shape[1]} differs from the session's {self.size[0]}x{self.size[1]}"
            )
        x = t.to(device=device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
        if self.scaled != self.size:
            x = F.interpolate(x, size=self.scaled, mode="bilinear", align_corners=False, antialias=True)
        x = self._pad(x, mode="replicate")
        return x.to(dtype)

    def masks(self, labels: Tensor, object_ids: list[int]) -> Tensor:
        """labels H x W (int, on the target device) -> O x 1 x H'' x W'' float one-hot masks,
        resized with nearest neighbour and zero-padded."""
        onehot = torch.stack([labels == i for i in object_ids]).unsqueeze(1).to(torch.float32)
        if self.scaled != self.size:
            onehot = F.interpolate(onehot, size=self.scaled, mode="nearest")
        return self._pad(onehot, mode="constant")

    def to_input(self, probs: Tensor) -> Tensor:
        """probs C x H'' x W'' -> C x H x W: crop the padding, resize back to the frame size."""
        x = probs[:, : self.scaled[0], : self.scaled[1]]
        if self.scaled != self.size:
            # The crop is a strided view; torch's CPU bilinear resize is ~3x faster on a contiguous
            # copy (same values).
            x = F.interpolate(x.contiguous().unsqueeze(0), size=self.size, mode="bilinear", align_corners=False)[0]
        return x

    def _pad(self, x: Tensor, mode: str) -> Tensor:
        ph, pw = self.padded[0] - self.scaled[0], self.padded[1] - self.scaled[1]
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (0, pw, 0, ph), mode=mode)
