"""KD as a method: temperature-scaled KL divergence to the frozen teacher's logits (see :mod:`..losses.kd`).

``eskd`` is the same loss from an early-stopped teacher (Cho & Hariharan, ICCV 2019): a recipe, not another
loss -- the teacher run keeps an early checkpoint with ``engine.save_epochs=[E]`` (``epoch_<E>.pt``) and the
student loads it as ``teacher.checkpoint``; see ``configs/imagenet/resnet18_eskd.yaml`` for how to pick ``E``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses.kd import kd_loss, per_position
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class KDParams:
    weight: float = 0.9
    """Weight of the KD term (CRD benchmark: 0.9 with CE 0.1; 1.0 when combined with CRD)."""
    T: float = 4.0
    """Softmax temperature (CRD benchmark: 4)."""
    ramp_epochs: int = 0
    """Ramp the KD weight in linearly over this many epochs (0: constant; the released TFD script ramps KD with
    TFD over 20). In epoch e (0-based) the weight is scaled by min(1, (e + 1) / ramp_epochs)."""


@register_distiller("kd")
class KD(Distiller):
    """Hinton et al.'s knowledge distillation on logits; needs only the teacher's logits."""
    coupling = "per-sample"
    dense = True  # per pixel on dense logits (:func:`~tfdistill.losses.kd.per_position`), averaged over pixels

    Params = KDParams
    uses = Uses(teacher=True)

    def __init__(self, params: KDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.T <= 0:
            raise ConfigError(f"bad value for config key 'method.kd.T': {params.T}; must be > 0")
        if params.ramp_epochs < 0:
            raise ConfigError(f"bad value for config key 'method.kd.ramp_epochs': {params.ramp_epochs}; must be >= 0")
        self.register_buffer("ramp", torch.ones(()), persistent=False)

    def on_epoch_start(self, epoch: int) -> None:
        r = self.params.ramp_epochs
        self.ramp.fill_(min(1.0, (epoch + 1) / r) if r > 0 else 1.0)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.logits_t is None:
            raise RuntimeError("kd needs the teacher's logits (no teacher output in this step)")
        loss = self.params.weight * kd_loss(per_position(out.logits_s), per_position(out.logits_t), self.params.T)
        return {"kd": loss * self.ramp if self.params.ramp_epochs > 0 else loss}


register_preset("kd", ["kd"], {"ce_weight": 0.1, "kd": {"weight": 0.9, "T": 4.0}},
                summary="knowledge distillation (Hinton 2015), T=4, CE 0.1 / KD 0.9 as the CRD benchmark",
                paper='Hinton, Vinyals & Dean: Distilling the Knowledge in a Neural Network (arXiv:1503.02531, 2015)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
register_preset("eskd", ["kd"], {"ce_weight": 0.1, "kd": {"weight": 0.9, "T": 4.0}},
                summary="ESKD (Cho & Hariharan 2019): KD from an early-stopped teacher checkpoint (the recipe "
                        "picks it: train the teacher with engine.save_epochs=[E])",
                paper='Cho & Hariharan: On the Efficacy of Knowledge Distillation (ICCV 2019)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py) (the kd component)')
