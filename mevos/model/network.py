"""The three networks of the paper (section 3, Algorithm 1), one method per stage.

- encode_key   E: image -> L2-normalised key at stride 8, plus the res3 (1/8) and res2 (1/4) skips
- encode_value V: image + one soft mask per object -> one value per object at stride 8
- decode       D: (memory readout, value of the current mask) + skips -> one logit per object

Each stage is its own export boundary (ONNX graph / TensorRT engine); their names are the graph
names everywhere. Images enter as float RGB in [0, 1]; normalisation happens inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mevos.kernels.train_cpu import normalized_input
from mevos.model.colour import cell_colour
from mevos.model.config import COLOUR_DIMS, ModelConfig
from mevos.model.resnet import ResNet
from mevos.model.xfeat import XFeatDescriptor

# ImageNet statistics: the usual input normalisation for ResNets.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class _Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        return (image - self.mean) / self.std

    def input(self, image: Tensor, masks: Tensor | None = None) -> Tensor:
        """The backbone's input: self(image), with the masks as a 4th channel when given. image
        1 x 3 x H x W (shared by every mask) or N x 3 x H x W, masks N x 1 x H x W. In training on
        a CPU one compiled pass writes it channels-last (kernels/train_cpu.py)."""
        return normalized_input(image, self.mean, self.std, masks, self)


class KeyEncoder(nn.Module):
    """E: image B x 3 x H x W in [0, 1] -> key B x key_dim x H/8 x W/8 (unit L2 norm over channels),
    res3 B x res3_channels x H/8 x W/8, res2 B x res2_channels x H/4 x W/4. H, W multiples of 8."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = _Normalize()
        xfeat = config.key_backbone == "xfeat"
        self.backbone = ResNet(config, in_channels=3, skips_only=xfeat)
        # The learned key: a projection of the ResNet's features (the paper), or XFeat's descriptors.
        self.project = None if xfeat else nn.Conv2d(config.feature_channels, config.learned_key_dim, 1)
        self.xfeat = XFeatDescriptor() if xfeat else None

    def train(self, mode: bool = True) -> KeyEncoder:
        """The XFeat descriptor stays frozen (eval mode: its batch norms keep their statistics)."""
        super().train(mode)
        if self.xfeat is not None:
            self.xfeat.eval()
        return self

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat, res3, res2 = self.backbone(self.normalize.input(image))
        learned = self.xfeat(image) if self.xfeat is not None else self.project(feat)  # type: ignore[misc]
        key = F.normalize(learned, dim=1)
        if self.config.key_colour:
            # The colour part: cosine similarity of keys = descriptor similarity + colour agreement.
            colour = cell_colour(image, 8, COLOUR_DIMS, self.config.key_colour, self.config.key_lightness)
            key = F.normalize(torch.cat([key, colour], dim=1), dim=1)
        return key, res3, res2


class ValueEncoder(nn.Module):
    """V: image 1 x 3 x H x W (or O x 3 x H x W) in [0, 1] and masks O x 1 x H x W in [0, 1]
    -> values O x value_dim x H/8 x W/8. Objects are independent: one mask per batch entry."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.normalize = _Normalize()
        self.backbone = ResNet(config, in_channels=4)
        self.project = nn.Conv2d(config.feature_channels, config.value_dim, 1)

    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        feat, _, _ = self.backbone(self.normalize.input(image, masks))
        return self.project(feat)


class _ResBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MaskDecoder(nn.Module):
    """D: two residual blocks fed by skips at 1/8 and 1/4, a 1x1 conv to one logit per object.

    readout, value: O x value_dim x h x w; res3: 1 x res3_channels x h x w (shared by the objects);
    res2: 1 x res2_channels x 2h x 2w -> logits O x 1 x 8h x 8w.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.decoder_dim
        self.fuse = nn.Conv2d(2 * config.value_dim, d, 3, padding=1)
        self.skip3 = nn.Conv2d(config.res3_channels, d, 1)
        self.block3 = _ResBlock(d)
        self.skip2 = nn.Conv2d(config.res2_channels, d, 1)
        self.block2 = _ResBlock(d)
        self.predict = nn.Conv2d(d, 1, 1)

    def forward(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        x = self.fuse(torch.cat([readout, value], dim=1)) + self.skip3(res3)
        x = self.block3(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) + self.skip2(res2)
        x = self.block2(x)
        logits = self.predict(F.relu(x))
        return F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)


class MevosNet(nn.Module):
    """E, V and D together; no catch-all forward, one method per stage."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.key_encoder = KeyEncoder(config)
        self.value_encoder = ValueEncoder(config)
        self.decoder = MaskDecoder(config)

    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image B x 3 x H x W float in [0, 1] -> (key B x Ck x H/8 x W/8, res3, res2)."""
        return self.key_encoder(image)

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        """image 1 x 3 x H x W, masks O x 1 x H x W in [0, 1] -> values O x Cv x H/8 x W/8."""
        return self.value_encoder(image, masks)

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        """readout, value O x Cv x h x w; res3 1 x C3 x h x w; res2 1 x C2 x 2h x 2w -> logits O x 1 x 8h x 8w."""
        return self.decoder(readout, value, res3, res2)


def build_model(config: ModelConfig, seed: int | None = 0) -> MevosNet:
    """A freshly initialised model in eval mode; `seed` makes the untrained weights reproducible."""
    if seed is None:
        model = MevosNet(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MevosNet(config)
    return model.eval()
