"""Tf-KD's manually designed virtual teacher (Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge Distillation via
Label Smoothing Regularization", CVPR 2020), ``Tf-KD_reg``.

* :func:`virtual_teacher` -- the designed distribution ``p^d``: ``a`` on the correct class, ``(1 - a) / (K - 1)``
  on each other class, softened as the authors' code does.
* :func:`tfkd_reg_loss` -- the KL term of ``Tf-KD_reg`` exactly as the authors' code computes it.

Where the sources differ
------------------------
The paper (its Eq. 9) writes ``L = (1 - alpha) H(q, p) + alpha D_KL(p^d_tau, p_tau)``. The released code
(``my_loss_function.py``, ``loss_kd_regularization``, which produced the published numbers) computes instead:

* the teacher as ``softmax(p^d / tau)`` -- a softmax of the *probabilities* ``p^d`` divided by ``tau`` (with
  ``a = 0.99``, ``tau = 20``, ``K = 100`` that is nearly uniform: about 0.0105 on the correct class);
* the student *without* temperature, ``log_softmax(z)``;
* ``nn.KLDivLoss()`` with its default ``reduction="mean"``: the sum over classes and samples divided by ``B * K``
  (not by ``B``), then times ``params.multiplier`` (100 for the CIFAR-100 ResNet18 setting; 1 for MobileNetV2),
  and no ``tau^2``;
* ``correct_prob = 0.99`` hard-coded in the code (``method.tfkd_reg.correct_prob`` sets another ``a``, e.g. 0.9).

:func:`tfkd_reg_loss` returns that value (without ``alpha`` and the multiplier, which the ``tfkd_reg`` method
applies). Checked against the authors' ``loss_kd_regularization`` on fixed inputs (``tests/test_selfkd.py``).
Computed in float32 under autocast; no Python loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast, f32

__all__ = ["virtual_teacher", "tfkd_reg_loss"]


def virtual_teacher(targets: Tensor, num_classes: int, correct_prob: float = 0.99, T: float = 20.0,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """``(N, K)`` in ``dtype``: ``softmax(u / T)`` with ``u = correct_prob`` at the target, ``(1 - correct_prob)/(K-1)``
    elsewhere (the released code's teacher; see the module docs)."""
    if num_classes < 2:
        raise ValueError(f"virtual_teacher needs >= 2 classes, got {num_classes}")
    hit = targets.view(-1, 1) == torch.arange(num_classes, device=targets.device)  # no scatter: vmap-able
    u = torch.where(hit, torch.tensor(correct_prob, dtype=dtype, device=targets.device),
                    torch.tensor((1.0 - correct_prob) / (num_classes - 1), dtype=dtype, device=targets.device))
    return F.softmax(u / T, dim=1)


def tfkd_reg_loss(logits: Tensor, targets: Tensor, T: float = 20.0, correct_prob: float = 0.99) -> Tensor:
    """``sum_{n,k} q (log q - log_softmax(z)) / (N K)`` with ``q = virtual_teacher(...)``: the code's KL term."""
    if T <= 0 or not 0 < correct_prob <= 1:
        raise ValueError(f"tfkd_reg_loss needs T > 0 and 0 < correct_prob <= 1, got T={T}, correct_prob={correct_prob}")
    with autocast("off", logits.device):
        z = f32(logits)
        q = virtual_teacher(targets, z.shape[1], correct_prob, T, z.dtype)
        kl = q * (q.log() - F.log_softmax(z, dim=1))
        return kl.sum() / kl.numel()
