"""Rule 2: taps a model declares itself.

* **Zoo models** (and any model with the attribute): ``stage_names``, a class attribute listing, in forward order,
  the module paths of the stages (the points the CRD benchmark takes features from). Their outputs are NCHW.
* **timm models**: ``feature_info``, a list of ``{"module", "num_chs", "reduction"}`` (the same list that drives
  timm's ``features_only`` and ``forward_intermediates``). The layout of each output is read against the declared
  channel count (:func:`~tfdistill.features.layouts.infer_layout`): NCHW, channels-last NHWC (Swin) or tokens
  (ViT/DeiT/BEiT/EVA/Mixer blocks, LeViT stages) with ``num_prefix_tokens`` class/register/distillation tokens.
  timm lists most models' stem first (reduction 2: ``act1``, ``bn1``, ``stem``); a first entry at reduction 1 or 2
  is a stem, not a stage, and is left out.

The selection rule shared with the torchvision table lives in :mod:`tfdistill.features.resolve`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .layouts import NCHW, Layout, TokenGrid, infer_layout

__all__ = ["zoo_declaration", "timm_declaration", "token_layout", "is_timm_model", "declared_token_grid"]


def zoo_declaration(model: nn.Module) -> list[tuple[str, Layout]] | None:
    names = getattr(model, "stage_names", None)
    if not names:
        return None
    return [(str(n), NCHW) for n in names]


def _feature_info(model: nn.Module) -> list[dict[str, Any]] | None:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info:
        return None
    if not all(isinstance(d, dict) and {"module", "num_chs", "reduction"} <= set(d) for d in info):
        return None
    return list(info)


def is_timm_model(model: nn.Module) -> bool:
    return _feature_info(model) is not None


def timm_declaration(model: nn.Module, raw: dict[str, tuple[int, ...] | None],
                     input_hw: tuple[int, int] | None) -> tuple[list[tuple[str, Layout]], list[str]] | None:
    """(taps with layouts, notes) from a timm ``feature_info``; None if the model has none. ``raw`` holds the
    measured output shape of each module on the example input. A declared module whose output fits no layout is
    left out with a note."""
    info = _feature_info(model)
    if info is None:
        return None
    prefix = getattr(model, "num_prefix_tokens", None)
    prefix = int(prefix) if isinstance(prefix, int) else None
    out: list[tuple[str, Layout]] = []
    notes: list[str] = []
    stem = info[0] if int(info[0]["reduction"]) <= 2 and len(info) >= 3 else None
    for d in info:
        name, chs, red = str(d["module"]), int(d["num_chs"]), int(d["reduction"])
        if d is stem:
            continue
        layout = infer_layout(raw.get(name), chs, red, input_hw, prefix)
        if layout is None:
            got = "is not one tensor (or did not run)" if raw.get(name) is None else f"{raw.get(name)} fits no layout"
            notes.append(f"{name} (declared: {chs} channels at stride {red}) left out: its output {got}")
            continue
        out.append((name, layout))
    return out, notes


def declared_token_grid(model: nn.Module) -> TokenGrid | None:
    """A token grid the user declared on the model itself (``model.token_grid = token_grid(patch, prefix)``)."""
    grid = getattr(model, "token_grid", None)
    return grid if isinstance(grid, TokenGrid) else None


def token_layout(model: nn.Module, raw: tuple[int, ...] | None, input_hw: tuple[int, int] | None) -> Layout | None:
    """For a user-named module with a 3-D output: the token layout if the model declares its token grid (timm:
    ``num_prefix_tokens`` and a patch reduction in ``feature_info``; torchvision ViT: ``patch_size``), else None."""
    if raw is None or len(raw) != 3:
        return None
    info = _feature_info(model)
    if info is not None:
        for red in sorted({int(d["reduction"]) for d in info}):
            prefix = getattr(model, "num_prefix_tokens", None)
            layout = infer_layout(raw, raw[2], red, input_hw, prefix if isinstance(prefix, int) else None)
            if layout is not None:
                return layout
        return None
    if type(model).__name__ == "VisionTransformer" and type(model).__module__.startswith("torchvision.models"):
        return infer_layout(raw, raw[2], int(getattr(model, "patch_size", 16)), input_hw, 1)
    return None
