"""Rule 3b: the feature maps of Hugging Face ``transformers`` vision classifiers, by the config's ``model_type``.

A Hugging Face model declares what it is through its config: ``model_type``, the patch size, the number of layers
and of stages (``depths``), and ``stage_names`` -- *labels* (``stem``, ``stage1``, ...), not module paths. This
table reads those in HF's meaning and finds the modules by structure, so it holds for transformers 5.0 and the
current 5.x although module paths moved between them (``vit.encoder.layer.<k>`` then ``vit.layers.<k>``):

=========================================  ===================================================================
kind (model types)                         taps
=========================================  ===================================================================
token models: ``vit``, ``vit_msn``,        every block of the encoder (the ModuleList of ``num_hidden_layers``
``deit``, ``beit``, ``data2vec-vision``,   blocks; the selection keeps the last of each quarter); the grid is
``dinov2``, ``dinov2_with_registers``,     the input over ``patch_size``, the prefix tokens (class, DeiT's
``ijepa``                                  distillation token, DINOv2's registers) are dropped
Swin-like: ``swin``, ``swinv2``,           HF's ``stage<k>``: the last block of each stage, *before* the stage's
``donut-swin``, ``focalnet``               patch merging (as HF's backbones read it), tokens laid out as maps
stages: ``resnet``, ``convnext``,          HF's ``stage<k>``: the k-th entry of the encoder's stage list; the
``convnextv2``, ``regnet``, ``bit``,       stem (``embedder``, ``embeddings``) is not a stage and never tapped
``hgnet_v2``, ``textnet``, ``segformer``
block lists: ``mobilenet_v1``,             every entry of the block list; the selection keeps the last at each
``mobilenet_v2``, ``efficientnet``,        resolution
``mobilevit``, ``mobilevitv2``,
``swiftformer``
=========================================  ===================================================================

Outputs that are tuples (a block returning ``(hidden_states, attentions)``) are read at their first item. As for
timm, a first map at stride 1 or 2 is stem-level and left out when at least two maps remain. A model type not in
the table falls to the probe; a model with no usable maps gets the one clear error.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .layouts import NCHW, Layout, grid_for
from .probe import inside_attention_or_mlp

__all__ = ["hf_entry", "is_hf_model", "HF_FAMILIES", "hf_stage_labels"]


def is_hf_model(model: nn.Module) -> bool:
    """A ``transformers`` PreTrainedModel (by its class's module and a config with a ``model_type``)."""
    cfg = getattr(model, "config", None)
    return type(model).__module__.startswith("transformers.") and isinstance(getattr(cfg, "model_type", None), str)


def _vision_config(model: nn.Module) -> Any:
    cfg = model.config
    return getattr(cfg, "vision_config", None) or cfg


def _lists(model: nn.Module, length: int) -> list[tuple[str, nn.ModuleList]]:
    """Outermost ModuleLists of ``length`` entries, in definition order, outside attention/MLP sub-blocks and
    the classifier, leaving out patch-embedding lists and lists of lists (SegFormer in transformers 5.0 keeps
    ``patch_embeddings``, ``block`` and ``layer_norm`` lists per stage: the stage output is ``layer_norm.<k>``)."""
    modules = dict(model.named_modules())
    found: list[tuple[str, nn.ModuleList]] = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) != length or not name:
            continue
        if name.startswith("classifier") or inside_attention_or_mlp(name, modules):
            continue
        if "embed" in name.rsplit(".", 1)[-1] or all(isinstance(c, nn.ModuleList) for c in m):
            continue  # patch embeddings (the stem of each stage), or a list of lists that is never called
        if any(name.startswith(f + ".") for f, _ in found):
            continue
        found.append((name, m))
    return found


def _prefix(cfg: Any, model_type: str) -> int:
    if model_type in ("ijepa", "siglip", "siglip_vision_model"):
        return 0
    extra = 1 if model_type == "deit" else 0
    return 1 + extra + int(getattr(cfg, "num_register_tokens", 0) or 0)


def _patch(cfg: Any) -> int:
    p = getattr(cfg, "patch_size", 16)
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def _tokens(model: nn.Module, model_type: str) -> tuple[list[tuple[str, Layout]], list[str]]:
    cfg = _vision_config(model)
    n = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    lists = _lists(model, n) if n else []
    if not lists:
        return [], [f"no list of {n} encoder blocks found"]
    name, blocks = lists[0]
    layout = Layout("tokens", _prefix(cfg, model_type), _patch(cfg), item=0)
    return [(f"{name}.{k}", layout) for k in range(len(blocks))], []


def _stage_count(cfg: Any) -> int:
    for key in ("depths", "hidden_sizes", "stage_out_channels"):
        v = getattr(cfg, key, None)
        if isinstance(v, (list, tuple)) and v:
            return len(v)
    names = getattr(cfg, "stage_names", None) or []
    return len([s for s in names if s != "stem"])


def _stage_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    lists = _lists(model, _stage_count(_vision_config(model)))
    return lists[0] if lists else None


def _stages(model: nn.Module, model_type: str) -> tuple[list[tuple[str, Layout]], list[str]]:
    found = _stage_list(model)
    if found is None:
        return [], ["no stage list found"]
    name, stages = found
    return [(f"{name}.{k}", Layout("auto", item=0)) for k in range(len(stages))], [
        f"HF stage labels stage1..stage{len(stages)} = {name}.0..{len(stages) - 1}; the stem is not a stage"]


def _swin(model: nn.Module, model_type: str) -> tuple[list[tuple[str, Layout]], list[str]]:
    found = _stage_list(model)
    if found is None:
        return [], ["no stage list found"]
    name, stages = found
    out = []
    for k, stage in enumerate(stages):
        inner = [(n, m) for n, m in stage.named_children() if isinstance(m, nn.ModuleList) and len(m)]
        if not inner:
            return [], [f"{name}.{k} holds no list of blocks"]
        n, blocks = inner[0]
        out.append((f"{name}.{k}.{n}.{len(blocks) - 1}", Layout("auto", item=0)))
    return out, [f"HF stage labels stage1..stage{len(stages)} = the last block of {name}.0..{len(stages) - 1}, "
                 "before patch merging"]


def _blocks(model: nn.Module, model_type: str) -> tuple[list[tuple[str, Layout]], list[str]]:
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():  # the longest outermost block list
        if isinstance(m, nn.ModuleList) and name and not name.startswith("classifier") and \
                (best is None or len(m) > len(best[1])) and not (best and name.startswith(best[0] + ".")):
            best = (name, m)
    if best is None:
        return [], ["no block list found"]
    return [(f"{best[0]}.{k}", Layout("auto", item=0)) for k in range(len(best[1]))], []


_KINDS: dict[str, Callable[[nn.Module, str], tuple[list[tuple[str, Layout]], list[str]]]] = {
    "tokens": _tokens, "swin": _swin, "stages": _stages, "blocks": _blocks}

HF_FAMILIES: dict[str, tuple[str, str]] = {
    "vit": ("ViT", "tokens"), "vit_msn": ("ViT MSN", "tokens"), "deit": ("DeiT", "tokens"),
    "beit": ("BEiT", "tokens"), "data2vec-vision": ("Data2Vec-Vision", "tokens"), "dinov2": ("DINOv2", "tokens"),
    "dinov2_with_registers": ("DINOv2 with registers", "tokens"), "ijepa": ("I-JEPA", "tokens"),
    "swin": ("Swin", "swin"), "swinv2": ("Swin v2", "swin"), "donut-swin": ("Donut Swin", "swin"),
    "focalnet": ("FocalNet", "swin"), "pvt_v2": ("PVTv2", "swin"),
    "clip": ("CLIP vision", "tokens"), "siglip": ("SigLIP vision", "tokens"), "metaclip_2": ("MetaCLIP 2", "tokens"),
    "resnet": ("ResNet", "stages"), "convnext": ("ConvNeXT", "stages"), "convnextv2": ("ConvNeXt V2", "stages"),
    "regnet": ("RegNet", "stages"), "bit": ("BiT", "stages"), "hgnet_v2": ("HGNet-V2", "stages"),
    "textnet": ("TextNet", "stages"), "segformer": ("SegFormer (MiT)", "stages"),
    "mobilenet_v1": ("MobileNetV1", "blocks"), "mobilenet_v2": ("MobileNetV2", "blocks"),
    "efficientnet": ("EfficientNet", "blocks"), "mobilevit": ("MobileViT", "blocks"),
    "mobilevitv2": ("MobileViTV2", "blocks"), "swiftformer": ("SwiftFormer", "blocks"),
}
"""model_type -> (family label, kind)."""


def hf_entry(model: nn.Module) -> tuple[str, list[tuple[str, Layout]], list[str]] | None:
    """(family, declared taps with layouts -- ``auto`` ones are read from the measured output --, notes) for a
    Hugging Face vision model whose ``model_type`` is in the table, else None."""
    if not is_hf_model(model):
        return None
    model_type = str(model.config.model_type)
    if model_type not in HF_FAMILIES:
        return None
    family, kind = HF_FAMILIES[model_type]
    entries, notes = _KINDS[kind](model, model_type)
    return f"Hugging Face {family}", entries, notes


def measured_layout(layout: Layout, raw: tuple[int, ...] | None, input_hw: tuple[int, int] | None,
                    patch: int) -> Layout | None:
    """An ``auto`` layout made concrete from the measured output shape: 4-D -> NCHW (at ``item``), 3-D tokens
    without prefix -> the grid whose reduction (``patch`` times a power of two) fits the token count."""
    if layout.kind != "auto":
        return layout
    if raw is None:
        return None
    if len(raw) == 4:
        return NCHW if layout.item < 0 else Layout("NCHW", item=layout.item)
    if len(raw) == 3 and input_hw is not None:
        for k in range(8):
            red = max(patch, 1) * 2 ** k
            if grid_for(input_hw, red, raw[1]) is not None:
                return Layout("tokens", 0, red, item=layout.item)
    return None


def hf_stage_labels(model: nn.Module, names: list[str]) -> list[str]:
    """Named taps with HF stage labels (``stage1``, ``stage2``, ... as in ``config.stage_names`` and
    ``out_features``) replaced by the module each label means in the table: the k-th stage (Swin-like: its last
    block before patch merging; token models: block k - 1, as HF's backbones number them). Module paths and models
    outside the table pass unchanged; ``stem`` is refused (the stem is not a stage)."""
    import re

    from ..errors import ConfigError

    if not is_hf_model(model) or not any(re.fullmatch(r"stem|stage\d+", n) for n in names):
        return names
    modules = dict(model.named_modules())
    entry = hf_entry(model)
    kind = HF_FAMILIES.get(str(model.config.model_type), ("", ""))[1]
    out = []
    for n in names:
        m = re.fullmatch(r"stem|stage(\d+)", n)
        if m is None or n in modules:
            out.append(n)
            continue
        if entry is None or kind == "blocks":
            raise ConfigError(f"HF stage label {n!r}: {type(model).__name__} has no stage labels in tfdistill's "
                              "Hugging Face table; name module paths from model.named_modules()")
        stages = entry[1]
        if m.group(1) is None or not 1 <= int(m.group(1)) <= len(stages):
            raise ConfigError(f"HF stage label {n!r} of {type(model).__name__}: valid labels are stage1.."
                              f"stage{len(stages)} (the stem is not a stage)")
        out.append(stages[int(m.group(1)) - 1][0])
    return out
