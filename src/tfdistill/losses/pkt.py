"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

* :func:`pkt_loss` -- KL divergence between the teacher's and student's conditional probability distributions
  built from cosine-similarity kernels over the batch.

With ``K_ij = (cos(x_i, x_j) + 1) / 2`` and ``P_ij = K_ij / sum_j K_ij`` (row-normalised, diagonal included):

``loss = mean_{i,j} P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps))``.

Where the sources differ
------------------------
* The formulation is the authors' code, used unchanged by CRD (including the ``mean`` over all ``b^2`` entries
  rather than a per-row sum, and ``eps = 1e-7`` in the normalisation and the logarithm). CRD applies it to the
  penultimate (pooled) features -- the ``pkt`` method does the same -- with weight 30000.
* CRD zeroes NaNs after normalising (they cannot arise with the ``eps`` in the denominator unless the input has
  NaNs); we do not, so a NaN input shows up as a NaN loss instead of being hidden.

Computed in float32 under autocast; the teacher's features are treated as constants.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..precision import f32

__all__ = ["cosine_probabilities", "pkt_loss"]


def cosine_probabilities(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-normalised ``(cos + 1) / 2`` similarities of the rows of ``x`` (flattened to ``(b, d)``)."""
    x = x.flatten(1)
    x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT loss between student features ``f_s`` ``(b, d_s)`` and teacher features ``f_t`` ``(b, d_t)``."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"pkt_loss: batch sizes differ ({f_s.shape[0]} vs {f_t.shape[0]})")
    with torch.autocast(device_type=f_s.device.type, enabled=False):
        p_s = cosine_probabilities(f32(f_s), eps)
        p_t = cosine_probabilities(f32(f_t).detach(), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()
