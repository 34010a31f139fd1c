"""USKD, the teacher-free half of "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels" (Yang, Zeng, Yuan & Li, ICCV 2023; authors' code yzd-v/cls_KD,
``mmcls/models/dis_losses/uskd.py``, ``USKDLoss``).

With ``s = softmax(z)`` the final prediction and ``w = softmax(z_w)`` a *weak* prediction (a linear classifier on the
pooled features of the stage before the last), the loss is ``alpha * L_t + beta * L_nt + L_weak``:

* ``L_t = -mean_n p_t log s_t`` with the customised soft target ``p_t = s_t^2 + 1 - mean_batch(s_t^2)`` (a
  constant; the mean is over the batch, so this term is *batch-coupled*);
* ``L_nt = -mean_n sum_j q_j log softmax(z_nt)_j``: the non-target classes ranked by ``w_j / (1 - w_t) + r_j``,
  class of rank ``m`` (1 = first) weighted ``1 / m`` (Zipf), the target removed and the rest normalised into ``q``
  (a constant), the log-softmax over the non-target logits only;
* ``L_weak = -mu * mean_n sum_k y'_k log w_k`` with ``y' = 0.9 onehot(y) + 0.1 / K`` (the weak classifier learns
  from lightly smoothed labels).

``rank_from`` -- what ``r_j`` is. ``"code"`` (default, the authors' code): their ``USKDLoss.forward`` reassigns
``s_i = log_softmax(z)`` and ``s_t = gather(s_i, y)`` for ``L_t`` before it builds the ranking score, so the score
it ranks by is ``w_j / (1 - w_t + 1e-6) + log s_j / (1 - log s_t + 1e-6)`` -- log-probabilities, where the
names (and the weak half of the same line, ``w_j / (1 - w_t)``) mean the normalised non-target probabilities
``s_j / (1 - s_t)``. ``"paper"``: the probabilities, ``w_j / (1 - w_t + 1e-6) + s_j / (1 - s_t + 1e-6)`` (the
paper's full text was not available where this was written; the option follows the code's evident intent and the
paper's normalised non-target prediction). Both rank the non-target classes; they can order them differently.

* :func:`uskd_target_loss`, :func:`uskd_nontarget_targets`, :func:`uskd_nontarget_loss`, :func:`uskd_weak_loss`
  -- the parts; :func:`uskd_loss` -- the weighted sum, as a dict of the three weighted terms.

Integer labels only (the authors' code also takes mixed/one-hot label scores, keeping the top two; the engine
trains with integer labels). Computed in float32 under autocast; no Python loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast, f32

__all__ = ["RANK_FROM", "drop_target", "uskd_target_loss", "uskd_rank_scores", "uskd_nontarget_targets",
           "uskd_nontarget_loss", "uskd_weak_loss", "uskd_loss"]

RANK_FROM = ("code", "paper")


def drop_target(x: Tensor, targets: Tensor) -> Tensor:
    """``(N, K) -> (N, K - 1)``: every row without its target column, the others in order (a gather, so the shape
    does not depend on the data: no host synchronisation, CUDA-graph safe)."""
    k = x.shape[1]
    cols = torch.arange(k - 1, device=x.device).expand(x.shape[0], k - 1)
    return x.gather(1, cols + (cols >= targets.view(-1, 1)).long())


def uskd_target_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``-mean_n p_t[n] log s_t[n]`` with the constant ``p_t = s_t^2 + 1 - mean_batch(s_t^2)``."""
    y = targets.view(-1, 1)
    s_t = F.softmax(logits, dim=1).gather(1, y)
    p_t = s_t ** 2
    p_t = (p_t + 1 - p_t.mean(0, keepdim=True)).detach()
    log_s_t = F.log_softmax(logits, dim=1).gather(1, y)
    return -(p_t * log_s_t).sum(dim=1).mean()


@torch.no_grad()
def uskd_rank_scores(logits: Tensor, weak_logits: Tensor, targets: Tensor, rank_from: str = "code") -> Tensor:
    """``(N, K)`` scores the classes are ranked by (larger first): ``w / (1 - w_t + 1e-6) + r / (1 - r_t + 1e-6)``
    with ``r`` the final prediction's log-probabilities (``"code"``) or probabilities (``"paper"``)."""
    if rank_from not in RANK_FROM:
        raise ValueError(f"rank_from must be one of {', '.join(RANK_FROM)}, got {rank_from!r}")
    y = targets.view(-1, 1)
    w = F.softmax(weak_logits, dim=1)
    r = F.log_softmax(logits, dim=1) if rank_from == "code" else F.softmax(logits, dim=1)
    return w / (1 - w.gather(1, y) + 1e-6) + r / (1 - r.gather(1, y) + 1e-6)


@torch.no_grad()
def uskd_nontarget_targets(scores: Tensor, targets: Tensor) -> Tensor:
    """``(N, K - 1)``: the class at place ``m`` (0-based) of the descending order of ``scores`` weighted
    ``1 / (m + 1)``, the target removed, normalised per row."""
    n, k = scores.shape
    order = torch.sort(scores, dim=1, descending=True)[1]
    place = torch.argsort(order, dim=1)
    zipf = 1.0 / torch.arange(1, k + 1, device=scores.device, dtype=scores.dtype)
    z = zipf.expand(n, k).gather(1, place)
    z = drop_target(z, targets)
    return z / z.sum(dim=1, keepdim=True)


def uskd_nontarget_loss(logits: Tensor, targets: Tensor, q: Tensor) -> Tensor:
    """``-mean_n sum_j q[n, j] log softmax(z_n without its target)[j]`` (``q`` a constant)."""
    log_p = F.log_softmax(drop_target(logits, targets), dim=1)
    return -(q.detach() * log_p).sum(dim=1).mean()


def uskd_weak_loss(weak_logits: Tensor, targets: Tensor) -> Tensor:
    """``-mean_n sum_k y'_k log softmax(z_w)_k`` with ``y' = 0.9 onehot + 0.1 / K`` (before the weight ``mu``)."""
    k = weak_logits.shape[1]
    y = torch.zeros_like(weak_logits).scatter_(1, targets.view(-1, 1), 0.9) + 0.1 / k
    return -(y * F.log_softmax(weak_logits, dim=1)).sum(dim=1).mean()


def uskd_loss(logits: Tensor, weak_logits: Tensor, targets: Tensor, alpha: float = 1.0, beta: float = 0.1,
              mu: float = 0.005, rank_from: str = "code") -> dict[str, Tensor]:
    """The three weighted terms of USKD: ``{"uskd_target": alpha L_t, "uskd_nontarget": beta L_nt, "uskd_weak":
    mu L_weak}`` (their sum is the authors' ``loss_uskd``); float32 with autocast off."""
    with autocast("off", logits.device):
        z, zw = f32(logits), f32(weak_logits)
        q = uskd_nontarget_targets(uskd_rank_scores(z.detach(), zw.detach(), targets, rank_from), targets)
        return {"uskd_target": alpha * uskd_target_loss(z, targets),
                "uskd_nontarget": beta * uskd_nontarget_loss(z, targets, q),
                "uskd_weak": mu * uskd_weak_loss(zw, targets)}
