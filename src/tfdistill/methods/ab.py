"""AB as a method: activation-boundary distillation with connectors and an initialisation pre-stage
(see :mod:`..losses.ab`).

Stage mapping: CRD applies AB to ``feat[1:-1]``, the stage outputs (pre-activation in CRD, post-activation here;
see :mod:`..losses.ab` for why that is harmless for the teacher and why the connectors are always learned).

Training protocol
-----------------
CRD (following the paper) uses AB to *initialise* the student: for ``init_epochs = 30`` it trains the connectors
and the student's feature layers on the AB loss alone (unweighted sum over stages), then trains the student with
cross-entropy only -- its main-stage AB term is zero and the connectors are frozen, so CRD's ``-b 1`` has no effect
there. Two presets:

* ``ab`` -- the 30-epoch initialisation pre-stage *and* the AB term with weight 1 in the main stage.
* ``ab_crd`` -- CRD's protocol exactly: the pre-stage, then no AB term (``weight = 0``).

The pre-stage trains the connectors and the student (``BuildContext.student_model``; only the parameters the AB
loss reaches get gradients) -- see :func:`.fitnet.prestage_student`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.ab import ab_loss
from ..losses.fitnet import ConvRegressor
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, feature_infos, paired_stages
from .base import BuildContext, Distiller, PreStage, StepOutputs
from .fitnet import prestage_student


@dataclass
class ABParams:
    weight: float = 1.0
    """Weight of the AB term in the main stage (CRD's -b 1; CRD's main stage effectively uses 0, see ab_crd)."""
    margin: float = 1.0
    """Margin m of the alternative loss (paper and CRD: 1)."""
    init_epochs: int = 30
    """Epochs of the initialisation pre-stage on the AB loss (CRD: 30; 0 = none)."""
    init_weight: float = 1.0
    """Weight of the AB loss in the pre-stage (CRD: 1)."""
    init_lr: Optional[float] = None
    """Learning rate of the pre-stage (None: the run's optim.lr, as CRD)."""
    identity_connectors: bool = False
    """Use identity connectors where student and teacher maps have the same shape (CRD, on pre-activations);
    off by default because our taps are post-activation (see tfdistill.losses.ab)."""
    stages: Optional[list[int]] = None
    """Indices of the tapped stages to use (default: all, as CRD's feat[1:-1])."""


@register_distiller("ab")
class AB(Distiller):
    """Activation-boundary distillation: connectors map student stages onto the teacher's; squared-hinge loss."""
    coupling = "per-sample"

    Params = ABParams
    uses = FEATURE_USES

    def __init__(self, params: ABParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.margin <= 0 or params.init_epochs < 0:
            raise ConfigError("method.ab needs margin > 0 and init_epochs >= 0")
        s, t = feature_infos(ctx, "ab")
        self.stages = paired_stages(ctx, "ab", params.stages)
        connectors = []
        for i in self.stages:
            if params.identity_connectors and tuple(s.shapes[i]) == tuple(t.shapes[i]):
                connectors.append(nn.Identity())
                continue
            try:
                connectors.append(ConvRegressor(s.shapes[i], t.shapes[i], relu=False))
            except ValueError as exc:
                raise ConfigError(f"ab stage {i}: {exc}") from None
        self.connectors = nn.ModuleList(connectors)
        self.__dict__["_student"] = prestage_student(ctx, "ab") if params.init_epochs > 0 else None

    def ab(self, out: StepOutputs) -> Tensor:
        sources = [c(out.feats_s[i]) for c, i in zip(self.connectors, self.stages)]
        targets = [out.feats_t[i] for i in self.stages]
        return ab_loss(sources, targets, self.params.margin)

    def frozen_in_main(self) -> list[nn.Module]:
        # without a main-stage AB term (ab_crd) the connectors are trained by the pre-stage only
        return [] if self.params.weight else [self.connectors]

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if not self.params.weight:
            return {}
        return {"ab": self.params.weight * self.ab(out)}

    def pre_stages(self) -> list[PreStage]:
        p = self.params
        if p.init_epochs <= 0:
            return []
        modules = [self.connectors, self._student]
        return [PreStage("ab_init", p.init_epochs, modules, lambda out: {"ab_init": p.init_weight * self.ab(out)},
                         lr=p.init_lr)]


register_preset("ab", ["ab"], {"ab": {"weight": 1.0, "init_epochs": 30}},
                summary="activation boundaries (Heo et al. 2019): 30-epoch init pre-stage + AB term weight 1",
                paper='Heo et al.: Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden '
                      'Neurons (AAAI 2019)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
register_preset("ab_crd", ["ab"], {"ab": {"weight": 0.0, "init_epochs": 30}},
                summary="AB exactly as the CRD benchmark: 30-epoch AB initialisation, then cross-entropy only",
                paper='Heo et al.: Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden '
                      'Neurons (AAAI 2019), as run by the CRD benchmark',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
