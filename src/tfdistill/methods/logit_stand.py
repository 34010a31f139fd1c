"""Logit standardization as a method: KD between Z-scored logits (see :mod:`..losses.logit_stand`).

The authors (``sunshangquan/logit-standardization-KD``) apply logit standardization as a pre-process of existing
logit losses, switched on by ``--logit-stand`` with ``--base-temp`` and ``--kd-weight``. Here it is:

* the ``logit_stand`` component -- their KD with the pre-process: the term ``logit_stand = weight * T^2 *
  KL(softmax(Z(z_t) / T) || softmax(Z(z_s) / T))``;
* DKD's option ``method.dkd.logit_stand`` (preset ``dkd_logit_stand``, :mod:`.dkd`) -- their DKD with it.

Presets (the authors' README commands and configs):

* ``logit_stand`` -- CIFAR-100 (``--logit-stand --base-temp 2 --kd-weight 9`` on their KD config): T 2, weight 9,
  CE 0.1 (their KD default). The authors pick T in {2, 3} and the weight per teacher/student pair (logged in
  their ``logs/``); set ``method.logit_stand.T`` / ``weight``.
* ``logit_stand_imagenet`` -- ImageNet ResNet34 -> ResNet18 (the same flags on ``configs/imagenet/r34_r18/kd.yaml``):
  T 2, weight 9, CE 1.

``method.logit_stand.std``: ``sample`` (the code's ``torch.std``, default) or ``population`` (the paper's
standard deviation); see :mod:`..losses.logit_stand` for this departure. Per-sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..losses.logit_stand import STD_MODES, logit_stand_kd_loss
from .base import BuildContext, Distiller, StepOutputs, Uses
from .registry import register_distiller, register_preset

PAPER = "Sun, Ren, Li, Wang & Cao, Logit Standardization in Knowledge Distillation, CVPR 2024"
REFERENCE = "sunshangquan/logit-standardization-KD"


@dataclass
class LogitStandParams:
    weight: float = 9.0
    """Weight of the KD term on standardized logits (the authors' --kd-weight: 9)."""
    T: float = 2.0
    """Base temperature applied to the Z-scored logits (the authors' --base-temp: 2)."""
    std: str = "sample"
    """sample (torch.std, divides by K - 1: the authors' code) | population (divides by K: the paper)."""


@register_distiller("logit_stand")
class LogitStand(Distiller):
    """KD between the Z-scored logits of student and teacher, with a base temperature."""
    coupling = "per-sample"

    Params = LogitStandParams
    uses = Uses(teacher=True)

    def __init__(self, params: LogitStandParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.T <= 0:
            raise ConfigError(f"bad value for config key 'method.logit_stand.T': {params.T}; must be > 0")
        if params.std not in STD_MODES:
            raise ConfigError(f"bad value for config key 'method.logit_stand.std': {params.std!r}; "
                              f"valid: {', '.join(STD_MODES)}")
        if ctx.num_classes < 2:
            raise ConfigError("logit_stand standardizes logits over the classes: it needs at least 2 classes")

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.logits_t is None:
            raise RuntimeError("logit_stand needs the teacher's logits (no teacher output in this step)")
        p = self.params
        return {"logit_stand": p.weight * logit_stand_kd_loss(out.logits_s, out.logits_t, p.T, p.std)}


register_preset("logit_stand", ["logit_stand"], {"ce_weight": 0.1, "logit_stand": {"weight": 9.0, "T": 2.0}},
                summary="KD on Z-score standardized logits (Sun et al. 2024): base T 2, weight 9, CE 0.1 as the "
                        "authors' CIFAR-100 command",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
register_preset("logit_stand_imagenet", ["logit_stand"],
                {"ce_weight": 1.0, "logit_stand": {"weight": 9.0, "T": 2.0}},
                summary="logit-standardized KD as the authors' ImageNet ResNet34 -> ResNet18 command: base T 2, "
                        "weight 9, CE 1",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
