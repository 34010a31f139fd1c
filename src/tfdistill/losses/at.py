"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

* :func:`attention_map` -- ``normalize(mean_c f^p)`` per sample, flattened over positions.
* :func:`at_pair_loss` -- mean squared difference of the student's and teacher's attention maps.
* :func:`at_loss` -- the sum over stage pairs (what the ``at`` method uses, on every tapped stage).
* :func:`match_spatial` -- pools the spatially larger of two maps to the smaller one's size (shared by the
  stage-pair losses AT, NST, VID, FT and FSP).

Where the sources differ
------------------------
* **Map.** The paper's attention map is ``sum_c |f_c|^p`` (p = 2) and its loss
  ``beta/2 * || Q_s/||Q_s|| - Q_t/||Q_t|| ||_2`` summed over pairs, with beta = 1000 divided by the map size and
  the batch. CRD uses the *mean* over channels of ``f^p`` (no absolute value; identical for even p), l2-normalises
  each flattened map and takes the *mean* of the squared difference over batch and positions, summed over stages,
  with weight 1000. We follow CRD; for odd ``p`` we take ``|f|^p`` as the paper does (CRD would use ``f^p``).
* **Sizes.** The paper pairs maps of equal size; CRD average-pools the larger map to the smaller one's size
  (``adaptive_avg_pool2d``), and so do we (CRD assumes square maps; we pool to ``(H, W)`` of the smaller).

Computed in float32 under autocast; teacher maps are treated as constants.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import f32

__all__ = ["attention_map", "at_pair_loss", "at_loss", "match_spatial"]


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever of ``a``, ``b`` (N, C, H, W) is larger to the other's spatial size (CRD's rule).

    Maps of equal size are returned unchanged. For maps that are larger in one dimension and smaller in the
    other, both are pooled to the elementwise minimum size.
    """
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    size = (min(ha, hb), min(wa, wb))
    if (ha, wa) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if (hb, wb) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """``(N, H*W)`` l2-normalised spatial attention: ``mean_c |f|^p`` flattened (``f`` is ``(N, C, H, W)``)."""
    a = f.pow(p) if float(p).is_integer() and int(p) % 2 == 0 else f.abs().pow(p)
    return F.normalize(a.mean(1).flatten(1), dim=1)


def at_pair_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """Attention-transfer loss for one pair of maps: ``mean((Q_s - Q_t)^2)`` over batch and positions."""
    with torch.autocast(device_type=f_s.device.type, enabled=False):
        s, t = match_spatial(f32(f_s), f32(f_t).detach())
        return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def at_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], p: float = 2.0) -> Tensor:
    """Sum of :func:`at_pair_loss` over pairs of stage maps (lists of equal length)."""
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(f"at_loss needs equally many (>= 1) student and teacher maps, "
                         f"got {len(feats_s)} and {len(feats_t)}")
    return torch.stack([at_pair_loss(s, t, p) for s, t in zip(feats_s, feats_t)]).sum()
