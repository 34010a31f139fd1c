"""Zipf's label smoothing (Liang, Li, Zhang, Luo & Zhou, "Efficient One Pass Self-distillation with Zipf's Label
Smoothing", ECCV 2022; authors' code megvii-research/zipfls, ``pytorch_zipfls``).

The network's own *dense* predictions rank the non-target classes: the classifier (the linear head) is applied to
every position of the last feature map (upsampled x2 bilinearly on CIFAR, ``--upsample bilinear``; as it is on
ImageNet), each position votes for its argmax class, and the classes are ranked by their votes (ties share the
smallest rank, ``scipy.stats.rankdata(-votes, method="min")``; the target class is ranked with the others). Class
``k`` of rank ``r_k`` gets the Zipf weight ``r_k ** -power``; the target is removed and the rest normalised: a
distribution ``q`` over the ``K - 1`` non-target classes, a constant. The loss is ``KL(q || softmax(z_nt))``, the
log-softmax taken over the non-target logits only, summed over classes and averaged over the batch (the authors'
``kl_loss`` without ``--mask``). It is added to cross-entropy with weight ``lambda`` (CIFAR-100 and ImageNet: 0.1).

* :func:`dense_votes` -- ``(N, K)`` vote counts of the per-position argmax of the classifier on a feature map.
* :func:`zipf_targets` -- the Zipf distribution ``q`` over the non-target classes, from the votes.
* :func:`nontarget_kl` -- ``mean_n KL(q_n || softmax(z_n without its target))``.
* :func:`zipf_ls_loss` -- the three together (what the ``zipf_ls`` method adds, before its weight).

Every term is a mean over per-sample terms (per-sample; the authors' optional ``--mask``, which averages over the
correctly classified samples of the batch only, is not offered). No Python loop over samples; the ranking is a
sort and a ``searchsorted`` on the device (fixed shapes, no host synchronisation), where the authors' code
ranks on the host with scipy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast, f32
from .uskd import drop_target

__all__ = ["UPSAMPLE_MODES", "dense_votes", "zipf_targets", "nontarget_kl", "zipf_ls_loss"]

UPSAMPLE_MODES = ("bilinear", "bicubic", "none")


@torch.no_grad()
def dense_votes(feature_map: Tensor, weight: Tensor, bias: Tensor | None, upsample: str = "bilinear") -> Tensor:
    """``(N, K)`` int64: how many positions of ``feature_map`` ``(N, C, H, W)`` the linear classifier ``(weight
    (K, C), bias (K,))`` assigns to each class (argmax per position), after an optional x2 upsampling of the map
    (``"bilinear"`` / ``"bicubic"``, ``align_corners=False``, as the authors' ``F.upsample``; ``"none"``)."""
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
    x = feature_map
    if upsample != "none":
        x = F.interpolate(x, scale_factor=2.0, mode=upsample, align_corners=False)
    n, c, h, w = x.shape
    k = weight.shape[0]
    pixel_logits = F.linear(x.permute(0, 2, 3, 1).reshape(n * h * w, c), weight.to(x.dtype),
                            None if bias is None else bias.to(x.dtype))
    arg = pixel_logits.reshape(n, h * w, k).argmax(dim=2)
    votes = torch.zeros(n, k, dtype=torch.long, device=x.device)
    return votes.scatter_add_(1, arg, torch.ones_like(arg))


@torch.no_grad()
def zipf_targets(votes: Tensor, targets: Tensor, power: float = 1.0) -> Tensor:
    """``(N, K - 1)`` float32: ``rank ** -power`` of every non-target class, normalised per row; ``rank`` is the
    "min" rank of ``-votes`` over all ``K`` classes (1 for the most voted; tied classes share the smallest rank of
    their group), the target class included in the ranking and then removed."""
    scores = -votes.to(torch.float64)
    ordered, _ = torch.sort(scores, dim=1)
    rank = torch.searchsorted(ordered, scores.contiguous(), right=False) + 1  # 1 + number of strictly better classes
    dist = rank.to(torch.float64).reciprocal() ** power
    dist = drop_target(dist, targets)
    return (dist / dist.sum(dim=1, keepdim=True)).float()


def nontarget_kl(logits: Tensor, targets: Tensor, q: Tensor) -> Tensor:
    """``mean_n sum_j q[n, j] (log q[n, j] - log_softmax(z_n without its target)[j])``: the KL from the constant
    non-target distribution ``q`` ``(N, K - 1)`` to the prediction over the non-target classes, in float32."""
    with autocast("off", logits.device):
        z = f32(logits)
        log_p = F.log_softmax(drop_target(z, targets), dim=1)
        return F.kl_div(log_p, q.to(log_p.dtype).detach(), reduction="none").sum(dim=1).mean()


def zipf_ls_loss(logits: Tensor, feature_map: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                 power: float = 1.0, upsample: str = "bilinear") -> Tensor:
    """The Zipf term of one batch: :func:`nontarget_kl` of ``logits`` against the :func:`zipf_targets` of the
    :func:`dense_votes` of ``feature_map`` under the classifier ``(weight, bias)``. Gradient flows into ``logits``
    only (the votes are an argmax)."""
    q = zipf_targets(dense_votes(feature_map.detach(), weight.detach(),
                                 None if bias is None else bias.detach(), upsample), targets, power)
    return nontarget_kl(logits, targets, q)
