"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) as used in the CRD benchmark.

Layout: stem ``conv1 -> bn1 -> relu`` (3x3, stride 1), three stages ``layer1..layer3`` of
basic blocks (the first block of ``layer2``/``layer3`` has stride 2 and a 1x1-conv
``downsample`` shortcut), then the shared head ``avgpool -> flatten -> dropout -> fc``.
A 32x32 input gives stage outputs of 32x32, 16x16 and 8x8.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ._common import add_head, init_kaiming_fan_out, run_head
from ._zoo import register_model

__all__ = [
    "BasicBlock", "CifarResNet", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44",
    "resnet56", "resnet110", "resnet8x4", "resnet32x4",
]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut; returns ``relu(branch + shortcut)``."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + identity)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` with channel widths ``(stem, stage1, stage2, stage3)``."""

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (>= 8), got {depth}")
        n = (depth - 2) // 6
        stem, w1, w2, w3 = widths
        self.in_ch = stem
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(w1, n, stride=1)
        self.layer2 = self._make_layer(w2, n, stride=2)
        self.layer3 = self._make_layer(w3, n, stride=2)
        add_head(self, w3 * BasicBlock.expansion, num_classes, dropout)
        init_kaiming_fan_out(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_ch = planes * BasicBlock.expansion
        downsample = None
        if stride != 1 or self.in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        layers = [BasicBlock(self.in_ch, planes, stride, downsample)]
        self.in_ch = out_ch
        layers += [BasicBlock(out_ch, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return run_head(self, x)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8")
def resnet8(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes, dropout)


@register_model("resnet14")
def resnet14(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes, dropout)


@register_model("resnet20")
def resnet20(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes, dropout)


@register_model("resnet32")
def resnet32(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes, dropout)


@register_model("resnet44")
def resnet44(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes, dropout)


@register_model("resnet56")
def resnet56(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes, dropout)


@register_model("resnet110")
def resnet110(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes, dropout)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    """4x wider resnet8 (widths 32/64/128/256), the usual CRD student."""
    return CifarResNet(8, _WIDE, num_classes, dropout)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 100, dropout: float = 0.0) -> CifarResNet:
    """4x wider resnet32 (widths 32/64/128/256), the usual CRD teacher."""
    return CifarResNet(32, _WIDE, num_classes, dropout)
