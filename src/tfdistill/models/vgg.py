"""VGG-BN networks (vgg8, vgg11, vgg13, vgg16, vgg19) as used in the CRD benchmark.

Five conv stages ``block0..block4`` (each an ``nn.Sequential`` of ``conv3x3(bias) -> BN ->
ReLU`` triples) separated by 2x2 max pools ``pool0..pool3``, then the shared head
``avgpool -> flatten -> dropout -> fc`` on 512 channels; the VGG fully connected layers are
removed. As in CRD, ``pool3`` is skipped for inputs smaller than 64x64 so a 32x32 input gives
stage outputs 32, 16, 8, 4, 4.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ._common import add_head, init_he_conv, run_head
from ._zoo import register_model

__all__ = ["VGG", "VGG_CONFIGS", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# Output channels of the convs in each of the five stages.
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _make_stage(widths: Sequence[int], in_ch: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_ch, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        in_ch = w
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG with batch norm for small images; ``cfg`` lists the conv widths of each stage."""

    stage_names: tuple[str, ...] = ("block0", "block1", "block2", "block3", "block4")

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(cfg) != 5:
            raise ValueError("VGG config must have 5 stages")
        in_ch = 3
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _make_stage(widths, in_ch))
            in_ch = widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        add_head(self, in_ch, num_classes, dropout)
        init_he_conv(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        big = min(x.shape[-2:]) >= 64
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        if big:  # CRD pools once more only for 64x64 (Tiny-ImageNet) inputs
            x = self.pool3(x)
        x = self.block4(x)
        return run_head(self, x)


@register_model("vgg8")
def vgg8(num_classes: int = 100, dropout: float = 0.0) -> VGG:
    return VGG(VGG_CONFIGS["vgg8"], num_classes, dropout)


@register_model("vgg11")
def vgg11(num_classes: int = 100, dropout: float = 0.0) -> VGG:
    return VGG(VGG_CONFIGS["vgg11"], num_classes, dropout)


@register_model("vgg13")
def vgg13(num_classes: int = 100, dropout: float = 0.0) -> VGG:
    return VGG(VGG_CONFIGS["vgg13"], num_classes, dropout)


@register_model("vgg16")
def vgg16(num_classes: int = 100, dropout: float = 0.0) -> VGG:
    return VGG(VGG_CONFIGS["vgg16"], num_classes, dropout)


@register_model("vgg19")
def vgg19(num_classes: int = 100, dropout: float = 0.0) -> VGG:
    return VGG(VGG_CONFIGS["vgg19"], num_classes, dropout)
