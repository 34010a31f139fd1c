"""Logit standardization (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024).

* :func:`standardize_logits` -- the Z-score of every sample's logits over its classes, ``(z - mean(z)) / (eps +
  std(z))``: the pre-process the authors apply before the softmax of a logit-based KD loss.
* :func:`logit_stand_kd_loss` -- KD on standardized logits of student and teacher: ``T^2 * KL(softmax(Z(z_t) / T)
  || softmax(Z(z_s) / T))``, averaged over the batch (the authors' ``kd_loss(..., logit_stand=True)``).

The paper sets each sample's temperature to a weighted standard deviation of its logits; in the code this is the
Z-score followed by a shared *base temperature* ``T`` (``--base-temp``, 2 in the released commands) and a KD weight
(``--kd-weight``, 9). The same pre-process is applied to DKD (``method.dkd.logit_stand``).

Where the code departs from the paper
-------------------------------------
* **Standard deviation.** The paper's Z-score divides by ``sigma(z) = sqrt(1/K sum_k (z_k - mean z)^2)`` (the
  population standard deviation); the code calls ``torch.std``, which divides by ``K - 1`` (Bessel's correction),
  so its standardized logits are ``sqrt((K - 1) / K)`` times the paper's -- like a temperature ``sqrt(K / (K-1))``
  times larger (1.005 for 100 classes, 1.054 for 10). ``std="sample"`` (default) reproduces the code,
  ``std="population"`` gives the paper's.
* **eps.** The code adds ``1e-7`` to the standard deviation (not under a square root); kept.

Checked against the authors' ``kd_loss`` on fixed inputs (``tests/golden/logit_stand.json``). Both terms are
per-sample: every sample is standardized over its own classes. Computed in float32 (float64 stays float64) with
autocast off; the teacher's logits are treated as constants.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast, f32

__all__ = ["STD_MODES", "standardize_logits", "logit_stand_kd_loss"]

STD_MODES = ("sample", "population")
"""``sample``: ``torch.std`` (divides by K - 1, the authors' code); ``population``: divides by K (the paper)."""


def standardize_logits(logits: Tensor, std: str = "sample", eps: float = 1e-7) -> Tensor:
    """``(z - mean(z)) / (eps + std(z))`` over the last dimension (the classes), per sample.

    Args:
        logits: ``(N, K)`` logits.
        std: ``"sample"`` (divide by K - 1, as the authors' code) or ``"population"`` (divide by K, as the paper).
        eps: added to the standard deviation (the code's ``1e-7``).
    """
    if std not in STD_MODES:
        raise ValueError(f"unknown standard deviation {std!r}; valid: {', '.join(STD_MODES)}")
    mean = logits.mean(dim=-1, keepdim=True)
    sd = logits.std(dim=-1, keepdim=True, unbiased=std == "sample")
    return (logits - mean) / (eps + sd)


def logit_stand_kd_loss(logits_s: Tensor, logits_t: Tensor, T: float = 2.0, std: str = "sample") -> Tensor:
    """KD between the standardized logits: ``T^2 / N * sum_n KL(softmax(Z(z_t[n]) / T) || softmax(Z(z_s[n]) / T))``.

    Args:
        logits_s: student logits ``(N, K)``.
        logits_t: teacher logits ``(N, K)`` (detached here).
        T: the base temperature (> 0; the authors' ``--base-temp``, 2).
        std: see :func:`standardize_logits`.
    """
    if T <= 0:
        raise ValueError(f"logit standardization temperature must be > 0, got {T}")
    if logits_s.shape != logits_t.shape or logits_s.dim() != 2:
        raise ValueError(f"logit_stand_kd_loss expects two (N, K) logit tensors of the same shape, "
                         f"got {tuple(logits_s.shape)} and {tuple(logits_t.shape)}")
    with autocast("off", logits_s.device):
        zs = standardize_logits(f32(logits_s), std) / T
        zt = standardize_logits(f32(logits_t).detach(), std) / T
        log_p = F.log_softmax(zs, dim=1)
        log_q = F.log_softmax(zt, dim=1)
        return (log_q.exp() * (log_q - log_p)).sum(1).mean() * (T * T)
