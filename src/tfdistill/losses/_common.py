"""Helpers shared by the loss families: the softened-target term (KD, BYOT, PS-KD) in float32 with autocast off."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast, f32

__all__ = ["soft_target_loss"]


def soft_target_loss(logits: Tensor, target: Tensor, T: float = 1.0, *, target_logits: bool = True,
                     kl: bool = False) -> Tensor:
    """The one softened-target term: student ``log p = log_softmax(logits / T)`` against constant targets ``q``.

    ``q = softmax(target / T)`` of (detached) logits when ``target_logits``, else ``target`` holds the
    probabilities. ``kl``: ``KL(q || p)`` summed over the batch and divided by ``N`` (KD's batchmean, without its
    ``T^2``), else the cross-entropy ``-mean_n sum_k q log p`` (BYOT, PS-KD). Written out rather than
    ``F.kl_div``: the same arithmetic, and a vmap batching rule (several models trained as one batched model).
    Computed in float32 (float64 stays float64) with autocast off; ``T = 1`` divides by nothing."""
    with autocast("off", logits.device):
        z = f32(logits)
        if T != 1:
            z = z / T
        log_p = F.log_softmax(z, dim=1)
        if kl:
            log_q = F.log_softmax(f32(target).detach() / T, dim=1)
            return (log_q.exp() * (log_q - log_p)).sum() / logits.shape[0]
        q = F.softmax(f32(target).detach() / T, dim=1) if target_logits else target.detach().to(z.dtype)
        return -(q * log_p).sum(1).mean()
