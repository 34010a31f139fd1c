"""Which modules a :class:`~tfdistill.features.FeatureTap` taps: declared taps first, guessing last.

Order (the first rule that applies chooses all the taps, and the plan records which one):

1. **named** -- the module paths the user gives (``FeatureTap(model, [...])``, ``model.taps=[...]``), as given.
2. **declared** -- what the model declares (:mod:`.declared`): a zoo model's ``stage_names``, a timm model's
   ``feature_info``.
3. **table** -- torchvision's classification families (:mod:`.torchvision_table`), then Hugging Face vision
   classifiers by ``config.model_type`` (:mod:`.hf_table`; a first map at stride 1 or 2 is stem-level and left out
   when two or more remain, as timm's).
4. **probe (fallback)** -- stage outputs guessed from one forward pass, under hard rules (:mod:`.probe`).

Selection (rules 2 and 3): declared maps of one position (1x1) are left out; then

* an *isotropic* model -- every declared map has one size (ViT, DeiT, BEiT, EVA, Mixer blocks) -- keeps the last
  block of each quarter of its depth (12 blocks: ``2, 5, 8, 11``; fewer than 5 declared: all of them);
* any other model keeps the last declared map at each resolution (one per stage; CIFAR VGG declares
  ``block0..block4``, two of them at 4x4, and taps ``block0, block1, block2, block4``), and a map larger than one
  before it is dropped.

Layouts (:mod:`.layouts`): NHWC outputs are permuted and token outputs laid out as NCHW, for named taps too. A
named tap with a 3-D output needs a declared token grid (``FeatureTap(..., token_grid=...)`` first, then the model's
``token_grid`` attribute, timm's, torchvision's or the HF table's declaration); otherwise it is refused.

Fewer than two usable maps when choosing automatically is an error naming the model and how to name taps.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .declared import declared_token_grid, timm_declaration, token_layout, zoo_declaration
from .hf_table import hf_entry, measured_layout
from .layouts import NCHW, NHWC, Layout, TokenGrid
from .plan import Tap, TapPlan
from .probe import _Watcher
from .segmentation_table import segmentation_entry
from .torchvision_table import torchvision_entry

__all__ = ["resolve_plan", "select"]


def _quarters(n: int) -> list[int]:
    return sorted({-(-n * q // 4) - 1 for q in range(1, 5)})


def _shape(raw: tuple[int, ...] | None, layout: Layout, input_hw: tuple[int, int] | None) -> tuple[int, ...] | None:
    """(C, H, W) of an output of shape ``raw`` read with ``layout``, or None if it is no map."""
    if raw is None:
        return None
    if layout.kind == "NCHW":
        return tuple(raw[1:]) if len(raw) == 4 else None
    if layout.kind == "NHWC":
        return (raw[3], raw[1], raw[2]) if len(raw) == 4 else None
    from .layouts import grid_for

    if len(raw) != 3:
        return None
    grid = grid_for(input_hw, layout.reduction, raw[1] - layout.prefix)
    return (raw[2], *grid) if grid else None


def _raw(watcher: _Watcher, name: str, layout: Layout) -> tuple[int, ...] | None:
    """The measured shape of ``name``'s output as ``layout`` reads it (a tuple output at ``layout.item``)."""
    raw = watcher.raw.get(name)
    if raw is None and layout.item >= 0:
        items = watcher.items.get(name, ())
        return items[layout.item] if layout.item < len(items) else None
    return raw


def select(entries: list[tuple[str, Layout]], watcher: _Watcher, input_hw: tuple[int, int] | None,
           keep_all: bool = False) -> tuple[list[tuple[str, Layout, tuple[int, ...]]], str]:
    """The selection rule for declared taps (module docs): (name, layout, (C, H, W)) kept, and a note saying which
    selection applied. ``keep_all``: every usable declared map (a segmentation encoder's, :mod:`.segmentation_table`)."""
    usable = []
    for name, layout in entries:
        if name not in watcher.order:
            continue
        shape = _shape(_raw(watcher, name, layout), layout, input_hw)
        if shape is None or shape[1] * shape[2] <= 1:
            continue
        if layout is NCHW and watcher.spatial(name) is None:  # a resampling layer or upsampling head
            continue
        usable.append((name, layout, shape))
    usable.sort(key=lambda e: watcher.order[e[0]])
    if keep_all:
        return usable, "every declared encoder stage (several at one resolution each their own tap)"
    if len(usable) > 1 and len({e[2][1:] for e in usable}) == 1:
        if len(usable) <= 4:
            return usable, "one size (isotropic): every declared block"
        picked = [usable[k] for k in _quarters(len(usable))]
        return picked, f"one size (isotropic): the last block of each quarter of {len(usable)}"
    best: dict[tuple[int, ...], int] = {}
    for k, e in enumerate(usable):
        best[e[2][1:]] = k
    kept: list[tuple[str, Layout, tuple[int, ...]]] = []
    for k in sorted(best.values()):
        h, w = usable[k][2][1:]
        if all(h <= p[2][1] and w <= p[2][2] for p in kept):
            kept.append(usable[k])
    return kept, "the last declared map at each resolution"


def _stride(input_hw: tuple[int, int] | None, shape: tuple[int, ...]) -> str:
    if input_hw is None:
        return "?"
    s = input_hw[0] / shape[1]
    return str(int(s)) if s == int(s) else f"~{s:.1f}"


def how_to_name(model: nn.Module) -> str:
    return (f"name the taps: FeatureTap(model, ['<module>', ...]) or model.taps=[<module>,...] with module paths "
            f"from model.named_modules() of {type(model).__name__} (their outputs must be (N, C, H, W), "
            f"(N, H, W, C) or, with a declared token grid -- token_grid=token_grid(patch, prefix) --, (N, tokens, C))")


def resolve_plan(model: nn.Module, watcher: _Watcher, names: list[str] | None, *, model_name: str | None = None,
                 min_maps: int = 2, token_grid: TokenGrid | None = None) -> TapPlan:
    """The tap plan for ``model`` from a watched pass (module docs). ``names``: user-named taps, or None."""
    label = model_name or type(model).__name__
    in_shape = watcher.input_shape
    input_hw = (int(in_shape[-2]), int(in_shape[-1])) if in_shape is not None and len(in_shape) == 4 else None

    def plan(chosen: list[tuple[str, Layout, tuple[int, ...]]], rule: str, notes: list[str], per_tap: str) -> TapPlan:
        taps = [Tap(n, s, _stride(input_hw, s), per_tap, lay) for n, lay, s in chosen]
        return TapPlan(label, in_shape, taps, rule, notes)

    if names is not None:
        chosen = []
        for n in names:
            layout = _named_layout(model, watcher, n, input_hw, token_grid)
            shape = _shape(_raw(watcher, n, layout), layout, input_hw)
            if shape is None:
                raise ConfigError(f"feature tap {n!r} of {label}: {_not_a_map(watcher, n, layout, input_hw)}")
            chosen.append((n, layout, shape))
        return plan(chosen, "named", [], "named")

    entries: list[tuple[str, Layout]] | None = None
    notes: list[str] = []
    zoo = zoo_declaration(model)
    seg = segmentation_entry(model)  # segmentation encoders: every stage, never the head
    keep_all = seg is not None
    if seg is not None:
        entries, rule = seg[1], f"table ({seg[0]})"
    elif zoo is not None and all(n in watcher.order for n, _ in zoo):
        entries, rule = zoo, "declared (stage_names)"
    else:
        timm = timm_declaration(model, watcher.raw, input_hw)
        if timm is not None:
            (entries, notes), rule = timm, "declared (timm feature_info)"
        else:
            tv = torchvision_entry(model)
            if tv is not None:
                entries, rule = tv[1], f"table (torchvision {tv[0]})"
            else:
                hf = _hf_entries(model, watcher, input_hw)
                if hf is not None:
                    (entries, notes), rule = hf[1:], f"table ({hf[0]})"
    if entries is not None:
        chosen, how = select(entries, watcher, input_hw, keep_all=keep_all)
        if rule.startswith("table (Hugging Face") and len(chosen) >= 3 and chosen[0][2][1] * 2 >= (
                input_hw or (0, 0))[0] > 0:
            notes = notes + [f"{chosen[0][0]} left out: a first map at stride 1 or 2 is stem-level (as timm's)"]
            chosen = chosen[1:]
        result = plan(chosen, f"{rule}; {how}", notes, rule)
    else:
        stages = watcher.stages()
        chosen = [(n, NHWC if watcher.channels_last(n) else NCHW, watcher.size_of(n)) for n in stages]
        chosen = [(n, lay, _shape(watcher.raw.get(n), lay, input_hw)) for n, lay, _ in chosen]
        result = plan(chosen, "probe (fallback): guessed stage outputs", [], "probe")
    if len(result.taps) < min_maps:
        size = "x".join(str(d) for d in in_shape[1:]) if in_shape else "?"
        got = ", ".join(result.names) or "none"
        why = f" ({result.notes[0]})" if result.notes else ""
        raise ConfigError(f"{label} gives {len(result.taps)} usable feature map(s) on a {size} input by rule "
                          f"{result.rule.split(';')[0]}{why} (got: {got}; maps of one position do not count); feature "
                          f"distillation needs at least {min_maps}: use a larger input, or {how_to_name(model)}")
    return result


def _hf_entries(model: nn.Module, watcher: _Watcher, input_hw: tuple[int, int] | None
                ) -> tuple[str, list[tuple[str, Layout]], list[str]] | None:
    """The Hugging Face table's taps with their layouts made concrete from the measured outputs."""
    hf = hf_entry(model)
    if hf is None:
        return None
    family, raw_entries, notes = hf
    patch = _hf_patch(model)
    entries = []
    for n, lay in raw_entries:
        concrete = measured_layout(lay, _raw(watcher, n, lay), input_hw, patch)
        if concrete is None:
            notes.append(f"{n} left out: its output ({watcher.kind.get(n, 'did not run')}) fits no map layout")
            continue
        entries.append((n, concrete))
    return family, entries, notes


def _hf_patch(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    p = getattr(cfg, "patch_size", None) or 1
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def _not_a_map(watcher: _Watcher, name: str, layout: Layout, input_hw: tuple[int, int] | None) -> str:
    """Why ``name``'s output is no map, as one clause (the one wording for every rule)."""
    if name not in watcher.order:
        return "it did not run in the forward pass"
    raw, kind = watcher.raw.get(name), watcher.kind.get(name, "not a tensor")
    if raw is None:
        return f"its output is {kind}, no (N, C, H, W) map (tap a module that returns one tensor)"
    if len(raw) == 3 and layout.kind != "tokens":
        return (f"its output {raw} is a token sequence, no (N, C, H, W) map while the model declares no token grid "
                f"(declare one: "
                f"FeatureTap(..., token_grid=token_grid(patch, prefix)))")
    if len(raw) == 3:
        return (f"its output {raw} does not hold the patch grid of a {input_hw} input at {layout.reduction} px per "
                f"token after {layout.prefix} prefix token(s)")
    return f"its output {raw} is no (N, C, H, W) map"


def _named_layout(model: nn.Module, watcher: _Watcher, name: str, input_hw: tuple[int, int] | None,
                  token_grid: TokenGrid | None = None) -> Layout:
    """A named tap's layout: as the model's declaration or the table says where they name the module, else as
    measured (NHWC detection; tokens only with a declared grid: ``token_grid``, a model's ``token_grid``
    attribute, timm's or torchvision's declaration)."""
    raw = watcher.raw.get(name)
    if token_grid is not None and raw is not None and len(raw) == 3:  # the user's declaration comes first
        return token_grid.layout()
    timm = timm_declaration(model, watcher.raw, input_hw)
    declared = dict(timm[0]) if timm is not None else {}
    tv = torchvision_entry(model)
    if tv is not None:
        declared = {**dict(tv[1]), **declared}
    hf = _hf_entries(model, watcher, input_hw) if tv is None and timm is None else None
    if hf is not None:
        declared = dict(hf[1])
    if name in declared:
        return declared[name]
    if raw is not None and len(raw) == 3:
        grid = declared_token_grid(model)
        if grid is not None:
            return grid.layout()
        return token_layout(model, raw, input_hw) or NCHW
    return NHWC if watcher.channels_last(name) else NCHW
