"""Progressive self-knowledge distillation (Kim, Ji, Yoon & Hwang, "Self-Knowledge Distillation with Progressive
Refinement of Targets", ICCV 2021): the soft targets and the soft-target cross-entropy.

* :func:`pskd_alpha` -- ``alpha_t = alpha_T * (t + 1) / T`` for the 0-based epoch ``t`` of ``T`` (the authors'
  ``main.py``; the paper writes ``alpha_t = alpha_T * t / T`` with 1-based ``t``: the same numbers).
* :func:`pskd_targets` -- ``(1 - alpha_t) * onehot(y) + alpha_t * p_prev``, where ``p_prev`` is the model's own
  softmax prediction on that sample in the previous epoch (a row of a per-sample memory).
* :func:`soft_cross_entropy` -- ``mean_n sum_k -q[n,k] log softmax(z)[n,k]``, the authors'
  ``Custom_CrossEntropy_PSKD`` (``loss/pskd_loss.py``), checked on fixed inputs in ``tests/test_selfkd.py``.

Computed in float32 under autocast; no Python loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import SoftTarget

__all__ = ["pskd_alpha", "pskd_targets", "soft_cross_entropy"]


def pskd_alpha(epoch: int, epochs: int, alpha_T: float = 0.8) -> float:
    """``alpha_T * (epoch + 1) / epochs`` for the 0-based ``epoch`` (never below 0)."""
    return max(0.0, alpha_T * (epoch + 1) / epochs)


def pskd_targets(targets: Tensor, prev: Tensor, alpha: Tensor | float) -> Tensor:
    """``(1 - alpha) * onehot(targets) + alpha * prev``; ``prev`` is ``(N, K)``, the result float32."""
    onehot = F.one_hot(targets, prev.shape[1]).to(torch.float32)
    return (1 - alpha) * onehot + alpha * prev.float()


soft_cross_entropy = SoftTarget("soft_cross_entropy", "PS-KD", target_logits=False, doc="""\
``soft_cross_entropy(logits, soft_targets)``: ``mean_n sum_k -q[n,k] * log_softmax(logits)[n,k]`` (the soft targets
``q`` are constants).""")
