"""CIFAR MobileNetV2 (expansion 6, width 0.5) as used in the CRD benchmark (``mobile_half``).

Stem ``conv1`` (3x3 stride-2 conv-BN-ReLU), seven groups of inverted residual blocks in the
``nn.ModuleList`` ``blocks`` (``blocks.0`` ... ``blocks.6``, each an ``nn.Sequential``), a 1x1
conv-BN-ReLU ``conv2`` to 1280 channels, then the shared head
``avgpool -> flatten -> dropout -> fc``. The stage taps are the last group at each
resolution, the same points CRD uses for its ``f1..f4`` features: ``blocks.1`` (16x16 for a
32x32 input), ``blocks.2`` (8x8), ``blocks.4`` (4x4), ``blocks.6`` (2x2). Stage names are dotted
module paths; resolve them with ``model.get_submodule(name)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import add_head, init_he_conv, run_head
from ._zoo import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2_t_w", "mobile_half"]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual when shapes allow.

    Unlike torchvision, the 1x1 expansion is kept even when ``expand_ratio == 1`` (as in CRD).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_ch * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small inputs with expansion ``expand_ratio`` and width ``width_mult``."""

    stage_names: tuple[str, ...] = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")

    # (expansion (None = use expand_ratio), channels, repeats, first stride)
    SETTINGS = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTINGS:
            out_ch = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1,
                                              expand_ratio if t is None else t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, self.last_channel, 1, 1)
        add_head(self, self.last_channel, num_classes, dropout)
        init_he_conv(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return run_head(self, self.conv2(x))


def mobilenetv2_t_w(expand_ratio: int, width_mult: float, num_classes: int = 100,
                    dropout: float = 0.0) -> MobileNetV2:
    return MobileNetV2(expand_ratio, width_mult, num_classes, dropout)


@register_model("MobileNetV2", aliases=("mobilenetv2",))
def mobile_half(num_classes: int = 100, dropout: float = 0.0) -> MobileNetV2:
    """CRD's ``mobile_half``: expansion 6, width 0.5 (812,836 parameters at 100 classes)."""
    return MobileNetV2(6, 0.5, num_classes, dropout)
