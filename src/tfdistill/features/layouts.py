"""Layouts: how a tapped module's output becomes an (N, C, H, W) feature map.

* ``NCHW`` -- used as it is (a ``torch.channels_last`` *memory format* is still NCHW-shaped: nothing to do).
* ``NHWC`` -- a channels-last *shaped* output (torchvision's and timm's Swin stages): permuted to (N, C, H, W), a
  view, no copy.
* ``tokens`` -- a (N, T, C) token sequence (ViT/DeiT/BEiT/EVA blocks, Mixer blocks, LeViT stages): the first
  ``prefix`` tokens (class, register and distillation tokens) are dropped and the ``h * w`` patch tokens laid out
  row-major as (N, C, h, w). The grid is the input size divided by the model's patch reduction (floor, or ceil for
  models that pad), checked against the number of patch tokens on every call. A 3-D output is read as tokens only
  when the grid is known this way: from the model's declaration or the torchvision table, never by guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError

__all__ = ["Layout", "NCHW", "NHWC", "infer_layout", "grid_for", "TokenGrid", "token_grid", "as_token_grid"]


def grid_for(input_hw: tuple[int, int] | None, reduction: int, tokens: int) -> tuple[int, int] | None:
    """The (h, w) patch grid with ``h * w == tokens`` for an input of ``input_hw`` and ``reduction`` pixels per
    token (floor or ceil division), or a square grid when the input size is unknown; None if none fits."""
    if input_hw is not None and reduction > 0:
        (hh, ww) = input_hw
        for h, w in ((hh // reduction, ww // reduction), (-(-hh // reduction), -(-ww // reduction))):
            if h * w == tokens and h > 0:
                return (h, w)
        return None
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else None


@dataclass(frozen=True)
class Layout:
    kind: str = "NCHW"
    """``NCHW``, ``NHWC`` or ``tokens``."""
    prefix: int = 0
    """tokens: leading non-patch tokens dropped (class / register / distillation tokens)."""
    reduction: int = 0
    """tokens: input pixels per token along each side (the patch size)."""

    def to_nchw(self, t: Tensor, input_hw: tuple[int, int] | None) -> Tensor:
        if self.kind == "NCHW":
            return t
        if self.kind == "NHWC":
            return t.permute(0, 3, 1, 2)
        n, tokens, c = t.shape
        grid = grid_for(input_hw, self.reduction, tokens - self.prefix)
        if grid is None:
            raise RuntimeError(f"feature tap: {tokens} tokens ({self.prefix} prefix) do not form the patch grid of a "
                               f"{input_hw} input at {self.reduction} px per token")
        return t[:, self.prefix:].transpose(1, 2).reshape(n, c, grid[0], grid[1])

    def describe(self) -> str:
        if self.kind == "tokens":
            return f"tokens as NCHW, {self.prefix} prefix dropped" if self.prefix else "tokens as NCHW"
        return "NHWC, permuted" if self.kind == "NHWC" else "NCHW"


NCHW = Layout("NCHW")
NHWC = Layout("NHWC")


def infer_layout(raw: tuple[int, ...] | None, channels: int, reduction: int, input_hw: tuple[int, int] | None,
                 prefix: int | None = None) -> Layout | None:
    """The layout of an output of shape ``raw`` that a declaration says has ``channels`` channels at ``reduction``
    (timm's ``feature_info``): NCHW if dim 1 holds the channels, NHWC if the last dim of a 4D output does, tokens if
    the last dim of a 3D output does: the patch grid is the input size over ``reduction`` and every token before
    it is a prefix token (``prefix``, a model's ``num_prefix_tokens``, is only an upper bound: CaiT and XCiT blocks
    run before their class token is added, ConViT adds it midway). None if it fits none."""
    if raw is None:
        return None
    if len(raw) == 4:
        if raw[1] == channels:
            return NCHW
        if raw[3] == channels:
            return NHWC
        return None
    if len(raw) == 3 and raw[2] == channels and input_hw is not None and reduction > 0:
        tokens = raw[1]
        (hh, ww) = input_hw
        for h, w in ((hh // reduction, ww // reduction), (-(-hh // reduction), -(-ww // reduction))):
            pre = tokens - h * w
            if h > 0 and w > 0 and pre >= 0 and (prefix is None or pre <= max(prefix, 0) + 8):
                return Layout("tokens", pre, reduction)
    return None


@dataclass(frozen=True)
class TokenGrid:
    """A declared token grid: a 3-D output (N, tokens, C) holds ``prefix`` leading non-patch tokens (class,
    distillation, register tokens), then the patch tokens row-major, ``patch`` input pixels per token along each
    side. Made by :func:`token_grid`."""

    patch: int
    prefix: int = 0

    def layout(self) -> Layout:
        return Layout("tokens", self.prefix, self.patch)


def token_grid(patch: int, prefix: int = 0) -> TokenGrid:
    """Declare a model's token grid, for any model whose blocks output (N, tokens, C) sequences:

    >>> tap = FeatureTap(vit, ["blocks.3", "blocks.7", "blocks.11"], token_grid=token_grid(16, prefix=1))

    (or set ``model.token_grid = token_grid(16, prefix=1)`` on the model, which the harness's taps read too).
    Each 3-D output is then laid out as an (N, C, H / patch, W / patch) map after dropping ``prefix`` tokens; the
    token count is checked against the input size on every call."""
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
        raise ConfigError(f"token_grid: patch must be a positive int (pixels per token), got {patch!r}")
    if not isinstance(prefix, int) or isinstance(prefix, bool) or prefix < 0:
        raise ConfigError(f"token_grid: prefix must be an int >= 0 (class/register tokens), got {prefix!r}")
    return TokenGrid(patch, prefix)


def as_token_grid(value: object) -> TokenGrid | None:
    """``None``, a :class:`TokenGrid`, a patch size or a ``(patch, prefix)`` pair as a TokenGrid."""
    if value is None or isinstance(value, TokenGrid):
        return value
    if isinstance(value, int):
        return token_grid(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return token_grid(*value)
    raise ConfigError(f"token_grid must be token_grid(patch, prefix), a patch size or (patch, prefix); got {value!r}")
