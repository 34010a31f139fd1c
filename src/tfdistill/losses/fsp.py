"""Flow of solution procedure (Yim et al., CVPR 2017): FSP matrices between consecutive stages.

* :func:`fsp_matrix` -- ``G[n, i, j] = mean_{h,w} top[n, i, h, w] * bottom[n, j, h, w]`` (shape ``(N, C_top,
  C_bottom)``), after average-pooling the larger of the two maps to the smaller one's size.
* :func:`fsp_loss` -- sum over consecutive stage pairs of the mean squared difference between the student's and
  teacher's FSP matrices.

Where the sources differ
------------------------
* **Pairs.** The paper computes FSP matrices between the input and the output of each residual "section" (maps of
  equal size). CRD computes them between consecutive entries of ``[stem, stage1, stage2, stage3]`` and
  average-pools the larger map of a pair to the smaller one's size (``adaptive_avg_pool2d``) -- we do the same on
  our tapped stages. Our taps do not include the stem (a bare conv/BN/ReLU is not a stage), so for a three-stage
  CIFAR ResNet there are two pairs (stage1-stage2, stage2-stage3) instead of CRD's three.
* **Channels.** FSP matrices are only comparable when student and teacher have the same channel counts stage by
  stage (CRD raises otherwise, and so does the ``fsp`` method at build time).
* **Loss.** ``mean((G_s - G_t)^2)`` per pair, summed over pairs (CRD); the paper's ``lambda_i / N sum ||.||_2^2``
  with equal ``lambda_i`` differs by a constant factor.
* **Training.** The paper and CRD use FSP only to *initialise* the student (CRD: 30 epochs on the unweighted FSP
  loss, then plain cross-entropy: its main-stage FSP term is zero, so its ``-b 50`` has no effect). See the ``fsp``
  method for both options.

Computed in float32 under autocast; teacher maps are treated as constants. One batched matrix product per pair.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .at import match_spatial
from ..precision import f32

__all__ = ["fsp_matrix", "fsp_matrices", "fsp_loss"]


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """``(N, C_top, C_bottom)`` Gram matrix between the channels of two maps, averaged over positions."""
    b, t = match_spatial(bottom, top)
    b, t = b.flatten(2), t.flatten(2)
    return torch.bmm(t, b.transpose(1, 2)) / b.shape[-1]


def fsp_matrices(feats: Sequence[Tensor]) -> list[Tensor]:
    """FSP matrices of consecutive pairs ``(feats[i], feats[i+1])``."""
    return [fsp_matrix(feats[i], feats[i + 1]) for i in range(len(feats) - 1)]


def fsp_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """Sum over consecutive stage pairs of ``mean((G_s - G_t)^2)``.

    Args:
        feats_s: ``L >= 2`` student maps, shallow to deep.
        feats_t: ``L`` teacher maps with the same channel counts as the student's (detached here).
    """
    if len(feats_s) != len(feats_t) or len(feats_s) < 2:
        raise ValueError(f"fsp_loss needs equally many (>= 2) student and teacher maps, "
                         f"got {len(feats_s)} and {len(feats_t)}")
    for k, (s, t) in enumerate(zip(feats_s, feats_t)):
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"fsp_loss: stage {k} has {s.shape[1]} student channels but {t.shape[1]} teacher "
                             "channels; FSP matrices need equal channel counts")
    with torch.autocast(device_type=feats_s[0].device.type, enabled=False):
        g_s = fsp_matrices([f32(f) for f in feats_s])
        g_t = fsp_matrices([f32(f).detach() for f in feats_t])
        return torch.stack([(a - b).pow(2).mean() for a, b in zip(g_s, g_t)]).sum()
