"""SP as a method: similarity-preserving loss on the last tapped stage (see :mod:`..losses.sp`).

Stage mapping: CRD applies SP to ``feat[-2]``, the output of the last stage (before pooling); ``stage = -1`` (our
deepest tapped stage) is the same tensor. The student and teacher may have different numbers of stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses.sp import sp_pair_loss
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, stage_index
from .base import BuildContext, Distiller, StepOutputs


@dataclass
class SPParams:
    weight: float = 3000.0
    """Weight of the SP term (CRD benchmark: 3000)."""
    stage: int = -1
    """Tapped stage to use in both networks (default: the last, as CRD's feat[-2])."""


@register_distiller("sp")
class SP(Distiller):
    """Similarity-preserving distillation: match the batch similarity matrices of one stage."""
    coupling = "batch-coupled"  # similarity of every pair of samples in the batch

    Params = SPParams
    uses = FEATURE_USES

    def __init__(self, params: SPParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        self.i_s, self.i_t = stage_index(ctx, "sp", "stage", params.stage)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        return {"sp": self.params.weight * sp_pair_loss(out.feats_s[self.i_s], out.feats_t[self.i_t])}


register_preset("sp", ["sp"], {"sp": {"weight": 3000.0}},
                summary="similarity-preserving KD (Tung & Mori 2019) on the last stage, weight 3000 as CRD",
                paper='Tung & Mori: Similarity-Preserving Knowledge Distillation (ICCV 2019)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
