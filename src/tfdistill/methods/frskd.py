"""FRSKD as a method: a BiFPN self-teacher over the student's stage maps teaches the student's logits and maps
(see :mod:`..losses.frskd`).

The self-teacher reads every tapped stage map (the authors use all of ResNet's stages) and is a method module:
trained with the student, checkpointed with the method state, counted in ``summary.json``
(``method_info.aux_params``), never part of the exported student.

Loss (the authors' ``classification/utils.py``, CIFAR-100 settings of their README): ``CE(student)`` (the
method's ``ce`` term) ``+ CE(self-teacher)`` (``frskd_ce``) ``+ alpha * T^2 KL(self-teacher || student)``
(``frskd_kd``, ``alpha = 2``, ``T = 4``) ``+ beta * sum_i AT(f_i, refined_i)`` (``frskd_at``, ``beta = 100``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..losses.frskd import SelfTeacher, check_pyramid, frskd_feature_loss
from ..losses.kd import kd_loss
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class FRSKDParams:
    alpha: float = 2.0
    """Weight of the logit distillation (authors' CIFAR-100 command: --alpha 2)."""
    beta: float = 100.0
    """Weight of the attention feature distillation (authors' CIFAR-100 command: --beta 100)."""
    T: float = 4.0
    """Temperature of the logit distillation (code default: 4)."""
    teacher_ce_weight: float = 1.0
    """Weight of the self-teacher's cross-entropy (code: 1)."""
    width: int = 2
    """Channel multiplier of the refined maps (code default: 2)."""
    depth: list[int] = field(default_factory=lambda: [2, 2, 2])
    """Repetitions of the 3x3 blocks in the lateral / top-down / bottom-up convolutions (code default: 2 2 2)."""


@register_distiller("frskd")
class FRSKD(Distiller):
    """Feature refinement via self-knowledge distillation: a BiFPN self-teacher on the student's stage maps."""
    coupling = "per-sample"

    Params = FRSKDParams
    uses = Uses(student_feats=True)

    def __init__(self, params: FRSKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.alpha < 0 or params.beta < 0 or params.teacher_ce_weight < 0 or params.T <= 0:
            raise ConfigError(f"method.frskd needs alpha, beta, teacher_ce_weight >= 0 and T > 0, got alpha "
                              f"{params.alpha}, beta {params.beta}, teacher_ce_weight {params.teacher_ce_weight}, "
                              f"T {params.T}")
        if params.width < 1 or len(params.depth) != 3 or any(int(d) < 1 for d in params.depth):
            raise ConfigError(f"method.frskd needs width >= 1 and depth as three integers >= 1, "
                              f"got width {params.width}, depth {list(params.depth)}")
        info = ctx.student
        assert info is not None
        why = check_pyramid([(int(s[1]), int(s[2])) for s in info.shapes])
        if why:
            raise ConfigError(f"frskd's self-teacher cannot use the stages {info.names} "
                              f"(sizes {[f'{s[1]}x{s[2]}' for s in info.shapes]}): {why}; set model.taps")
        self.teacher = SelfTeacher([int(s[0]) for s in info.shapes], ctx.num_classes, int(params.width),
                                   [int(d) for d in params.depth])

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        refined, logits_t = self.teacher(out.feats_s)
        terms = {}
        if p.teacher_ce_weight:
            terms["frskd_ce"] = p.teacher_ce_weight * F.cross_entropy(logits_t.float(), out.targets)
        if p.alpha:
            terms["frskd_kd"] = p.alpha * kd_loss(out.logits_s, logits_t, p.T)
        if p.beta:
            terms["frskd_at"] = p.beta * frskd_feature_loss([F.relu(f) for f in out.feats_s], refined)
        return terms


register_preset("frskd", ["frskd"], family="self-distillation",
                summary="FRSKD, BiFPN self-teacher (Ji et al. 2021), "
                "alpha 2, beta 100, T 4 as the authors' CIFAR-100 command",
                paper='Ji et al.: Refine Myself by Teaching Myself: Feature Refinement via Self-Knowledge '
                      'Distillation (CVPR 2021)',
                reference='MingiJi/FRSKD (tests/test_selfdistill_aux.py; tests/golden/selfdistill_authors.py)')
