"""RKD as a method: distance- and angle-wise relational distillation on the penultimate features
(see :mod:`..losses.rkd`).

Feature mapping: CRD applies RKD to ``feat[-1]``, the pooled features entering the classifier -- our ``emb_s`` /
``emb_t``. Weights as CRD: overall 1, distance 25, angle 50; the two parts are logged as separate terms
(``rkd_distance`` = weight * 25 * L_D, ``rkd_angle`` = weight * 50 * L_A).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses.rkd import rkd_angle_loss, rkd_distance_loss
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs
from ._features import EMBEDDING_USES


@dataclass
class RKDParams:
    weight: float = 1.0
    """Overall weight of the RKD terms (CRD benchmark: 1)."""
    distance_weight: float = 25.0
    """lambda_D of the distance-wise loss (paper and CRD: 25)."""
    angle_weight: float = 50.0
    """lambda_A of the angle-wise loss (paper and CRD: 50)."""


@register_distiller("rkd")
class RKD(Distiller):
    """Relational KD: match normalised pairwise distances and triplet angles of the batch's embeddings."""
    coupling = "batch-coupled"  # distances and angles between samples of the batch

    Params = RKDParams
    uses = EMBEDDING_USES

    def __init__(self, params: RKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        terms = {}
        if p.distance_weight:
            terms["rkd_distance"] = (p.weight * p.distance_weight) * rkd_distance_loss(out.emb_s, out.emb_t)
        if p.angle_weight:
            terms["rkd_angle"] = (p.weight * p.angle_weight) * rkd_angle_loss(out.emb_s, out.emb_t)
        return terms


register_preset("rkd", ["rkd"], {"rkd": {"weight": 1.0}},
                summary="relational KD (Park et al. 2019), distance 25 + angle 50, weight 1 as CRD",
                paper='Park et al.: Relational Knowledge Distillation (CVPR 2019)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
