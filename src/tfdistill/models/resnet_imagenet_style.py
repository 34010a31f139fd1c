"""Bottleneck ResNet-50 for 32x32 inputs as used in the CRD benchmark (``ResNet50``).

ImageNet-style block counts (3, 4, 6, 3) and widths (64..512, expansion 4), but a CIFAR stem:
``conv1`` (3x3, stride 1) -> ``bn1`` -> ``relu`` with no max pool. Four stages
``layer1..layer4`` (32, 16, 8, 4 for a 32x32 input), then the shared head
``avgpool -> flatten -> dropout -> fc`` on 2048 channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import add_head, init_kaiming_fan_out, run_head
from ._zoo import register_model

__all__ = ["Bottleneck", "ResNetV2", "ResNet50"]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels), projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNetV2(nn.Module):
    """Bottleneck ResNet with a CIFAR stem (CRD's ``resnetv2.ResNet``)."""

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, num_blocks=(3, 4, 6, 3), num_classes: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_ch = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        add_head(self, 512 * Bottleneck.expansion, num_classes, dropout)
        init_kaiming_fan_out(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(Bottleneck(self.in_ch, planes, stride if i == 0 else 1))
            self.in_ch = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return run_head(self, x)


@register_model("ResNet50")
def ResNet50(num_classes: int = 100, dropout: float = 0.0) -> ResNetV2:  # noqa: N802
    """CRD's ResNet50 for 32x32 inputs (23,705,252 parameters at 100 classes)."""
    return ResNetV2((3, 4, 6, 3), num_classes, dropout)
