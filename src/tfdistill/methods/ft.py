"""FT as a method: factor transfer with a pre-trained paraphraser and a translator (see :mod:`..losses.ft`).

Stage mapping: CRD applies FT to ``feat[-2]``, the output of the last stage; ``stage = -1`` is the same tensor.

Training protocol (as CRD)
--------------------------
1. Pre-stage ``ft_paraphraser`` (``init_epochs = 30``, learning rate ``init_lr = 0.01``): the paraphraser alone
   learns to reconstruct the teacher's map (MSE). CRD uses 0.01 for ResNet/WRN students and the run's rate for
   the others (0.01 for MobileNet/ShuffleNet students, 0.05 for VGG); ``init_lr=null`` uses the run's rate.
2. Main stage: ``CE + 200 * FT(translator(f_s), paraphraser.encode(f_t))``. The paraphraser is frozen: it runs
   without gradient and, from the first main epoch on (:meth:`FT.frozen_in_main`), its parameters have
   ``requires_grad = False``. The translator is trained with the student. (The paraphraser has no BatchNorm or
   dropout, so its train/eval mode does not matter.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.ft import Paraphraser, Translator, ft_loss, paraphraser_loss
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, feature_infos, stage_index
from .base import BuildContext, Distiller, PreStage, StepOutputs


@dataclass
class FTParams:
    weight: float = 200.0
    """Weight of the FT term (CRD benchmark: 200)."""
    p1: float = 2.0
    """Exponent of the factor map (CRD: 2)."""
    p2: float = 1.0
    """Exponent of the factor distance (CRD and paper: 1, i.e. l1)."""
    rate: float = 0.5
    """Paraphrase rate k: factor channels = k * teacher channels (CRD: 0.5)."""
    stage: int = -1
    """Tapped stage used in both networks (default: the last, as CRD's feat[-2])."""
    init_epochs: int = 30
    """Epochs of paraphraser pre-training (CRD: 30; 0 = keep the random paraphraser)."""
    init_lr: Optional[float] = 0.01
    """Learning rate of the paraphraser pre-training (CRD: 0.01 for ResNet/WRN students; null: the run's rate)."""


@register_distiller("ft")
class FT(Distiller):
    """Factor transfer: the translated student factor mimics the frozen paraphraser's teacher factor."""
    coupling = "per-sample"

    Params = FTParams
    uses = FEATURE_USES

    def __init__(self, params: FTParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if not 0 < params.rate <= 1 or params.init_epochs < 0 or params.p1 <= 0 or params.p2 <= 0:
            raise ConfigError("method.ft needs 0 < rate <= 1, p1 > 0, p2 > 0 and init_epochs >= 0")
        s, t = feature_infos(ctx, "ft")
        self.i_s, self.i_t = stage_index(ctx, "ft", "stage", params.stage)
        c_s, c_t = s.shapes[self.i_s][0], t.shapes[self.i_t][0]
        self.paraphraser = Paraphraser(c_t, params.rate)
        self.translator = Translator(c_s, c_t, params.rate)

    def frozen_in_main(self) -> list[nn.Module]:
        return [self.paraphraser]  # trained only in the pre-stage

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        factor_s = self.translator(out.feats_s[self.i_s])
        with torch.no_grad():
            factor_t = self.paraphraser.encode(out.feats_t[self.i_t])
        return {"ft": p.weight * ft_loss(factor_s, factor_t, p.p1, p.p2)}

    def pre_stages(self) -> list[PreStage]:
        p = self.params
        if p.init_epochs <= 0:
            return []

        def loss(out: StepOutputs) -> dict[str, Tensor]:
            f_t = out.feats_t[self.i_t]
            return {"ft_paraphraser": paraphraser_loss(self.paraphraser(f_t), f_t)}

        return [PreStage("ft_paraphraser", p.init_epochs, [self.paraphraser], loss, lr=p.init_lr)]


register_preset("ft", ["ft"], {"ft": {"weight": 200.0}},
                summary="factor transfer (Kim et al. 2018): paraphraser pre-training + translator, weight 200 as CRD",
                paper='Kim, Park & Kwak: Paraphrasing Complex Network: Network Compression via Factor Transfer '
                      '(NeurIPS 2018)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
