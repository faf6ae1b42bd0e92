"""ResNet-18/50 backbones with output stride 8, written here (there is no CPU torchvision).

Layer layout follows He et al. 2016 (torchvision's naming, so the parameter names are familiar):
stem (conv 7x7 s2 + max-pool s2) -> layer1 (s4) -> layer2 (s8) -> layer3, layer4 (stride removed, s8).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mevos.kernels.train_cpu import batch_norm_relu, max_pool
from mevos.model.config import ModelConfig


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        # batch_norm_relu: relu(bn(.)), one compiled layer when training on a CPU (kernels/train_cpu.py)
        out = batch_norm_relu(self.conv1(x), self.bn1)
        return batch_norm_relu(self.conv2(out), self.bn2, residual=identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = batch_norm_relu(self.conv1(x), self.bn1)
        out = batch_norm_relu(self.conv2(out), self.bn2)
        return batch_norm_relu(self.conv3(out), self.bn3, residual=identity)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """Backbone returning (features at stride 8, res3 at stride 8, res2 at stride 4).

    x: B x in_channels x H x W (H, W multiples of 8) -> features B x feature_channels x H/8 x W/8,
    res3 B x res3_channels x H/8 x W/8, res2 B x res2_channels x H/4 x W/4.
    """

    def __init__(self, config: ModelConfig, in_channels: int = 3, skips_only: bool = False) -> None:
        super().__init__()
        block = BasicBlock if config.block == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(in_channels, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        strides = (1, 2, 1, 1)  # layer3 and layer4 keep stride 8 (paper section 3.3)
        cin = config.stem_width
        stages: list[nn.Sequential] = []
        # skips_only: layers 1-2 alone (the skips), for a key encoder whose key comes from elsewhere.
        for i in range(2 if skips_only else config.feature_layer):
            blocks = []
            for j in range(config.layers[i]):
                blocks.append(block(cin, config.widths[i], strides[i] if j == 0 else 1))
                cin = config.widths[i] * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2 = stages[0], stages[1]
        self.layer3 = stages[2] if len(stages) > 2 else None
        self.layer4 = stages[3] if len(stages) > 3 else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def _pool(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():
            return max_pool(x, self.maxpool)  # the compiled layer when training on a CPU (kernels/train_cpu.py)
        # torch's CPU max_pool2d is about 3x faster over channels-last than over NCHW (37 vs 12 ms
        # for 64 x 120 x 216 on one core), with the same values. Inference only (training and
        # export keep the plain op).
        if (x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.jit.is_tracing()
                and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()
                and not torch.compiler.is_exporting()):
            return self.maxpool(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self.maxpool(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self._pool(batch_norm_relu(self.conv1(x), self.bn1))
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        if self.layer3 is None:  # skips_only: the stride-8 skip stands in for the features
            return res3, res3, res2
        feat = self.layer3(res3)
        if self.layer4 is not None:
            feat = self.layer4(feat)
        return feat, res3, res2


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["ResNet", "BasicBlock", "Bottleneck", "count_parameters", "torch"]
