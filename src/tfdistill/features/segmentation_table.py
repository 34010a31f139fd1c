"""Declared taps of segmentation models: their encoder's stages, never the segmentation head.

A segmentation network is an encoder (a classification backbone, often dilated) and a head (ASPP, FCN head, LR-ASPP,
a U-Net/FPN decoder). Feature distillation taps the encoder's stages. A dilated encoder keeps several stages at one
resolution (DeepLabV3's ``layer2``..``layer4`` are all at 1/8 of the input): each is its own tap here -- unlike the
classification rule "the last declared map at each resolution" (:func:`tfdistill.features.resolve.select`, which
this table's entries bypass). The head is never in the table, so it is never tapped automatically (name it with
``model.taps`` if a method needs it).

=============================================  ====================================================================
model (class)                                  taps
=============================================  ====================================================================
torchvision DeepLabV3 / FCN, ResNet backbone   ``backbone.layer1 .. layer4`` (``deeplabv3_resnet18``: the same)
torchvision DeepLabV3 / LR-ASPP, MobileNetV3   ``backbone.<k>``: the last block of each stage from stride 4 on (the
                                               blocks before each down-sampling block, ``_is_cn``), and the last one
segmentation-models-pytorch, ResNet encoder    ``encoder.layer1 .. layer4`` (Unet, FPN, DeepLabV3+, ...)
segmentation-models-pytorch, other encoders    refused: name the taps (``model.taps=[...]``)
=============================================  ====================================================================
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .layouts import NCHW, Layout

__all__ = ["segmentation_entry"]

_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _is_resnet(module: nn.Module) -> bool:
    return all(hasattr(module, s) for s in _RESNET_STAGES)


def _mobilenet_v3_ends(backbone: nn.Module) -> list[str]:
    """The last block before each stage-opening block (``_is_cn``: it down-samples in the classifier), from the
    stride-4 stage on, and the last block."""
    names = [k for k, _ in backbone.named_children()]
    opens = [i for i, (_, b) in enumerate(backbone.named_children()) if getattr(b, "_is_cn", False)]
    ends = [i - 1 for i in opens[1:]] + [len(names) - 1]
    return [names[i] for i in ends]


def _torchvision(model: nn.Module) -> tuple[str, list[str]] | None:
    tv = next((c for c in type(model).__mro__ if c.__module__.startswith("torchvision.models.segmentation")
               and c.__name__ in ("DeepLabV3", "FCN", "LRASPP")), None)
    if tv is None:
        return None
    backbone = model.get_submodule("backbone")
    if _is_resnet(backbone):
        return f"torchvision {tv.__name__} (ResNet)", [f"backbone.{s}" for s in _RESNET_STAGES]
    ends = _mobilenet_v3_ends(backbone)
    if ends:
        return f"torchvision {tv.__name__} (MobileNetV3)", [f"backbone.{k}" for k in ends]
    return None


def _smp(model: nn.Module) -> tuple[str, list[str]] | None:
    if not type(model).__module__.startswith("segmentation_models_pytorch"):
        return None
    encoder = getattr(model, "encoder", None)
    if encoder is not None and _is_resnet(encoder):
        return f"segmentation-models-pytorch {type(model).__name__} (ResNet encoder)", [
            f"encoder.{s}" for s in _RESNET_STAGES]
    raise ConfigError(f"no declared taps for the {type(encoder).__name__} encoder of segmentation-models-pytorch's "
                      f"{type(model).__name__} (declared: ResNet encoders); name the encoder stages to tap: "
                      f"model.taps=[<module>,...] with paths from model.encoder.named_modules() (prefix 'encoder.')")


def segmentation_entry(model: nn.Module) -> tuple[str, list[tuple[str, Layout]]] | None:
    """(family, declared encoder taps) for a segmentation model this table knows, else None. Every declared map
    that is usable is kept (several at one resolution included)."""
    for rule in (_torchvision, _smp):
        found = rule(model)
        if found is not None:
            return found[0], [(n, NCHW) for n in found[1]]
    return None
