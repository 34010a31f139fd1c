"""ONE: knowledge distillation by On-the-fly Native Ensemble (Lan, Zhu & Gong, NeurIPS 2018).

* :class:`Gate` -- the gate: global average pooling of the shared features (the input of the branches), one FC
  layer to one score per branch, BatchNorm1d, ReLU and a softmax over the branches.
* :func:`gated_ensemble` -- the ensemble teacher: the gate-weighted sum of the branches' logits.
* :func:`one_kl_loss` -- the distillation term from the ensemble to one branch, ``T^2 KL`` at ``T = 3``.
* :func:`sigmoid_rampup` -- the weight schedule of the distillation term in the authors' code.

Checked against the authors' release, github.com/Lan1991Xu/ONE_NeurIPS2018: ``loss/kl_loss.py`` (``KLLoss``),
``models/cifar/resnet.py`` (``ONE_ResNet``: gate and ensemble), ``cifar_one.py`` (the total loss) and
``utils/ramps.py``; ``tests/test_selfdistill_aux.py`` reproduces ``KLLoss``'s value on fixed inputs.

Where the sources differ
------------------------
* **Teacher target.** The code adds ``1e-7`` to the softened ensemble probabilities before the log (not
  renormalised); :func:`one_kl_loss` does the same (``eps``), so its values match the code's. The ensemble is a
  constant for the KL term (the code takes ``.data``); its gradient comes from its own cross-entropy only.
* **Weight schedule.** The paper weights the KL term by 1; the released scripts ramp it in with
  ``exp(-5 (1 - e / 80)^2)`` over the first 80 of 300 epochs (``--consistency_rampup 80``), ``e`` the 0-based
  epoch. We follow the code.
* **Gradient rescaling.** The paper mentions no gradient rescaling of the shared layers and the release has none
  (the ``ILR`` rescaling of later re-implementations is not ONE's).

Computed in float32 under autocast.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import f32
from ._common import SoftTarget

__all__ = ["Gate", "gated_ensemble", "one_kl_loss", "sigmoid_rampup"]


class Gate(nn.Module):
    """``softmax(relu(bn(fc(avgpool(x)))))``: one weight per branch and sample, from the shared map ``x``."""

    def __init__(self, in_channels: int, branches: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, branches)
        self.bn = nn.BatchNorm1d(branches)

    def forward(self, x: Tensor) -> Tensor:
        z = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.softmax(F.relu(self.bn(self.fc(z))), dim=1)


def gated_ensemble(logits: Sequence[Tensor], gate: Tensor) -> Tensor:
    """``sum_b gate[:, b] * logits[b]``: the ensemble of ``B`` branches' ``(N, K)`` logits, ``gate`` ``(N, B)``."""
    if gate.dim() != 2 or gate.shape[1] != len(logits):
        raise ValueError(f"gated_ensemble: gate of shape {tuple(gate.shape)} for {len(logits)} branches")
    stacked = torch.stack([f32(z) for z in logits], dim=1)  # (N, B, K)
    return (f32(gate).unsqueeze(2) * stacked).sum(1)


one_kl_loss = SoftTarget("one_kl_loss", "ONE", 3.0, kl=True, t_squared=True, eps=1e-7, doc="""\
``one_kl_loss(logits, teacher, T=3.0, *, eps=1e-7)``: ``T^2 / N * sum_n sum_k t (log t - log_softmax(z / T))`` with
``t = softmax(teacher / T) + eps``.

``teacher`` is detached. ``eps = 0`` gives ``T^2 KL(softmax(teacher/T) || softmax(z/T))`` (written as ONE's code
does: the log of the softmax).""")


def sigmoid_rampup(epoch: float, length: float) -> float:
    """``exp(-5 (1 - min(epoch, length) / length)^2)``; 1 for ``length <= 0`` (the code's ``sigmoid_rampup``)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(epoch), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * phase * phase)
