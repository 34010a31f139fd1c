"""Wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2) as used in the CRD benchmark.

Pre-activation design: stem ``conv1`` (3x3, 16 channels), three stages ``block1..block3``
(each a ``NetworkBlock`` wrapping an ``nn.Sequential`` named ``layer``), a final
``bn1 -> relu``, then the shared head ``avgpool -> flatten -> dropout -> fc``.
Because the blocks are pre-activation, the stage outputs are *before* BN/ReLU (as in CRD,
whose ``f1..f3`` features are these same tensors). A 32x32 input gives 32x32, 16x16, 8x8.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import add_head, init_he_conv, run_head
from ._zoo import register_model

__all__ = ["WideBasicBlock", "NetworkBlock", "WideResNet",
           "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class WideBasicBlock(nn.Module):
    """``BN-ReLU-conv3x3-BN-ReLU-conv3x3`` plus shortcut (a 1x1 conv on the activated input
    when the channel count changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_ch == out_ch
        # CRD never uses a strided block without a channel change, so identity is safe here.
        self.convShortcut = (
            None if self.equal_in_out
            else nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One WRN stage: ``num_layers`` blocks, the first one possibly strided."""

    def __init__(self, num_layers: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1)
            for i in range(num_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; ``depth`` must be ``6n + 4``."""

    stage_names: tuple[str, ...] = ("block1", "block2", "block3")

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 (>= 10), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        add_head(self, ch[3], num_classes, dropout)
        init_he_conv(self, linear_std=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return run_head(self, self.relu(self.bn1(x)))


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    return WideResNet(16, 1, num_classes, dropout)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    return WideResNet(16, 2, num_classes, dropout)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    return WideResNet(40, 1, num_classes, dropout)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    return WideResNet(40, 2, num_classes, dropout)
