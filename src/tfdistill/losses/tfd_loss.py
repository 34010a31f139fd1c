"""TFDLoss: the front door to the TFD losses, ``alpha * depth + beta * width`` as named terms.

The losses themselves are the eager functions of :mod:`tfdistill.losses.tfd` (the reference definition, with the
notes on where the sources differ). :class:`TFDLoss` computes them through one kernel,
:class:`~tfdistill.losses.tfd_fused.FusedTFD` -- eagerly (exactly ``weights[0] * depth_loss``,
``weights[1] * width_loss``) or, with ``fuse``, as one compiled region -- and keeps the one ``[alpha, beta]``
weights tensor the kernel multiplies by. The ``tfd`` training method uses this module too (its ramp scales the
weights in place, :meth:`TFDLoss.scale_`). The other pair distances of the paper's ablation
(:mod:`tfdistill.losses.tfd_distance`) go through the same weights. This module imports the functions and the
kernel; neither imports it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .tfd import DIRECTIONS, _check_maps
from .tfd_distance import DISTANCES, depth_loss_with, width_loss_with
from .tfd_fused import FusedTFD, fuse_available

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
            where :func:`~tfdistill.losses.tfd_fused.fuse_available` says it pays off and can work (CUDA with
            Triton, deterministic algorithms off), decided for ``device`` or else at the first call for the maps'
            device. Default ``False``: the eager functions.
        distance: the feature-mimicking loss, ``l2`` (the paper's mean squared error) or one of the ablation's
            ``sp | at | nst | ab`` (:mod:`~tfdistill.losses.tfd_distance`; never fused).
        device: where the maps will be, to decide ``fuse="auto"`` now (see :attr:`mode`).

    The weights are the non-persistent float32 buffer :attr:`weights` ``= [alpha, beta]``; :meth:`scale_` rescales
    it in place. :attr:`mode` (``"compiled" | "eager" | "pending"``), :attr:`reason` (why not compiled) and
    :attr:`compile_s` describe the kernel.
    """

    def __init__(
        self,
        alpha: float = 5e-3,
        beta: float = 4e-4,
        direction: str = "top_down",
        detach_top: bool = True,
        width_stages: Sequence[int] | None = None,
        fuse: bool | str = False,
        distance: str = "l2",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if fuse not in (True, False, "auto"):
            raise ValueError(f"TFDLoss fuse must be True, False or 'auto', got {fuse!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown TFD direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        if distance not in DISTANCES:
            raise ValueError(f"unknown TFD distance {distance!r}; valid: {', '.join(DISTANCES)}")
        if distance != "l2" and not detach_top:
            raise ValueError(f"TFDLoss detach_top=False needs distance='l2' (the {distance} loss treats its target "
                             "as a constant)")
        if alpha < 0 or beta < 0:
            raise ValueError(f"TFD weights must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.direction = direction
        self.detach_top = bool(detach_top)
        self.width_stages = None if width_stages is None else [int(i) for i in width_stages]
        self.fuse = fuse
        self.distance = distance
        self.kernel: FusedTFD | None = None
        """The kernel ``(feats, weights) -> (weighted depth, weighted width)``; None until ``fuse="auto"`` is
        decided."""
        if distance != "l2":
            self._make_kernel(False, f"distance={distance} (only the l2 losses are fused)")
        elif fuse != "auto":
            self._make_kernel(bool(fuse), "fuse=false")
        elif device is not None:
            self._make_kernel(*fuse_available(torch.device(device)))
        self.register_buffer("weights", torch.tensor([self.alpha, self.beta]), persistent=False)

    def _make_kernel(self, compile: bool, why: str) -> FusedTFD:
        self.kernel = FusedTFD(self.direction, self.detach_top, self.width_stages, depth=self.alpha > 0,
                               width=self.beta > 0, compile=compile)
        if not compile:
            self.kernel.reason = why
        return self.kernel

    # ------------------------------------------------------------------ the kernel's state
    @property
    def mode(self) -> str:
        """``"compiled"`` or ``"eager"`` once decided (after the first call with ``fuse`` on); ``"pending"``
        before."""
        return "pending" if self.kernel is None else self.kernel.mode

    @property
    def reason(self) -> str:
        """Why the losses are not compiled ("" when they are, or not yet decided)."""
        return "" if self.kernel is None else self.kernel.reason

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling."""
        return 0.0 if self.kernel is None else self.kernel.compile_s

    def scale_(self, factor: float) -> None:
        """``weights <- [alpha, beta] * factor`` in place (float32): a ramp changes neither the compiled region nor
        a captured CUDA graph."""
        self.weights.copy_(torch.tensor([self.alpha, self.beta]) * torch.tensor(factor))

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        depth, width = self.pair(feats)
        return {"depth": depth, "width": width, "total": depth + width}

    def pair(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``(alpha * L_depth, beta * L_width)``: :meth:`forward`'s terms without their sum."""
        _check_maps(feats, "TFDLoss", 1)
        weights = self.weights.to(feats[0].device)
        if self.distance != "l2":
            return self._other_distance(feats, weights)
        kernel = self.kernel if self.kernel is not None else self._make_kernel(*fuse_available(feats[0].device))
        return kernel(feats, weights)

    def _other_distance(self, feats: Sequence[Tensor], weights: Tensor) -> tuple[Tensor, Tensor]:
        zero = feats[0].new_zeros((), dtype=torch.float32)
        depth = weights[0] * depth_loss_with(feats, self.distance, self.direction) if self.alpha > 0 else zero
        if self.beta > 0:
            maps = feats if self.width_stages is None else [feats[i] for i in self.width_stages]
            width = weights[1] * width_loss_with(maps, self.distance)
        else:
            width = zero
        return depth, width

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, direction={self.direction!r}, "
                f"detach_top={self.detach_top}, width_stages={self.width_stages}, fuse={self.fuse!r}"
                + (f", distance={self.distance!r}" if self.distance != "l2" else ""))
