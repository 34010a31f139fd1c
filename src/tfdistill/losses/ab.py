"""Activation-boundary distillation (Heo et al., AAAI 2019).

* :func:`ab_margin_loss` -- the paper's alternative (squared-hinge) loss for one pair, summed over elements and
  divided by the batch size.
* :func:`ab_loss` -- CRD's weighting over stages: stage ``i`` of ``n`` gets ``2^(i-n+1)`` (the deepest 1, each
  shallower one half the next), and every term is scaled by ``3/1000``.

The connector mapping student maps to teacher shapes is :class:`tfdistill.losses.fitnet.ConvRegressor` with
``relu=False``.

Where the sources differ
------------------------
* **Loss.** Paper and CRD agree on the element loss with margin ``m = 1``:
  ``(s + m)^2 * [s > -m and t <= 0] + (s - m)^2 * [s <= m and t > 0]``, where ``s`` is the connector output and
  only the *sign* of the teacher's response ``t`` matters.
* **Pre-activations.** AB is defined on pre-ReLU responses and CRD taps them (``preact=True``). Our taps are
  stage outputs after the final activation (forward hooks cannot see a pre-activation sum). For the teacher this is
  harmless: ``relu(x) > 0`` exactly when ``x > 0``, so the activation boundary is the same. For the student the
  connector receives post-activation maps; its (linear) output can still take both signs. CRD uses an identity
  connector when shapes agree; on post-activation maps that would be non-negative and could never reach the
  ``< -m`` side, so the ``ab`` method always uses a learned connector (conv + BatchNorm, no ReLU) by default.
* **Scale.** ``sum / batch * 3/1000`` with the ``2^(i-n+1)`` stage weights is CRD's (inherited from the authors'
  code); the paper only states a squared-hinge sum.

Computed in float32 under autocast; teacher maps are treated as constants.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..precision import f32

__all__ = ["ab_margin_loss", "ab_loss", "ab_stage_weights"]


def ab_margin_loss(source: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Alternative activation-boundary loss of one pair, summed over elements and divided by the batch size.

    Args:
        source: connector output for the student ``(N, C, H, W)``.
        target: the teacher's responses, same shape (only the sign is used; detached).
        margin: ``m`` of the paper (1.0).
    """
    if source.shape != target.shape:
        raise ValueError(f"ab_margin_loss: connector output {tuple(source.shape)} does not match the teacher's "
                         f"{tuple(target.shape)}")
    with torch.autocast(device_type=source.device.type, enabled=False):
        s = f32(source)
        pos = (f32(target).detach() > 0).to(s.dtype)
        neg = 1.0 - pos
        lo = (s + margin).pow(2) * ((s > -margin).to(s.dtype) * neg)
        hi = (s - margin).pow(2) * ((s <= margin).to(s.dtype) * pos)
        return (lo + hi).sum() / s.shape[0]


def ab_stage_weights(n: int) -> list[float]:
    """CRD's stage weights ``2^(i-n+1)`` for ``i = 0..n-1`` (deepest stage 1.0)."""
    return [2.0 ** (i - n + 1) for i in range(n)]


def ab_loss(sources: Sequence[Tensor], targets: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """CRD's AB loss over stages: ``sum_i 2^(i-n+1) * ab_margin_loss(s_i, t_i) * 3 / 1000``."""
    if len(sources) != len(targets) or not sources:
        raise ValueError(f"ab_loss needs equally many (>= 1) connector outputs and teacher maps, "
                         f"got {len(sources)} and {len(targets)}")
    w = ab_stage_weights(len(sources))
    terms = [wi * ab_margin_loss(s, t, margin) for wi, s, t in zip(w, sources, targets)]
    return torch.stack(terms).sum() * (3.0 / 1000.0)
