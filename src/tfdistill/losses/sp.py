"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019).

* :func:`similarity_matrix` -- the row-normalised batch Gram matrix ``normalize(F F^T)`` of flattened features.
* :func:`sp_loss` -- ``||G_s - G_t||_F^2 / b^2``, summed over the given pairs of maps.

Where the sources differ
------------------------
* The paper and CRD agree (CRD's version was verified by the paper's author): activations are flattened per
  sample, ``G = A A^T`` is l2-normalised row by row, and the loss is the squared Frobenius norm of the difference
  divided by ``b^2``. The paper sums over several layer pairs; CRD (and the ``sp`` method) uses only the output
  of the last stage (its ``feat[-2]``), with weight 3000.

Computed in float32 under autocast; teacher maps are treated as constants. Student and teacher maps may have
different shapes (only the batch size must agree).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import f32

__all__ = ["similarity_matrix", "sp_pair_loss", "sp_loss"]


def similarity_matrix(f: Tensor) -> Tensor:
    """``(b, b)`` matrix ``normalize(A A^T, dim=1)`` with ``A = f.flatten(1)``."""
    a = f.flatten(1)
    return F.normalize(a @ a.t(), dim=1)


def sp_pair_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``||G_s - G_t||_F^2 / b^2`` for one pair of feature tensors with the same batch size ``b``."""
    b = f_s.shape[0]
    if f_t.shape[0] != b:
        raise ValueError(f"sp_loss: batch sizes differ ({b} vs {f_t.shape[0]})")
    with torch.autocast(device_type=f_s.device.type, enabled=False):
        diff = similarity_matrix(f32(f_s)) - similarity_matrix(f32(f_t).detach())
        return diff.pow(2).sum() / (b * b)


def sp_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """Sum of :func:`sp_pair_loss` over pairs (lists of equal length)."""
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(f"sp_loss needs equally many (>= 1) student and teacher tensors, "
                         f"got {len(feats_s)} and {len(feats_t)}")
    return torch.stack([sp_pair_loss(s, t) for s, t in zip(feats_s, feats_t)]).sum()
