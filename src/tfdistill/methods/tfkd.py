"""Tf-KD (Yuan et al., CVPR 2020): ``tfkd_reg`` (manually designed virtual teacher) and ``tfkd_self`` (KD from a
pretrained copy of the student).

``tfkd_reg`` -- CE weight ``1 - alpha`` plus ``alpha * multiplier * tfkd_reg_loss`` (:mod:`..losses.tfkd`), the
authors' code's form. Defaults are their CIFAR-100 ResNet18 setting
(``experiments/base_experiments/base_resnet18/params.json``: ``reg_alpha = 0.1``, ``reg_temperature = 20``,
``multiplier = 100``; ``correct_prob = 0.99`` from ``my_loss_function.py``). Their MobileNetV2 setting
(``base_mobilenetv2/params.json``) is ``alpha = 0.95, T = 40, multiplier = 1`` (set ``method.ce_weight=0.05
method.tfkd_reg.weight=0.95 method.tfkd_reg.T=40 method.tfkd_reg.multiplier=1``).

``tfkd_self`` -- KD (the ``kd`` loss and parameters, section ``method.tfkd_self``) from a teacher of the *same
architecture* as the student, trained first with plain CE (``teacher.model`` = ``model.name``,
``teacher.checkpoint`` = that run's ``best.pt``); another architecture is refused (that is ``kd``). Weights: the
authors' CIFAR-100 ResNet18 self-teacher setting
(``experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json``: ``alpha = 0.95``,
``temperature = 6``, ``multiplier = 50``). Their ``loss_kd_self`` is ``(1 - alpha) CE + alpha * T^2 *
multiplier * KLDivLoss()``, whose default reduction divides by ``B * K``; our ``kd_loss`` divides by ``B``, so the
same loss is KD weight ``alpha * multiplier / K = 0.95 * 50 / 100 = 0.475`` for CIFAR-100's ``K = 100`` (scale
``method.tfkd_self.weight`` by ``100 / K`` for another class count), CE weight 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.tfkd import tfkd_reg_loss
from .registry import register_distiller, register_preset
from .kd import KD
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class TfKDRegParams:
    weight: float = 0.1
    """alpha of Tf-KD_reg (authors' CIFAR-100 ResNet18: 0.1; the CE weight is 1 - alpha)."""
    T: float = 20.0
    """Temperature applied to the designed distribution (authors: 20)."""
    correct_prob: float = 0.99
    """Probability of the correct class in the designed distribution (authors' code: 0.99)."""
    multiplier: float = 100.0
    """The code's ``params.multiplier`` on the element-mean KL (authors' CIFAR-100 ResNet18: 100)."""


@register_distiller("tfkd_reg")
class TfKDReg(Distiller):
    """KL from a manually designed virtual teacher (no teacher network)."""
    coupling = "per-sample"

    Params = TfKDRegParams
    uses = Uses()

    def __init__(self, params: TfKDRegParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.T <= 0 or not 0 < params.correct_prob <= 1 or params.weight < 0 or params.multiplier < 0:
            raise ConfigError("method.tfkd_reg needs T > 0, 0 < correct_prob <= 1, weight >= 0 and multiplier >= 0")
        if ctx.num_classes < 2:
            raise ConfigError(f"tfkd_reg needs at least 2 classes, got {ctx.num_classes}")

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        loss = tfkd_reg_loss(out.logits_s, out.targets, p.T, p.correct_prob)
        return {"tfkd_reg": (p.weight * p.multiplier) * loss}


def _architecture(model: nn.Module) -> tuple:
    return type(model).__name__, tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


@register_distiller("tfkd_self")
class TfKDSelf(KD):
    """KD whose teacher is a pretrained copy of the student's architecture (Tf-KD_self)."""
    coupling = "per-sample"

    def __init__(self, params, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        s, t = ctx.student_model, ctx.teacher_model
        if s is not None and t is not None and _architecture(s) != _architecture(t):
            raise ConfigError(f"tfkd_self needs a teacher of the student's own architecture (a CE-trained copy of "
                              f"it), got teacher {type(t).__name__} with other parameters than student "
                              f"{type(s).__name__}; set teacher.model to the student's model.name, or use kd")


register_preset("tfkd_reg", ["tfkd_reg"],
                {"ce_weight": 0.9, "tfkd_reg": {"weight": 0.1, "T": 20.0, "correct_prob": 0.99, "multiplier": 100.0}},
                summary="Tf-KD_reg (Yuan 2020): virtual teacher, alpha 0.1, T 20, a 0.99 (authors' code)",
                family="teacher-free",
                paper='Yuan et al.: Revisiting Knowledge Distillation via Label Smoothing Regularization (CVPR 2020)',
                reference='yuanli2333/Teacher-free-Knowledge-Distillation (tests/test_selfkd.py)')
register_preset("tfkd_self", ["tfkd_self"], {"ce_weight": 0.05, "tfkd_self": {"weight": 0.475, "T": 6.0}},
                summary="Tf-KD_self (Yuan 2020): KD from a pretrained copy of the student, T 6 (authors' code)",
                family="self-distillation",
                paper='Yuan et al.: Revisiting Knowledge Distillation via Label Smoothing Regularization (CVPR 2020)',
                reference='yuanli2333/Teacher-free-Knowledge-Distillation (tests/test_selfkd.py)')
