"""DIST as a method: Pearson-correlation relations between the student's and the teacher's predictions
(see :mod:`..losses.dist`).

Terms: ``dist_inter = weight * beta * tau^2 * inter`` and ``dist_intra = weight * gamma * tau^2 * intra``, beside
cross-entropy with weight 1 -- the authors' ``ori_loss_weight * CE + kd_loss_weight * DIST(beta, gamma, tau)``.

Presets (the authors' configs in ``hunto/image_classification_sota``, ``configs/strategies/distill/``):

* ``dist`` -- CIFAR-100 (``dist_cifar.yaml``, ``kd: dist_t4``): tau 4, beta = gamma = 1, weight 2, CE 1.
* ``dist_imagenet`` -- ImageNet (``resnet_dist.yaml``, ``kd: dist``): tau 1, beta = gamma = 1, weight 2, CE 1.

Coupling: **batch-coupled** (the intra-class term correlates each class's predictions across the batch; a batch of
one sample has no such relation: its intra-class term is the constant ``tau^2``, as in the authors' code).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..losses.dist import dist_terms
from .base import BuildContext, Distiller, StepOutputs, Uses
from .registry import register_distiller, register_preset

PAPER = "Huang, You, Wang, Qian & Xu, Knowledge Distillation from A Stronger Teacher, NeurIPS 2022"
REFERENCE = "hunto/DIST_KD"


@dataclass
class DISTParams:
    weight: float = 2.0
    """Weight of the DIST loss (the authors' kd_loss_weight: 2)."""
    beta: float = 1.0
    """Weight of the inter-class relation term inside DIST (authors: 1)."""
    gamma: float = 1.0
    """Weight of the intra-class relation term inside DIST (authors: 1)."""
    tau: float = 4.0
    """Softmax temperature; both terms are multiplied by tau^2 (authors: 4 on CIFAR-100, 1 on ImageNet)."""


@register_distiller("dist")
class DIST(Distiller):
    """DIST: inter-class (per sample) and intra-class (per class, across the batch) Pearson distances."""
    coupling = "batch-coupled"  # the intra-class term correlates each class's predictions across the batch

    Params = DISTParams
    uses = Uses(teacher=True)

    def __init__(self, params: DISTParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.tau <= 0:
            raise ConfigError(f"bad value for config key 'method.dist.tau': {params.tau}; must be > 0")

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.logits_t is None:
            raise RuntimeError("dist needs the teacher's logits (no teacher output in this step)")
        p = self.params
        inter, intra = dist_terms(out.logits_s, out.logits_t, p.tau)
        return {"dist_inter": p.weight * (p.beta * inter), "dist_intra": p.weight * (p.gamma * intra)}


register_preset("dist", ["dist"], {"ce_weight": 1.0, "dist": {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 4.0}},
                summary="DIST (Huang et al. 2022): inter- + intra-class Pearson relations, tau 4, weight 2, CE 1 as "
                        "the authors' CIFAR-100 config",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
register_preset("dist_imagenet", ["dist"],
                {"ce_weight": 1.0, "dist": {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 1.0}},
                summary="DIST as the authors' ImageNet config: tau 1, beta = gamma = 1, weight 2, CE 1",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
