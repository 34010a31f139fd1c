"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022).

KD's KL divergence splits into two parts (the paper's Eq. 5, ``KD = TCKD + (1 - p_t^T) NCKD``), which DKD weights
independently, ``DKD = alpha * TCKD + beta * NCKD``:

* :func:`dkd_terms` -- the unweighted ``(TCKD, NCKD)``:

  - TCKD, *target-class* KD: the KL divergence between the binary distributions ``b = (p_target, p_other)`` of
    teacher and student, ``p = softmax(z / T)``;
  - NCKD, *non-target-class* KD: the KL divergence between the teacher's and the student's distributions over the
    non-target classes only (``softmax`` of the non-target logits),

  each summed over classes and samples, divided by ``N`` and multiplied by ``T^2``.
* :func:`dkd_loss` -- ``alpha * TCKD + beta * NCKD`` (the authors' ``dkd_loss``).

As the authors' code (``mdistiller/distillers/DKD.py``), which we reproduce exactly:

* ``p_other`` is the sum of the non-target probabilities (not ``1 - p_target``), and the TCKD's student log is
  ``log`` of that sum (not a ``log_softmax``);
* the non-target softmax is taken over all classes with the target logit shifted by ``-1000`` (after the division
  by ``T``), which gives it a probability of 0 in float32 and float64 for any logits of a trained network;
* the KL divergences use ``kl_div``'s convention ``0 * log 0 = 0``;
* nothing is clamped: a student whose non-target (or target) probability underflows to 0 gives an infinite TCKD,
  as in the code (the engine stops such a run with its NaN/inf check).

The paper's form and the code's agree (the ``-1000`` shift is the code's way of dropping the target class), so
there is no paper option. The training-time settings -- ``alpha``, ``beta``, ``T`` per dataset and the linear
warm-up of the whole DKD term -- are the ``dkd`` method's (:mod:`tfdistill.methods.dkd`).

Both terms are per-sample. Computed in float32 (float64 stays float64) with autocast off; the teacher's logits
are treated as constants. Checked against the authors' ``dkd_loss`` on fixed inputs (``tests/golden/dkd.json``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast, f32

__all__ = ["dkd_terms", "dkd_loss"]

_SHIFT = 1000.0
"""The authors' shift of the target logit that removes it from the non-target softmax."""


def _kl_sum(target: Tensor, log_input: Tensor) -> Tensor:
    """``sum target * (log target - log_input)`` with ``0 log 0 = 0`` (``F.kl_div(..., reduction="sum")``)."""
    return (torch.xlogy(target, target) - target * log_input).sum()


def dkd_terms(logits_s: Tensor, logits_t: Tensor, targets: Tensor, T: float = 4.0) -> tuple[Tensor, Tensor]:
    """The unweighted ``(TCKD, NCKD)`` of student logits ``(N, K)`` against teacher logits ``(N, K)``, for integer
    class ``targets`` ``(N,)`` and temperature ``T`` (> 0); each is ``T^2 / N`` times a sum over the batch."""
    if T <= 0:
        raise ValueError(f"DKD temperature must be > 0, got {T}")
    if logits_s.shape != logits_t.shape or logits_s.dim() != 2:
        raise ValueError(f"dkd_terms expects two (N, K) logit tensors of the same shape, "
                         f"got {tuple(logits_s.shape)} and {tuple(logits_t.shape)}")
    if targets.shape != logits_s.shape[:1]:
        raise ValueError(f"dkd_terms expects one target per sample, got {tuple(targets.shape)} for "
                         f"{logits_s.shape[0]} samples")
    n = logits_s.shape[0]
    with autocast("off", logits_s.device):
        zs = f32(logits_s) / T
        zt = f32(logits_t).detach() / T
        gt = torch.zeros_like(zs).scatter_(1, targets.reshape(-1, 1), 1.0)
        other = 1.0 - gt
        ps, pt = F.softmax(zs, dim=1), F.softmax(zt, dim=1)
        bs = torch.stack([(ps * gt).sum(1), (ps * other).sum(1)], dim=1)
        bt = torch.stack([(pt * gt).sum(1), (pt * other).sum(1)], dim=1)
        tckd = _kl_sum(bt, torch.log(bs)) * (T * T) / n
        log_ps_nt = F.log_softmax(zs - _SHIFT * gt, dim=1)
        pt_nt = F.softmax(zt - _SHIFT * gt, dim=1)
        nckd = _kl_sum(pt_nt, log_ps_nt) * (T * T) / n
    return tckd, nckd


def dkd_loss(logits_s: Tensor, logits_t: Tensor, targets: Tensor, alpha: float = 1.0, beta: float = 8.0,
             T: float = 4.0) -> Tensor:
    """``alpha * TCKD + beta * NCKD`` (see :func:`dkd_terms`); defaults: the paper's CIFAR-100 setting."""
    tckd, nckd = dkd_terms(logits_s, logits_t, targets, T)
    return alpha * tckd + beta * nckd
