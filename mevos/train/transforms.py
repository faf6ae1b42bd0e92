"""Phi: geometric transformations (scaling, cropping, flipping) that apply to images, feature maps
and label maps alike.

A transformation is an axis-aligned affine map from output to source coordinates, both normalised
to [-1, 1] with align_corners=False (pixel centres at (2i+1)/n - 1): src = a * dst + b per axis,
a < 0 for a flip. Because the map is in normalised coordinates it does not care about the sampled
tensor's resolution: the same Phi crops an image at full resolution and its features at stride 8,
so cell centres of the feature grid land where the matching pixel blocks of the image land.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Transform:
    """src = (ay * dst_y + by, ax * dst_x + bx) in normalised coordinates."""

    ay: float = 1.0
    by: float = 0.0
    ax: float = 1.0
    bx: float = 0.0

    @classmethod
    def crop(cls, size: tuple[int, int], box: tuple[float, float, float, float], flip: bool = False) -> Transform:
        """Crop `box` = (y0, x0, h, w) in pixels of an image of `size` (H, W) (the output is
        the box resized to whatever output size is asked for), then mirror left-right if `flip`."""
        H, W = size
        y0, x0, h, w = box
        ay, by = h / H, (2 * y0 + h) / H - 1
        ax, bx = w / W, (2 * x0 + w) / W - 1
        if flip:
            ax = -ax
        return cls(ay, by, ax, bx)

    def then(self, other: Transform) -> Transform:
        """The transformation `other` applied to the output of `self` (other after self)."""
        return Transform(self.ay * other.ay, self.ay * other.by + self.by,
                         self.ax * other.ax, self.ax * other.bx + self.bx)

    def theta(self) -> Tensor:
        """2 x 3 affine matrix for F.affine_grid (x first, then y)."""
        return torch.tensor([[self.ax, 0.0, self.bx], [0.0, self.ay, self.by]], dtype=torch.float32)

    def apply(self, x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
        """x: B x C x H x W (images, features or float label maps) -> B x C x size[0] x size[1].
        mode 'nearest' for label maps."""
        return apply_batch(x, [self] * x.shape[0], size, mode)


def apply_batch(x: Tensor, transforms: list[Transform], size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """One transformation per batch entry: x B x C x H x W -> B x C x size."""
    theta = torch.stack([t.theta() for t in transforms]).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size[0], size[1]], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def sample_clip_transform(
    rng: np.random.Generator, size: tuple[int, int], crop: int, scale_min: int, scale_max: int, flip: bool
) -> Transform:
    """The per-clip augmentation: scale the short side of a (H, W) frame to a random value in
    [scale_min, scale_max], take a random crop x crop box from it, flip with probability 1/2."""
    H, W = size
    short = float(rng.uniform(scale_min, scale_max))
    s = short / min(H, W)
    sh, sw = H * s, W * s
    y0 = float(rng.uniform(0, max(sh - crop, 0)))
    x0 = float(rng.uniform(0, max(sw - crop, 0)))
    # In the original frame's pixels: the crop box scaled back by 1/s.
    box = (y0 / s, x0 / s, min(crop, sh) / s, min(crop, sw) / s)
    return Transform.crop((H, W), box, flip=flip and bool(rng.random() < 0.5))


def sample_phi(rng: np.random.Generator, scale_min: float, flip: bool) -> Transform:
    """Phi of Eq. 11/13 on a square crop: a random sub-box of side in [scale_min, 1] of the crop
    (resized back to the crop size: a zoom), and a random flip."""
    side = float(rng.uniform(scale_min, 1.0))
    y0, x0 = (float(v) for v in rng.uniform(0, 1 - side, 2))
    return Transform.crop((1, 1), (y0, x0, side, side), flip=flip and bool(rng.random() < 0.5))
