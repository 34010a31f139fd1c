"""ShuffleNet V2 (1x) for CIFAR as used in the CRD benchmark (``ShuffleV2``).

Stem ``conv1`` (1x1, 24 channels) -> ``bn1`` -> ``relu`` at full resolution, three stages
``layer1..layer3`` (each a stride-2 ``DownBlock`` followed by 3, 7, 3 ``SplitBlock`` units;
widths 116, 232, 464), a 1x1 ``conv2`` -> ``bn2`` -> ``relu2`` to 1024 channels, then the
shared head ``avgpool -> flatten -> dropout -> fc``. A 32x32 input gives stage outputs
16x16, 8x8 and 4x4.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import add_head, run_head
from ._shuffle import ChannelShuffle
from ._zoo import register_model

__all__ = ["SplitBlock", "DownBlock", "ShuffleNetV2", "ShuffleV2", "SHUFFLEV2_CONFIGS"]

# net size -> (stage widths, last conv width), units per stage
SHUFFLEV2_CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


class SplitBlock(nn.Module):
    """Stride-1 unit: keep half the channels, transform the other half
    (1x1 -> depthwise 3x3 -> 1x1), concatenate, shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        c = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        c = int(x.shape[1] * self.split_ratio)
        keep, active = x[:, :c], x[:, c:]
        out = torch.relu(self.bn1(self.conv1(active)))
        out = self.bn2(self.conv2(out))
        out = torch.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([keep, out], 1))


class DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, each giving ``out_ch // 2`` channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        # left branch: depthwise 3x3/2 -> 1x1
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size=3, stride=2, padding=1, groups=in_ch,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 -> depthwise 3x3/2 -> 1x1
        self.conv3 = nn.Conv2d(in_ch, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid,
                               bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")

    def __init__(self, net_size: float = 1.0, num_classes: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if net_size not in SHUFFLEV2_CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(SHUFFLEV2_CONFIGS)}, got {net_size}")
        widths, blocks = SHUFFLEV2_CONFIGS[net_size]
        stem = 24
        self.conv1 = nn.Conv2d(3, stem, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        in_ch = stem
        for i in range(3):
            units = [DownBlock(in_ch, widths[i])]
            units += [SplitBlock(widths[i]) for _ in range(blocks[i])]
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            in_ch = widths[i]
        self.conv2 = nn.Conv2d(in_ch, widths[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU()
        add_head(self, widths[3], num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return run_head(self, x)


@register_model("ShuffleV2")
def ShuffleV2(num_classes: int = 100, dropout: float = 0.0) -> ShuffleNetV2:  # noqa: N802
    """CRD's ShuffleV2: net size 1 (widths 116/232/464, 1024-d embedding)."""
    return ShuffleNetV2(1.0, num_classes, dropout)
