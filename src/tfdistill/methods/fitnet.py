"""FitNets as a method: a regressor maps the student's hint stage onto the teacher's (see :mod:`..losses.fitnet`).

Stage mapping: CRD's ``hint_layer`` indexes ``feat = [stem, stage1, stage2, stage3, embedding]``; its default 2 is
the output of the second stage. Our taps are the stages only, so CRD's ``hint_layer = k`` (k = 1..3) is our
``hint_stage = k - 1``; the default ``hint_stage = 1`` is CRD's default. (CRD's 0 -- the stem -- and 4 -- the
pooled embedding -- have no counterpart.)

Training: like CRD, one stage ``CE + 100 * hint`` from the start. The paper's first stage (the student up to the
hint layer and the regressor trained on the hint loss alone) is an optional pre-stage, ``init_epochs > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.fitnet import ConvRegressor, hint_loss
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, feature_infos, stage_index
from .base import BuildContext, Distiller, PreStage, StepOutputs


def prestage_student(ctx: BuildContext, method: str) -> nn.Module:
    """The student model, for pre-stages that train part of it (FitNets stage 1, AB and FSP initialisation).

    Taken from ``ctx.student_model``; the component keeps it outside its submodules (it must not be registered,
    checkpointed or wrapped twice). Handing the whole student to the pre-stage is intended: parameters the
    pre-stage loss does not reach (the classifier, later stages) get no gradient and SGD leaves them untouched.
    """
    model = ctx.student_model
    if model is None:
        raise ConfigError(f"the {method} pre-stage (method.{method}.init_epochs > 0) trains the student, but the "
                          f"build context has no student_model; set method.{method}.init_epochs=0")
    return model


@dataclass
class FitNetParams:
    weight: float = 100.0
    """Weight of the hint term (CRD benchmark: 100)."""
    hint_stage: int = 1
    """Index of the tapped stage used as hint / guided layer (CRD's hint_layer=2 is our 1; negative: from the end)."""
    init_epochs: int = 0
    """Epochs of the paper's stage 1 (student up to the hint stage + regressor on the hint loss); 0 = CRD's
    single-stage training."""
    init_lr: Optional[float] = None
    """Learning rate of that pre-stage (None: the run's optim.lr)."""


@register_distiller("fitnet")
class FitNet(Distiller):
    """FitNets hint loss: ``MSE(regressor(f_s[hint]), f_t[hint])``; the regressor is a method extra."""
    coupling = "per-sample"
    dense = True  # a hint on feature maps: a segmentation teacher's encoder stage works as a classifier's

    Params = FitNetParams
    uses = FEATURE_USES

    def __init__(self, params: FitNetParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        s, t = feature_infos(ctx, "fitnet")
        self.i_s, self.i_t = stage_index(ctx, "fitnet", "hint_stage", params.hint_stage)
        if params.init_epochs < 0:
            raise ConfigError("method.fitnet.init_epochs must be >= 0")
        try:
            self.regressor = ConvRegressor(s.shapes[self.i_s], t.shapes[self.i_t], relu=True)
        except ValueError as exc:
            raise ConfigError(f"fitnet hint stage {params.hint_stage}: {exc}") from None
        self.__dict__["_student"] = prestage_student(ctx, "fitnet") if params.init_epochs > 0 else None

    def hint(self, out: StepOutputs) -> Tensor:
        return hint_loss(self.regressor(out.feats_s[self.i_s]), out.feats_t[self.i_t])

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        return {"fitnet": self.params.weight * self.hint(out)}

    def pre_stages(self) -> list[PreStage]:
        p = self.params
        if p.init_epochs <= 0:
            return []
        modules = [self.regressor, self._student]
        return [PreStage("fitnet_hint", p.init_epochs, modules, lambda out: {"fitnet_hint": self.hint(out)},
                         lr=p.init_lr)]


register_preset("fitnet", ["fitnet"], {"fitnet": {"weight": 100.0}},
                summary="FitNets hints (Romero et al. 2015) on CRD's hint layer, weight 100 as the CRD benchmark",
                paper='Romero et al.: FitNets: Hints for Thin Deep Nets (ICLR 2015)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
