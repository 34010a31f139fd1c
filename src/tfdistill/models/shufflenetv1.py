"""ShuffleNet V1 (groups 3) for CIFAR as used in the CRD benchmark (``ShuffleV1``).

Stem ``conv1`` (1x1, 24 channels) -> ``bn1`` -> ``relu`` at full resolution, three stages
``layer1..layer3`` (4, 8, 4 units; widths 240, 480, 960; each starts with a stride-2 unit),
then the shared head ``avgpool -> flatten -> dropout -> fc``. A 32x32 input gives stage
outputs 16x16, 8x8 and 4x4.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import add_head, run_head
from ._shuffle import ChannelShuffle
from ._zoo import register_model

__all__ = ["ShuffleUnit", "ShuffleNetV1", "ShuffleV1"]


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, plus shortcut.

    Stride 2: the shortcut is a 3x3/2 average pool concatenated to the branch (so the branch
    produces ``out_ch`` = requested width minus input width). Stride 1: residual sum.
    Returns ``relu`` of the merged tensor.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int,
                 first_groups: int | None = None) -> None:
        super().__init__()
        self.stride = stride
        mid = out_ch // 4
        g1 = groups if first_groups is None else first_groups
        self.conv1 = nn.Conv2d(in_ch, mid, kernel_size=1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(g1)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = (nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2
                         else nn.Sequential())

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        merged = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return torch.relu(merged)


class ShuffleNetV1(nn.Module):
    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")

    def __init__(self, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3,
                 num_classes: int = 100, dropout: float = 0.0) -> None:
        super().__init__()
        stem = 24
        self.conv1 = nn.Conv2d(3, stem, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.in_ch = stem
        # The very first unit sees only the 24 stem channels: its first 1x1 conv is not grouped.
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups, first_groups=1)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        add_head(self, out_planes[2], num_classes, dropout)

    def _make_layer(self, width: int, blocks: int, groups: int,
                    first_groups: int | None = None) -> nn.Sequential:
        units = []
        for i in range(blocks):
            if i == 0:  # stride-2 unit; the pooled input is concatenated back on
                units.append(ShuffleUnit(self.in_ch, width - self.in_ch, 2, groups, first_groups))
            else:
                units.append(ShuffleUnit(width, width, 1, groups))
            self.in_ch = width
        return nn.Sequential(*units)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return run_head(self, x)


@register_model("ShuffleV1")
def ShuffleV1(num_classes: int = 100, dropout: float = 0.0) -> ShuffleNetV1:  # noqa: N802
    """CRD's ShuffleV1: groups 3, widths 240/480/960, units 4/8/4."""
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, dropout)
