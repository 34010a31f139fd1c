"""FSP as a method: flow-of-solution-procedure matrices between consecutive tapped stages
(see :mod:`..losses.fsp`).

Stage mapping: CRD pairs consecutive entries of ``feat[:-1] = [stem, stage1, stage2, stage3]``; we pair consecutive
tapped stages (no stem), so a three-stage network gives two FSP matrices instead of three. Student and teacher
need the same number of tapped stages with the same channel counts (e.g. resnet32x4 -> resnet8x4).

Training protocol
-----------------
CRD (like the paper) uses FSP only to *initialise* the student: 30 epochs on the unweighted FSP loss training the
student's feature layers, then cross-entropy only (its main-stage FSP term is zero, so its ``-b 50`` has no
effect). Two presets:

* ``fsp`` -- the FSP term with weight 50 in the main stage, no pre-stage.
* ``fsp_crd`` -- CRD's protocol exactly: a 30-epoch FSP pre-stage, then no FSP term (``weight = 0``).

The pre-stage trains the student (``BuildContext.student_model``; only the parameters the FSP loss reaches get
gradients) -- see :func:`.fitnet.prestage_student`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ..errors import ConfigError
from ..losses.fsp import fsp_loss
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, feature_infos, paired_stages
from .base import BuildContext, Distiller, PreStage, StepOutputs
from .fitnet import prestage_student


@dataclass
class FSPParams:
    weight: float = 50.0
    """Weight of the FSP term in the main stage (CRD's -b 50; CRD's main stage effectively uses 0, see fsp_crd)."""
    init_epochs: int = 0
    """Epochs of an initialisation pre-stage on the FSP loss (CRD: 30; 0 = none)."""
    init_weight: float = 1.0
    """Weight of the FSP loss in the pre-stage (CRD: 1)."""
    init_lr: Optional[float] = None
    """Learning rate of the pre-stage (None: the run's optim.lr, as CRD)."""


@register_distiller("fsp")
class FSP(Distiller):
    """FSP-matrix distillation between consecutive stages (equal channel counts required)."""
    coupling = "per-sample"

    Params = FSPParams
    uses = FEATURE_USES

    def __init__(self, params: FSPParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.init_epochs < 0:
            raise ConfigError("method.fsp.init_epochs must be >= 0")
        s, t = feature_infos(ctx, "fsp")
        stages = paired_stages(ctx, "fsp")
        if len(stages) < 2:
            raise ConfigError(f"fsp needs at least two tapped stages, got {s.names}")
        bad = [i for i in stages if s.shapes[i][0] != t.shapes[i][0]]
        if bad:
            raise ConfigError(
                "fsp needs equal student and teacher channel counts at every tapped stage; they differ at stages "
                f"{bad} (student {[sh[0] for sh in s.shapes]}, teacher {[sh[0] for sh in t.shapes]})")
        self.__dict__["_student"] = prestage_student(ctx, "fsp") if params.init_epochs > 0 else None

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if not self.params.weight:
            return {}
        return {"fsp": self.params.weight * fsp_loss(out.feats_s, out.feats_t)}

    def pre_stages(self) -> list[PreStage]:
        p = self.params
        if p.init_epochs <= 0:
            return []
        return [PreStage("fsp_init", p.init_epochs, [self._student],
                         lambda out: {"fsp_init": p.init_weight * fsp_loss(out.feats_s, out.feats_t)}, lr=p.init_lr)]


register_preset("fsp", ["fsp"], {"fsp": {"weight": 50.0}},
                summary="FSP matrices (Yim et al. 2017) between consecutive stages, weight 50",
                paper='Yim et al.: A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and '
                      'Transfer Learning (CVPR 2017)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
register_preset("fsp_crd", ["fsp"], {"fsp": {"weight": 0.0, "init_epochs": 30}},
                summary="FSP exactly as the CRD benchmark: 30-epoch FSP initialisation, then cross-entropy only",
                paper='Yim et al.: A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and '
                      'Transfer Learning (CVPR 2017), as run by the CRD benchmark',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
