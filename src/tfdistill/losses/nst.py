"""Neuron selectivity transfer (Huang & Wang, 2017): MMD between channel distributions.

* :func:`poly_kernel_mean` -- mean of the polynomial kernel ``(a_i . b_j)^d`` over all channel pairs and samples.
* :func:`nst_pair_loss` -- squared MMD with the polynomial kernel between the student's and teacher's channels.
* :func:`nst_loss` -- sum over stage pairs (the ``nst`` method uses every tapped stage, as CRD).

Each channel's map is flattened over positions and l2-normalised; a map is a *sample* from the layer's
distribution of "neuron selectivity patterns". With ``S`` and ``T`` the sets of normalised channel vectors,

``MMD^2 = mean_{t,t'} k(t,t') + mean_{s,s'} k(s,s') - 2 mean_{s,t} k(s,t)``, ``k(x, y) = (x . y + c)^d``.

Where the sources differ
------------------------
* The paper's best kernel is the polynomial one with ``d = 2``, ``c = 0`` (the default here, as in CRD); the paper
  adds the loss with weight ``lambda / 2``, CRD with weight 50 (we follow CRD's weight, no extra 1/2).
* CRD computes the teacher-teacher term (a constant for the student) and we do too, so the value is the actual
  MMD^2 (it does not change gradients).
* Different spatial sizes are handled by average-pooling the larger map (CRD's rule); the channel counts of
  student and teacher may differ.

Computed in float32 under autocast; teacher maps are treated as constants. The kernel matrices are batched matrix
products (``(N, C_s, C_t)``), no Python loop over samples or channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .at import match_spatial
from ..precision import f32

__all__ = ["poly_kernel_mean", "nst_pair_loss", "nst_loss"]


def poly_kernel_mean(a: Tensor, b: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Mean of ``(a_i . b_j + c)^degree`` over samples and channel pairs; ``a``: (N, Ca, L), ``b``: (N, Cb, L)."""
    return (torch.bmm(a, b.transpose(1, 2)) + c).pow(degree).mean()


def nst_pair_loss(f_s: Tensor, f_t: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Squared MMD between the l2-normalised channel maps of ``f_s`` and ``f_t`` (N, C, H, W)."""
    with torch.autocast(device_type=f_s.device.type, enabled=False):
        s, t = match_spatial(f32(f_s), f32(f_t).detach())
        s = F.normalize(s.flatten(2), dim=2)
        t = F.normalize(t.flatten(2), dim=2)
        return (poly_kernel_mean(t, t, degree, c) + poly_kernel_mean(s, s, degree, c)
                - 2.0 * poly_kernel_mean(s, t, degree, c))


def nst_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], degree: int = 2, c: float = 0.0) -> Tensor:
    """Sum of :func:`nst_pair_loss` over pairs of stage maps (lists of equal length)."""
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(f"nst_loss needs equally many (>= 1) student and teacher maps, "
                         f"got {len(feats_s)} and {len(feats_t)}")
    return torch.stack([nst_pair_loss(s, t, degree, c) for s, t in zip(feats_s, feats_t)]).sum()
