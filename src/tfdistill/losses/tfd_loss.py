"""TFDLoss: the two TFD losses as one module, ``alpha * depth + beta * width`` as named terms.

The losses themselves are the eager functions of :mod:`tfdistill.losses.tfd` (the reference definition, with the
notes on where the sources differ); ``fuse`` computes them as one compiled region
(:class:`~tfdistill.losses.tfd_fused.FusedTFD`). This module imports both; neither imports it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .tfd import DIRECTIONS, _check_maps, depth_loss, width_loss
from .tfd_fused import FusedTFD

__all__ = ["TFDLoss"]


class TFDLoss(nn.Module):
    """``alpha * depth_loss + beta * width_loss`` on a list of stage features.

    Returns a dict of named, already weighted terms: ``{"depth": alpha*L_depth, "width": beta*L_width,
    "total": sum}``. A term whose weight is 0 is not computed (it is returned as a zero).

    Args:
        alpha: weight of the depth-wise loss (paper: 0.005).
        beta: weight of the width-wise loss (paper: 0.0004).
        direction: depth-wise supervision direction, see :func:`~tfdistill.losses.tfd.depth_loss`.
        detach_top: freeze the width-wise target channels, see :func:`~tfdistill.losses.tfd.width_loss`.
        width_stages: indices of the maps the width-wise loss uses (default: all).
        fuse: compute both losses as one ``torch.compile``d region (:class:`~tfdistill.losses.tfd_fused.FusedTFD`:
            a few fused kernels instead of ~125 small ones on a GPU; values equal up to float32 rounding; the first
            call compiles, ~10 s; falls back to the eager losses with a warning where compiling fails). ``"auto"``:
            only when the maps are on a CUDA device. Default ``False``: the eager functions.
    """

    def __init__(
        self,
        alpha: float = 5e-3,
        beta: float = 4e-4,
        direction: str = "top_down",
        detach_top: bool = True,
        width_stages: Sequence[int] | None = None,
        fuse: bool | str = False,
    ) -> None:
        super().__init__()
        if fuse not in (True, False, "auto"):
            raise ValueError(f"TFDLoss fuse must be True, False or 'auto', got {fuse!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown TFD direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"TFD weights must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.direction = direction
        self.detach_top = bool(detach_top)
        self.width_stages = None if width_stages is None else [int(i) for i in width_stages]
        self.fuse = fuse
        self._fused = None
        self.register_buffer("_weights", torch.tensor([self.alpha, self.beta]), persistent=False)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        _check_maps(feats, "TFDLoss", 1)
        if self.fuse is True or (self.fuse == "auto" and feats[0].is_cuda):
            if self._fused is None:
                self._fused = FusedTFD(self.direction, self.detach_top, self.width_stages, depth=self.alpha > 0,
                                       width=self.beta > 0)
            depth, width = self._fused(feats, self._weights.to(feats[0].device))
            return {"depth": depth, "width": width, "total": depth + width}
        zero = feats[0].new_zeros((), dtype=torch.float32)
        depth = self.alpha * depth_loss(feats, self.direction) if self.alpha > 0 else zero
        if self.beta > 0:
            maps = feats if self.width_stages is None else [feats[i] for i in self.width_stages]
            width = self.beta * width_loss(maps, self.detach_top)
        else:
            width = zero
        return {"depth": depth, "width": width, "total": depth + width}

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, direction={self.direction!r}, "
                f"detach_top={self.detach_top}, width_stages={self.width_stages}, fuse={self.fuse!r}")
