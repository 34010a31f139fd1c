"""Knowledge distillation on logits (Hinton, Vinyals & Dean, 2015).

* :func:`kd_loss` -- ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, averaged over the batch.

Where the sources differ
------------------------
* The paper writes a cross-entropy with soft targets; its gradient equals the KL divergence's (the teacher's
  entropy is a constant). Like the CRD benchmark (``DistillKL``) we use the KL divergence, summed over classes
  and averaged over samples, times ``T^2`` so gradient magnitudes do not depend on ``T``.
* CRD's benchmark uses ``T = 4`` with weights CE 0.1 / KD 0.9 (the ``kd`` preset).

Computed in float32 even under autocast; the teacher's logits are treated as constants.
"""

from __future__ import annotations

from torch import Tensor

from ._common import SoftTarget

__all__ = ["kd_loss", "per_position"]


def per_position(logits: Tensor) -> Tensor:
    """Logits of a dense prediction ``(N, K, H, W)`` as rows ``(N*H*W, K)``, one per position (so :func:`kd_loss`
    is the per-pixel KD of structured-KD papers, averaged over pixels); ``(N, K)`` logits are returned as they are."""
    if logits.dim() <= 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


kd_loss = SoftTarget("kd_loss", "KD", 4.0, kl=True, t_squared=True, doc="""\
Temperature-scaled KL divergence between teacher and student predictions, ``kd_loss(logits_s, logits_t, T=4.0)``.

Args:
    logits_s: student logits ``(N, K)``.
    logits_t: teacher logits ``(N, K)`` (detached here).
    T: temperature (> 0).

Returns:
    A scalar: ``T^2 / N * sum_n sum_k p_t[n,k] * (log p_t[n,k] - log p_s[n,k])`` with ``p = softmax(z / T)``.
""")
