"""DKD as a method: decoupled knowledge distillation on the teacher's logits (see :mod:`..losses.dkd`).

Terms: ``dkd_tckd = ramp * alpha * TCKD`` and ``dkd_nckd = ramp * beta * NCKD`` (their sum is the authors'
``loss_kd``), beside cross-entropy with weight 1.

Warm-up: the authors scale the whole DKD term by ``min(epoch / warmup, 1)`` with 1-based epochs
(``mdistiller``'s trainer counts from 1), i.e. ``min((e + 1) / warmup, 1)`` in our 0-based epoch ``e``:
``warmup = 20`` on CIFAR-100 (1/20 of the term in the first epoch), ``1`` on ImageNet (no warm-up).

Presets (the authors' configs, ``megvii-research/mdistiller`` ``configs/``):

* ``dkd`` -- CIFAR-100: alpha 1, beta 8, T 4, warm-up 20 epochs, CE 1 (``res32x4_res8x4.yaml`` and the default;
  the authors use beta 2 for ResNet56/110 teachers and 6 for VGG13 / WRN-40-2 -> WRN-16-2, WRN-40-1 -- set
  ``method.dkd.beta``).
* ``dkd_imagenet`` -- ImageNet ResNet34 -> ResNet18: alpha 1, beta 0.5, T 1, warm-up 1 (ResNet50 -> MobileNetV1:
  beta 2).
* ``dkd_logit_stand`` -- DKD with logit standardization (Sun et al., CVPR 2024, as its authors run it:
  ``--logit-stand --base-temp 2 --kd-weight 9`` multiplies alpha and beta by 9 and sets T 2): alpha 9, beta 72, T 2,
  warm-up 20, CE 1, both networks' logits Z-scored first (:func:`..losses.logit_stand.standardize_logits`).

Both terms are per-sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses.dkd import dkd_terms
from ..losses.logit_stand import STD_MODES, standardize_logits
from ..precision import f32
from .base import BuildContext, Distiller, StepOutputs, Uses
from .registry import register_distiller, register_preset

PAPER = "Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022"
REFERENCE = "megvii-research/mdistiller"


@dataclass
class DKDParams:
    alpha: float = 1.0
    """Weight of TCKD, the target-class term (authors: 1)."""
    beta: float = 8.0
    """Weight of NCKD, the non-target-class term (authors: 8 on CIFAR-100, 0.5 on ImageNet ResNet34 -> ResNet18)."""
    T: float = 4.0
    """Softmax temperature (authors: 4 on CIFAR-100, 1 on ImageNet)."""
    warmup: int = 20
    """Linear warm-up of the DKD term: in epoch e (0-based) it is scaled by min(1, (e + 1) / warmup); 0 or 1: none
    (authors: 20 on CIFAR-100, 1 on ImageNet)."""
    logit_stand: bool = False
    """Z-score both networks' logits first (logit standardization, CVPR 2024; the authors' --logit-stand)."""
    stand_std: str = "sample"
    """With logit_stand: sample (torch.std, the authors' code) | population (the paper's sigma); see
    tfdistill.losses.logit_stand."""


@register_distiller("dkd")
class DKD(Distiller):
    """Decoupled KD: target-class (TCKD) and non-target-class (NCKD) KL terms with separate weights."""
    coupling = "per-sample"

    Params = DKDParams
    uses = Uses(teacher=True)

    def __init__(self, params: DKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.T <= 0:
            raise ConfigError(f"bad value for config key 'method.dkd.T': {params.T}; must be > 0")
        if params.warmup < 0:
            raise ConfigError(f"bad value for config key 'method.dkd.warmup': {params.warmup}; must be >= 0")
        if params.stand_std not in STD_MODES:
            raise ConfigError(f"bad value for config key 'method.dkd.stand_std': {params.stand_std!r}; "
                              f"valid: {', '.join(STD_MODES)}")
        self.register_buffer("ramp", torch.ones(()), persistent=False)

    def on_epoch_start(self, epoch: int) -> None:
        w = self.params.warmup
        self.ramp.fill_(min(1.0, (epoch + 1) / w) if w > 0 else 1.0)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.logits_t is None:
            raise RuntimeError("dkd needs the teacher's logits (no teacher output in this step)")
        p = self.params
        zs, zt = out.logits_s, out.logits_t
        if p.logit_stand:
            zs, zt = standardize_logits(f32(zs), p.stand_std), standardize_logits(f32(zt), p.stand_std)
        tckd, nckd = dkd_terms(zs, zt, out.targets, p.T)
        return {"dkd_tckd": self.ramp * (p.alpha * tckd), "dkd_nckd": self.ramp * (p.beta * nckd)}


register_preset("dkd", ["dkd"], {"ce_weight": 1.0, "dkd": {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20}},
                summary="decoupled KD (Zhao et al. 2022): TCKD alpha 1 + NCKD beta 8, T 4, 20-epoch warm-up, CE 1 "
                        "as the authors' CIFAR-100 config",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
register_preset("dkd_imagenet", ["dkd"],
                {"ce_weight": 1.0, "dkd": {"alpha": 1.0, "beta": 0.5, "T": 1.0, "warmup": 1}},
                summary="DKD as the authors' ImageNet ResNet34 -> ResNet18 config: alpha 1, beta 0.5, T 1, no "
                        "warm-up, CE 1",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
register_preset("dkd_logit_stand", ["dkd"],
                {"ce_weight": 1.0, "dkd": {"alpha": 9.0, "beta": 72.0, "T": 2.0, "warmup": 20, "logit_stand": True}},
                summary="DKD on Z-scored logits (logit standardization, Sun et al. 2024): alpha 9, beta 72, base T 2, "
                        "20-epoch warm-up, CE 1 as the authors' CIFAR-100 command",
                family="teacher-based",
                paper="Sun, Ren, Li, Wang & Cao, Logit Standardization in Knowledge Distillation, CVPR 2024 (on "
                      + PAPER + ")",
                reference="sunshangquan/logit-standardization-KD")
