"""Relational knowledge distillation (Park et al., CVPR 2019): distance- and angle-wise relations.

* :func:`pairwise_distances` -- Euclidean distance matrix with a zero diagonal.
* :func:`rkd_distance_loss` -- Huber (smooth-l1) loss between distance matrices, each divided by its mean
  off-diagonal distance.
* :func:`rkd_angle_loss` -- Huber loss between the cosines of all angles ``x_j - x_i, x_k - x_i`` (all triplets).

Where the sources differ
------------------------
* The paper and CRD agree: ``psi_D = ||x_i - x_j|| / mu`` with ``mu`` the mean distance over distinct pairs,
  ``psi_A = <e_ij, e_kj>``, Huber loss with ``delta = 1`` averaged over pairs / triplets, and weights
  ``lambda_D = 25``, ``lambda_A = 50`` (CRD's ``w_d``, ``w_a``; the ``rkd`` method's overall weight is 1).
* CRD normalises by the mean over entries ``> 0``. Distances are computed as ``sqrt(clamp(|a|^2 + |b|^2 - 2ab,
  1e-12))`` with the diagonal set to zero, so every off-diagonal entry is positive and the mean is over the
  ``b(b-1)`` off-diagonal entries; we compute it as ``sum / count(d > 0)`` without boolean indexing (no host sync).
* The angle at vertex ``i`` with ``j == i`` or ``k == i`` involves a zero vector, normalised to zero (as CRD).
  All ``b^3`` triplets are used, as CRD (the paper's sum over distinct triplets only differs by those zeros).
* Applied to the penultimate (pooled) features, as CRD.

Computed in float32 under autocast; the teacher's features are treated as constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import f32

__all__ = ["pairwise_distances", "rkd_distance_loss", "rkd_angle_loss"]


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """``(b, b)`` Euclidean distances between the rows of ``e`` ``(b, d)``; the diagonal is exactly zero."""
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=eps)
    off = 1.0 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype)
    return d2.sqrt() * off


def _normalised_distances(e: Tensor) -> Tensor:
    """Distances divided by their mean over the positive (off-diagonal) entries."""
    d = pairwise_distances(e)
    count = (d > 0).sum().clamp(min=1).to(d.dtype)
    return d / (d.sum() / count).clamp(min=1e-12)


def rkd_distance_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Distance-wise RKD: ``smooth_l1(D_s / mu_s, D_t / mu_t)`` averaged over the ``b x b`` entries."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"rkd_distance_loss: batch sizes differ ({f_s.shape[0]} vs {f_t.shape[0]})")
    with torch.autocast(device_type=f_s.device.type, enabled=False):
        s = _normalised_distances(f32(f_s).flatten(1))
        with torch.no_grad():
            t = _normalised_distances(f32(f_t).flatten(1))
        return F.smooth_l1_loss(s, t)


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[i, j] = e_j - e_i, normalised
    return torch.bmm(diff, diff.transpose(1, 2))  # [i, j, k] = cos of the angle at i between j and k


def rkd_angle_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Angle-wise RKD: ``smooth_l1`` between the cosines of all ``b^3`` angles of student and teacher."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"rkd_angle_loss: batch sizes differ ({f_s.shape[0]} vs {f_t.shape[0]})")
    with torch.autocast(device_type=f_s.device.type, enabled=False):
        s = _angles(f32(f_s).flatten(1))
        with torch.no_grad():
            t = _angles(f32(f_t).flatten(1))
        return F.smooth_l1_loss(s, t)
