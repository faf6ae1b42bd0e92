"""Model configuration: one frozen dataclass and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from mevos.errors import UsageError


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the three networks E (key encoder), V (value encoder) and D (decoder).

    Both encoders are ResNets whose stages after the second keep stride 8 (paper section 3.3).
    `feature_layer` is the last ResNet stage used: 4 for ResNet-18 (res5 without stride), 3 for
    ResNet-50 (res4 without stride, as the paper takes it).
    """

    name: str
    block: Literal["basic", "bottleneck"]
    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    stem_width: int
    feature_layer: int
    key_dim: int = 128
    value_dim: int = 512
    decoder_dim: int = 256
    # Where E's key comes from: "resnet" (a 1x1 projection of the backbone, the paper) or "xfeat"
    # (an XFeat-style CNN, Potje et al. 2024, whose weights ship inside the checkpoint; the ResNet
    # then only gives the decoder's skips, so its layers 3-4 are not built).
    key_backbone: Literal["resnet", "xfeat"] = "resnet"
    # Weight of the colour part of the key: the mean CIE Lab of each 8x8 cell, in the last
    # COLOUR_DIMS channels (3 used, zero padding keeps key_dim a multiple of 16). 0: no colour part.
    key_colour: float = 0.0
    # Weight of the lightness L relative to the chroma a, b in the colour part: below 1, a shadow
    # (mostly a change of L) moves the key less than a change of hue does.
    key_lightness: float = 1.0

    def __post_init__(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise UsageError(f"block must be 'basic' or 'bottleneck', not {self.block!r}")
        if self.feature_layer not in (3, 4):
            raise UsageError(f"feature_layer must be 3 or 4, not {self.feature_layer}")
        if len(self.layers) != 4 or len(self.widths) != 4 or min(self.layers + self.widths) < 1:
            raise UsageError("layers and widths need four positive entries each")
        if self.key_backbone not in ("resnet", "xfeat"):
            raise UsageError(f"key_backbone must be 'resnet' or 'xfeat', not {self.key_backbone!r}")
        if self.key_colour < 0 or self.key_lightness < 0:
            raise UsageError("key_colour and key_lightness must be >= 0")
        if self.key_backbone == "xfeat" and self.learned_key_dim != XFEAT_DIM:
            raise UsageError(f"an xfeat key has {XFEAT_DIM} channels (+{COLOUR_DIMS} with colour): "
                             f"key_dim must be {XFEAT_DIM + (COLOUR_DIMS if self.key_colour else 0)}")
        if self.learned_key_dim < 1:
            raise UsageError(f"key_dim must leave room for the learned key besides {COLOUR_DIMS} colour channels")

    @property
    def learned_key_dim(self) -> int:
        """Channels of the key that come from the network (the rest is the colour part)."""
        return self.key_dim - (COLOUR_DIMS if self.key_colour else 0)

    @property
    def expansion(self) -> int:
        """Channel multiplier of the block type (1 for basic, 4 for bottleneck)."""
        return 1 if self.block == "basic" else 4

    @property
    def res2_channels(self) -> int:
        """Channels of the stride-4 skip (output of layer1)."""
        return self.widths[0] * self.expansion

    @property
    def res3_channels(self) -> int:
        """Channels of the stride-8 skip (output of layer2)."""
        return self.widths[1] * self.expansion

    @property
    def feature_channels(self) -> int:
        """Channels of the last backbone stage that feeds the key/value projections."""
        return self.widths[self.feature_layer - 1] * self.expansion

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (str, int, lists), so that checkpoints load with weights_only=True."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown or missing keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"unknown model config keys: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


XFEAT_DIM = 64  # channels of XFeat's dense descriptors
COLOUR_DIMS = 16  # channels of the colour part of a key (CIE Lab in 3, zeros in the rest)

PRESETS: dict[str, ModelConfig] = {
    # The paper's ResNet-18: layer3 and layer4 without stride, 128-d key, 512-d value.
    "r18": ModelConfig(
        name="r18", block="basic", layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem_width=64, feature_layer=4
    ),
    # The paper's ResNet-50: features from res4 (layer3) without stride.
    "r50": ModelConfig(
        name="r50", block="bottleneck", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_width=64, feature_layer=3
    ),
    # Narrow ResNet-18 layout for CPU serving, the demo and the tests: about 1/16 of r18's compute.
    "small": ModelConfig(
        name="small",
        block="basic",
        layers=(1, 1, 1, 1),
        widths=(24, 48, 96, 128),
        stem_width=24,
        feature_layer=4,
        key_dim=64,
        value_dim=128,
        decoder_dim=64,
    ),
}


# The CPU default (mevos/assets/small.md): XFeat's descriptors (the teacher's weights, frozen)
# plus the cell's colour as the key; the small ResNet gives the decoder's skips; V and D as `small`.
PRESETS["small-xfeat"] = dataclasses.replace(
    PRESETS["small"], name="small-xfeat", key_dim=XFEAT_DIM + COLOUR_DIMS, key_backbone="xfeat",
    key_colour=2.0, key_lightness=0.5,
)


def preset(name: str) -> ModelConfig:
    """The named preset; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None
