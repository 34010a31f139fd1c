"""Regularisers that attach to any model without editing it: DropBlock (Ghiasi, Lin & Le, NeurIPS 2018).

>>> handle = attach_dropblock(model, ["layer3"], prob=0.1, block_size=5)
>>> handle.set_progress(epoch / epochs)   # linear schedule of the drop probability, 0 -> prob
>>> handle.remove()

DropBlock drops contiguous ``block_size x block_size`` regions of a feature map instead of independent units. It is
installed as a forward hook that *replaces* the output of the named modules (typically stage containers) in training
mode; in eval mode the hook returns the output unchanged.

The algorithm (paper, Algorithm 1, and the authors' TPU implementation)
-----------------------------------------------------------------------
* Block seeds are Bernoulli(``gamma``) draws at the positions where a whole block fits inside the map, with
  ``gamma = p / b^2 * (H W) / ((H - b + 1)(W - b + 1))`` so that about a fraction ``p`` of the units is dropped
  (overlapping blocks make the realised rate slightly lower). ``b`` is clipped to the map size.
* Every seed is grown to a ``b x b`` block (a max-pool of the seed map); the kept units are rescaled by
  ``numel / count(kept)`` over the whole tensor, so the expected (and, for a constant input, the exact) mean
  activation is preserved.
* Masks are independent per channel (as the authors' implementation; ``shared_channels=True`` uses one mask per
  sample for all channels).
* Schedule: the paper ramps the keep probability linearly from 1 to its target over training.
  :meth:`DropBlockHandle.set_progress` sets ``p = prob * fraction`` (fraction clipped to [0, 1]); a fresh handle
  starts at the full ``prob``.

The drop probability lives in a 0-dim tensor updated in place, so a compiled or CUDA-graph-captured step sees the
schedule without recompiling. The hook is prepended to the module's forward hooks, so feature taps on the same
module (:class:`tfdistill.features.FeatureTap`) see the regularised output that the next layers see.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["drop_block", "attach_dropblock", "DropBlockHandle"]


def drop_block(x: Tensor, drop_prob: float | Tensor, block_size: int, shared_channels: bool = False) -> Tensor:
    """Apply DropBlock to ``x`` ``(N, C, H, W)`` (training behaviour; call it only when training).

    Args:
        x: feature map.
        drop_prob: target fraction of dropped units ``p`` (a float or a 0-dim tensor), ``0 <= p < 1``.
        block_size: side ``b`` of the square blocks (clipped to the map size).
        shared_channels: one mask per sample for all channels instead of one per channel.
    """
    if x.dim() != 4:
        raise ValueError(f"drop_block expects a 4D feature map (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    b = max(1, min(int(block_size), h, w))
    valid_h, valid_w = h - b + 1, w - b + 1
    gamma = drop_prob * (h * w) / (b * b * valid_h * valid_w)
    if isinstance(gamma, Tensor):
        gamma = gamma.to(device=x.device, dtype=torch.float32)
    seeds = (torch.rand(n, 1 if shared_channels else c, valid_h, valid_w, device=x.device) < gamma).float()
    # a seed at (i, j) drops rows i..i+b-1 and columns j..j+b-1: pad by b-1 and take the b x b window maximum
    blocks = F.max_pool2d(F.pad(seeds, (b - 1, b - 1, b - 1, b - 1)), kernel_size=b, stride=1)
    keep = 1.0 - blocks
    scale = keep.numel() / keep.sum().clamp(min=1.0)
    return x * (keep * scale).to(x.dtype)


class DropBlockHandle:
    """The hooks installed by :func:`attach_dropblock`: the schedule (:meth:`set_progress`) and :meth:`remove`."""

    def __init__(self, model: nn.Module, module_names: Sequence[str], prob: float, block_size: int,
                 shared_channels: bool = False) -> None:
        if not 0.0 <= float(prob) < 1.0:
            raise ConfigError(f"DropBlock drop probability must be in [0, 1), got {prob}")
        if int(block_size) < 1:
            raise ConfigError(f"DropBlock block size must be >= 1, got {block_size}")
        names = [str(n) for n in module_names]
        if not names:
            raise ConfigError("DropBlock needs at least one module name")
        modules = dict(model.named_modules())
        missing = [n for n in names if not n or n not in modules]
        if missing:
            valid = ", ".join(n for n in modules if n and n.count(".") < 2)
            raise ConfigError(f"DropBlock: unknown module(s) {missing} in {type(model).__name__}; valid (first "
                              f"levels): {valid}")
        self.names = names
        self.prob = float(prob)
        self.block_size = int(block_size)
        self.shared_channels = bool(shared_channels)
        self.fraction = 1.0
        self._p = torch.full((), self.prob, dtype=torch.float32)
        self._handles = [modules[n].register_forward_hook(self._hook, prepend=True) for n in names]

    @property
    def current_prob(self) -> float:
        """The drop probability now in effect (``prob * fraction``)."""
        return self.prob * self.fraction

    def set_progress(self, fraction: float) -> None:
        """Set the schedule: the drop probability becomes ``prob * clip(fraction, 0, 1)`` (linear ramp)."""
        self.fraction = min(1.0, max(0.0, float(fraction)))
        self._p.fill_(self.current_prob)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not module.training or not isinstance(output, Tensor) or output.dim() != 4:
            return None
        if self._p.device != output.device:
            self._p = self._p.to(output.device)
        return drop_block(output, self._p, self.block_size, self.shared_channels)

    def remove(self) -> None:
        """Remove the hooks (the model behaves as if DropBlock had never been attached)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __repr__(self) -> str:
        return (f"DropBlockHandle(modules={self.names}, prob={self.prob}, block_size={self.block_size}, "
                f"progress={self.fraction:.3f})")


def attach_dropblock(model: nn.Module, module_names: Sequence[str], prob: float, block_size: int,
                     shared_channels: bool = False) -> DropBlockHandle:
    """Install DropBlock on the outputs of ``module_names`` of ``model`` (forward hooks; the model is not edited).

    Returns a :class:`DropBlockHandle` with ``set_progress(fraction_of_training)`` (linear schedule of the drop
    probability from 0 to ``prob``; a fresh handle applies the full ``prob``) and ``remove()``. Identity in eval
    mode. Raises :class:`~tfdistill.errors.ConfigError` for unknown module names or invalid settings.
    """
    return DropBlockHandle(model, module_names, prob, block_size, shared_channels)
