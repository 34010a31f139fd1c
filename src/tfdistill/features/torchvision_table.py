"""Rule 3: the stage outputs of torchvision's classification families, by model class.

torchvision's classifiers have a small, fixed structure; this table names their stages (the probe pass only
measures the shapes). Entries are looked up by the model's class, for classes defined in ``torchvision.models``:

=====================================  =======================================================================
family (class)                         taps
=====================================  =======================================================================
ResNet / ResNeXt / Wide-ResNet         ``layer1 .. layer4``
VGG, AlexNet, SqueezeNet               ``features.<k>``: the last layer at each resolution (VGG/AlexNet: the ReLU
                                       before each max-pool; SqueezeNet: the last Fire module at each size)
MobileNetV2/V3, EfficientNet v1/v2     ``features.<k>``, k >= 1: the last block at each resolution (whole blocks
                                       only); ``features.0`` is the stem, never a stage (as in timm's plans)
MNASNet                                ``layers.<k>``: the last layer or stack at each resolution
DenseNet                               ``features.denseblock1 .. 4``
RegNet                                 ``trunk_output.block1 .. 4``
ConvNeXt                               ``features.1, .3, .5, .7`` (the stages; even indices downsample)
Swin / Swin v2                         ``features.1, .3, .5, .7``; their (N, H, W, C) outputs are permuted to NCHW
VisionTransformer (ViT)                ``encoder.layers.encoder_layer_<k>`` at the last block of each quarter of
                                       the depth; the class token dropped, patch tokens as (N, C, h, w)
MaxViT                                 ``blocks.0 .. 3``
ShuffleNetV2                           ``stage2, stage3, stage4``
GoogLeNet                              ``conv3, inception3b, inception4e, inception5b``
Inception v3                           ``Conv2d_4a_3x3, Mixed_5d, Mixed_6e, Mixed_7c``
=====================================  =======================================================================

Maps of one position (1x1) are left out as everywhere (at 32 px a ResNet's ``layer4`` is 1x1).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .layouts import NCHW, NHWC, Layout

__all__ = ["torchvision_entry"]

Entry = Callable[[nn.Module], list[tuple[str, Layout]]]
"""Maps a model to its declared taps: (module path, layout) in forward order (before the selection rules)."""


def _named(*names: str, layout: Layout = NCHW) -> Entry:
    return lambda model: [(n, layout) for n in names]


def _children(container: str, skip_stem: bool = False) -> Entry:
    """Every direct child of ``container`` (without the first, the stem, if ``skip_stem``); the selection keeps the
    last one at each resolution."""
    def entry(model: nn.Module) -> list[tuple[str, Layout]]:
        kids = [k for k, _ in model.get_submodule(container).named_children()]
        return [(f"{container}.{k}", NCHW) for k in kids[1 if skip_stem else 0:]]

    return entry


def _vit(model: nn.Module) -> list[tuple[str, Layout]]:
    layers = model.get_submodule("encoder.layers")
    tokens = Layout("tokens", prefix=1, reduction=int(getattr(model, "patch_size", 16)))
    return [(f"encoder.layers.{k}", tokens) for k, _ in layers.named_children()]


_TABLE: dict[str, tuple[str, Entry]] = {
    "ResNet": ("ResNet", _named("layer1", "layer2", "layer3", "layer4")),
    "VGG": ("VGG", _children("features")),
    "AlexNet": ("AlexNet", _children("features")),
    "SqueezeNet": ("SqueezeNet", _children("features")),
    "MobileNetV2": ("MobileNetV2", _children("features", skip_stem=True)),
    "MobileNetV3": ("MobileNetV3", _children("features", skip_stem=True)),
    "EfficientNet": ("EfficientNet", _children("features", skip_stem=True)),
    "MNASNet": ("MNASNet", _children("layers")),
    "DenseNet": ("DenseNet", _named(*(f"features.denseblock{k}" for k in range(1, 5)))),
    "RegNet": ("RegNet", _named(*(f"trunk_output.block{k}" for k in range(1, 5)))),
    "ConvNeXt": ("ConvNeXt", _named("features.1", "features.3", "features.5", "features.7")),
    "SwinTransformer": ("Swin", _named("features.1", "features.3", "features.5", "features.7", layout=NHWC)),
    "VisionTransformer": ("ViT", _vit),
    "MaxVit": ("MaxViT", _named("blocks.0", "blocks.1", "blocks.2", "blocks.3")),
    "ShuffleNetV2": ("ShuffleNetV2", _named("stage2", "stage3", "stage4")),
    "GoogLeNet": ("GoogLeNet", _named("conv3", "inception3b", "inception4e", "inception5b")),
    "Inception3": ("Inception v3", _named("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c")),
}


def torchvision_entry(model: nn.Module) -> tuple[str, list[tuple[str, Layout]]] | None:
    """(family, declared taps) for a torchvision classifier in the table, else None."""
    cls = type(model)
    if not cls.__module__.startswith("torchvision.models") or cls.__name__ not in _TABLE:
        return None
    family, entry = _TABLE[cls.__name__]
    return family, entry(model)
