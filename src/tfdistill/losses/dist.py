"""DIST: knowledge distillation from a stronger teacher (Huang, You, Wang, Qian & Xu, NeurIPS 2022).

DIST replaces KD's exact match of probabilities by a match of *relations*, measured by the Pearson distance
``d_p(u, v) = 1 - pearson(u, v)`` between the student's and the teacher's predictions ``Y = softmax(z / tau)``
(``(B, K)``, a row per sample, a column per class):

* :func:`inter_class_relation` -- ``1 - mean_i pearson(Y_s[i, :], Y_t[i, :])``: each sample's ranking of the classes;
* :func:`intra_class_relation` -- ``1 - mean_k pearson(Y_s[:, k], Y_t[:, k])``: each class's ranking of the samples
  of the batch;
* :func:`dist_terms` -- ``(tau^2 * inter, tau^2 * intra)``; :func:`dist_loss` -- ``beta * inter + gamma * intra``
  of those (the authors' ``DIST(beta, gamma, tau)``).

As the authors' code (``hunto/image_classification_sota`` ``lib/models/losses/dist_kd.py``, the classification
code of ``hunto/DIST_KD``), reproduced exactly: the Pearson correlation is the cosine similarity of the centred
vectors with ``eps = 1e-8`` added to the product of the norms (the paper writes the correlation without it), and
both terms are multiplied by ``tau^2``.

Coupling: the inter-class term is per-sample (a mean of per-sample distances), the intra-class term is
**batch-coupled** -- each class's correlation runs over the samples of the batch, so its value depends on how a
batch is split (under gradient accumulation, DIST is not the full batch's loss).

Computed in float32 (float64 stays float64) with autocast off; the teacher's logits are treated as constants.
Checked against the authors' ``DIST`` on fixed inputs (``tests/golden/dist.json``).
"""

from __future__ import annotations

from torch import Tensor

from ..precision import autocast, f32

__all__ = ["pearson_correlation", "inter_class_relation", "intra_class_relation", "dist_terms", "dist_loss"]

EPS = 1e-8
"""Added to the product of the norms in the correlation (the authors' ``eps``)."""


def pearson_correlation(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Row-wise Pearson correlation of two ``(R, D)`` tensors: the cosine similarity of the rows minus their means,
    ``(a' . b') / (|a'| |b'| + eps)``; ``(R,)``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """``1 - mean_i pearson(y_s[i], y_t[i])`` over the rows (samples) of ``(B, K)`` predictions."""
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """``1 - mean_k pearson(y_s[:, k], y_t[:, k])`` over the columns (classes): relations across the batch."""
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def dist_terms(logits_s: Tensor, logits_t: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(tau^2 * inter, tau^2 * intra)`` of ``softmax(z / tau)`` of student and teacher logits ``(B, K)``."""
    if tau <= 0:
        raise ValueError(f"DIST temperature must be > 0, got {tau}")
    if logits_s.shape != logits_t.shape or logits_s.dim() != 2:
        raise ValueError(f"dist_terms expects two (B, K) logit tensors of the same shape, "
                         f"got {tuple(logits_s.shape)} and {tuple(logits_t.shape)}")
    with autocast("off", logits_s.device):
        y_s = (f32(logits_s) / tau).softmax(dim=1)
        y_t = (f32(logits_t).detach() / tau).softmax(dim=1)
        t2 = tau * tau
        return t2 * inter_class_relation(y_s, y_t), t2 * intra_class_relation(y_s, y_t)


def dist_loss(logits_s: Tensor, logits_t: Tensor, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> Tensor:
    """``beta * tau^2 * inter + gamma * tau^2 * intra`` (see :func:`dist_terms`), the authors' ``DIST`` loss."""
    inter, intra = dist_terms(logits_s, logits_t, tau)
    return beta * inter + gamma * intra
