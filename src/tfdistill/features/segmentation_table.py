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
segmentation-models-pytorch, ResNet encoder    ``encoder.layer1 .. layer4`` (Unet, FPN, DeepLabV3+, ...; ResNet,
                                               ResNeXt, SE-ResNet encoders)
segmentation-models-pytorch, indexed encoders  the modules at the encoder's own ``_out_indexes`` (the stages it
                                               returns) from stride 4 on: ``encoder.features.<i>`` (MobileNetV2,
                                               VGG, Inception-v4), ``encoder._blocks.<i>`` (EfficientNet)
segmentation-models-pytorch, timm encoders     the timm model's ``feature_info`` from stride 4 on: ``tu-`` encoders
                                               (``encoder.model.<module>``; channels-last maps read as NHWC) and
                                               the ``timm-`` encoders that are timm models (``encoder.<module>``)
segmentation-models-pytorch, Mix Transformer   ``encoder.norm1 .. norm4`` (MiT, SegFormer's encoder: each stage ends in
                                               its norm, an NCHW map)
segmentation-models-pytorch, other encoders    refused: name the taps (``model.taps=[...]``)
=============================================  ====================================================================

segmentation-models-pytorch's encoders return their stages at strides 2, 4, .., 2**depth (VGG-style ones also the
input resolution); as for the ResNet stages, the stride-2 stem is never tapped.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .layouts import NCHW, NHWC, Layout

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


def _torchvision(model: nn.Module) -> tuple[str, list[str], Layout] | None:
    tv = next((c for c in type(model).__mro__ if c.__module__.startswith("torchvision.models.segmentation")
               and c.__name__ in ("DeepLabV3", "FCN", "LRASPP")), None)
    if tv is None:
        return None
    backbone = model.get_submodule("backbone")
    if _is_resnet(backbone):
        return f"torchvision {tv.__name__} (ResNet)", [f"backbone.{s}" for s in _RESNET_STAGES], NCHW
    ends = _mobilenet_v3_ends(backbone)
    if ends:
        return f"torchvision {tv.__name__} (MobileNetV3)", [f"backbone.{k}" for k in ends], NCHW
    return None


def _smp_indexed(encoder: nn.Module) -> list[str] | None:
    """The modules of an smp encoder that declares which of its blocks end a stage (``_out_indexes`` into
    ``features`` or ``_blocks``), from stride 4 on: the last ``depth - 1`` of them."""
    idx, depth = getattr(encoder, "_out_indexes", None), getattr(encoder, "_depth", None)
    if not idx or not isinstance(depth, int) or depth < 2:
        return None
    for seq in ("features", "_blocks"):
        blocks = getattr(encoder, seq, None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and max(idx) < len(blocks):
            return [f"encoder.{seq}.{i}" for i in list(idx)[-(depth - 1):]]
    return None


def _smp_mit(encoder: nn.Module) -> list[str] | None:
    """smp's Mix Transformer (SegFormer's MiT) encoder: stage ``k`` is ``patch_embed<k>``, ``block<k>``, ``norm<k>``,
    and ``norm<k>``'s output (NCHW) is the stage's map, at strides 4, 8, 16, 32."""
    depth = getattr(encoder, "_depth", 5)
    names = [f"norm{k}" for k in range(1, 5) if k < depth]
    if all(hasattr(encoder, f"{part}{k}") for k in range(1, len(names) + 1) for part in ("patch_embed", "block",
                                                                                          "norm")):
        return [f"encoder.{n}" for n in names]
    return None


def _smp_timm(encoder: nn.Module) -> tuple[list[str], Layout] | None:
    """An encoder that carries a timm model's declared ``feature_info`` (stride >= 4): a ``tu-`` encoder's wrapped
    features-only model (``encoder.model``, which flattens ``stages.0`` to ``stages_0``), or smp's ``timm-``
    encoders that are timm models themselves (``encoder``)."""
    for model, prefix in ((getattr(encoder, "model", None), "encoder.model."), (encoder, "encoder.")):
        info = getattr(model, "feature_info", None)
        dicts = info.get_dicts() if hasattr(info, "get_dicts") else info  # a features-only wrapper's, or a list
        if model is None or not isinstance(dicts, (list, tuple)) or not all(isinstance(d, dict) for d in dicts):
            continue
        mods = dict(model.named_modules())
        paths = [next((p for p in (d["module"], d["module"].replace(".", "_", 1), d["module"].replace(".", "_"))
                       if p in mods), None) for d in dicts if d.get("reduction", 0) >= 4]
        if paths and None not in paths:  # every declared stage found by its path
            return [prefix + p for p in paths], (NHWC if getattr(encoder, "_is_channel_last", False) else NCHW)
    return None


def _smp(model: nn.Module) -> tuple[str, list[str], Layout] | None:
    if not type(model).__module__.startswith("segmentation_models_pytorch"):
        return None
    encoder = getattr(model, "encoder", None)
    family = f"segmentation-models-pytorch {type(model).__name__}"
    if encoder is not None and _is_resnet(encoder):
        return f"{family} (ResNet encoder)", [f"encoder.{s}" for s in _RESNET_STAGES], NCHW
    indexed = _smp_indexed(encoder) if encoder is not None else None
    if indexed:
        return f"{family} ({type(encoder).__name__}, _out_indexes)", indexed, NCHW
    mit = _smp_mit(encoder) if encoder is not None else None
    if mit and len(mit) >= 2:
        return f"{family} (Mix Transformer encoder)", mit, NCHW
    timm_decl = _smp_timm(encoder) if encoder is not None else None
    if timm_decl and len(timm_decl[0]) >= 2:
        return f"{family} (timm encoder, feature_info)", timm_decl[0], timm_decl[1]
    raise ConfigError(f"no declared taps for the {type(encoder).__name__} encoder of segmentation-models-pytorch's "
                      f"{type(model).__name__} (declared: ResNet, Mix Transformer, _out_indexes and timm feature_info "
                      f"encoders); "
                      f"name the taps: model.taps=[<module>,...], the encoder stages to tap, with paths from "
                      f"model.encoder.named_modules() (prefix 'encoder.')")


def segmentation_entry(model: nn.Module) -> tuple[str, list[tuple[str, Layout]]] | None:
    """(family, declared encoder taps) for a segmentation model this table knows, else None. Every declared map
    that is usable is kept (several at one resolution included)."""
    for rule in (_torchvision, _smp):
        found = rule(model)
        if found is not None:
            return found[0], [(n, found[2]) for n in found[1]]
    return None
