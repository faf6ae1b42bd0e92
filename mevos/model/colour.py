"""sRGB -> CIE Lab (D65), for colour baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rgb_to_lab(image: Tensor) -> Tensor:
    """image B x 3 x H x W sRGB in [0, 1] -> B x 3 x H x W Lab (L in [0, 100], a and b about [-128, 127])."""
    lin = torch.where(image > 0.04045, ((image + 0.055) / 1.055) ** 2.4, image / 12.92)
    m = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                      [0.019334, 0.119193, 0.950227]], dtype=image.dtype, device=image.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / torch.tensor([0.950456, 1.0, 1.088754], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lum = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lum, a, b], dim=1)


def cell_colour(image: Tensor, stride: int, channels: int, weight: float, lightness: float = 1.0) -> Tensor:
    """image B x 3 x H x W sRGB in [0, 1] -> B x channels x H/stride x W/stride: the mean Lab of each
    cell, centred and scaled to about [-1, 1] ((L - 50) / 50 * lightness, a / 50, b / 50), times
    `weight`, in the first 3 channels; zeros in the others (padding to a kernel-friendly width)."""
    lab = F.avg_pool2d(rgb_to_lab(image), stride)
    scale = lab.new_tensor([lightness, 1.0, 1.0]).view(1, 3, 1, 1) * (weight / 50.0)
    lab = (lab - lab.new_tensor([50.0, 0.0, 0.0]).view(1, 3, 1, 1)) * scale
    return F.pad(lab, (0, 0, 0, 0, 0, channels - 3))
