"""The softened-target term, written once for every loss family that has one (KD, CS-KD, FRSKD via ``kd_loss``;
BYOT's and PS-KD's soft cross-entropy; ONE's KL), in float32 with autocast off.

* :func:`soft_target_loss` -- the one definition of the arithmetic.
* :class:`SoftTarget` -- a family's public loss: :func:`soft_target_loss` with the family's settings (temperature,
  KL or cross-entropy, ``T^2``, ONE's ``eps``) bound, and its argument checks. ``kd.kd_loss``,
  ``byot.soft_cross_entropy``, ``pskd.soft_cross_entropy`` and ``one.one_kl_loss`` are instances, not definitions.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast, f32

__all__ = ["soft_target_loss", "SoftTarget"]


def soft_target_loss(logits: Tensor, target: Tensor, T: float = 1.0, *, kl: bool = False, target_logits: bool = True,
                     eps: float | None = None, t_squared: bool = False) -> Tensor:
    """The one softened-target term: student ``log p = log_softmax(logits / T)`` against constant targets ``q``.

    ``q = softmax(target / T)`` of (detached) logits when ``target_logits``, else ``target`` holds the
    probabilities. ``kl``: ``KL(q || p)`` summed over the batch and divided by ``N`` (KD's batchmean), else the
    cross-entropy ``-mean_n sum_k q log p`` (BYOT, PS-KD). ``eps`` (ONE's code): the KL of ``t = q + eps``
    written as ``t (log t - log p)`` (``eps = 0.0`` included; ``None``: ``q`` and ``log q`` from one
    ``log_softmax``). ``t_squared``: times ``T^2`` (KD, ONE), so gradient magnitudes do not depend on ``T``.
    Written out rather than ``F.kl_div``: the same arithmetic, and a vmap batching rule (several models trained as
    one batched model). Computed in float32 (float64 stays float64) with autocast off; ``T = 1`` divides by
    nothing."""
    with autocast("off", logits.device):
        z = f32(logits)
        if T != 1:
            z = z / T
        log_p = F.log_softmax(z, dim=1)
        if kl and eps is None and target_logits:
            log_q = F.log_softmax(f32(target).detach() / T, dim=1)
            loss = (log_q.exp() * (log_q - log_p)).sum() / logits.shape[0]
        else:
            q = F.softmax(f32(target).detach() / T, dim=1) if target_logits else target.detach().to(z.dtype)
            if not kl:
                return -(q * log_p).sum(1).mean()
            if eps is not None:
                q = q + eps
            loss = (q * (q.log() - log_p)).sum() / logits.shape[0]
        return loss * (T * T) if t_squared else loss


class SoftTarget:
    """A family's softened-target loss ``(logits, target, T=<family's>) -> scalar``: :func:`soft_target_loss` with
    the family's settings bound, after checking the arguments (``T > 0``, two ``(N, K)`` tensors of one shape).

    Args:
        name: the public name (in error messages).
        family: the method's name in the temperature error ("KD temperature must be > 0").
        T: the default temperature (a call may pass another, positionally or as ``T=``).
        kl, target_logits, t_squared: see :func:`soft_target_loss`.
        eps: the default ``eps`` (a call may pass another as ``eps=``); ``None``: the plain KL.
        doc: the docstring of the instance.
    """

    def __init__(self, name: str, family: str, T: float = 1.0, *,
                 kl: bool = False, target_logits: bool = True, t_squared: bool = False, eps: float | None = None,
                 doc: str = "") -> None:
        self.__name__ = self.__qualname__ = name
        self.family, self.T, self.kl, self.target_logits, self.t_squared, self.eps = (
            family, T, kl, target_logits, t_squared, eps)
        self.__doc__ = doc or self.__doc__

    def __call__(self, logits: Tensor, target: Tensor, T: float | None = None, *,
                 eps: float | None = None) -> Tensor:
        T = self.T if T is None else T
        if T <= 0:
            raise ValueError(f"{self.family} temperature must be > 0, got {T}")
        if logits.shape != target.shape or logits.dim() != 2:
            what = "logit tensors" if self.target_logits else "tensors (logits, soft targets)"
            raise ValueError(f"{self.__name__} expects two (N, K) {what} of the same shape, "
                             f"got {tuple(logits.shape)} and {tuple(target.shape)}")
        return soft_target_loss(logits, target, T, kl=self.kl, target_logits=self.target_logits,
                                eps=self.eps if eps is None else eps, t_squared=self.t_squared)

    def __repr__(self) -> str:
        return (f"SoftTarget({self.__name__}: T={self.T}, kl={self.kl}, target_logits={self.target_logits}, "
                f"t_squared={self.t_squared}, eps={self.eps})")
