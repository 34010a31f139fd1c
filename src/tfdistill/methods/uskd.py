"""USKD as a method (see :mod:`..losses.uskd`): cross-entropy plus the customised target term, the Zipf-ranked
non-target term and a weak classifier's smoothed-label term.

The weak classifier is a method module: ``nn.Linear(C, K)`` on the global average of the stage *before* the last
of the student's tapped stages (the authors' ``fea_mid = neck(fea_s[-2])``, their backbones giving the last two
stages, ``out_indices=(2, 3)``; ``channel=256`` for ResNet18). It is trained with the student, checkpointed with the
method state, counted in ``summary.json`` (``method_info.aux_params``) and never part of the exported student.

Presets (the authors' configs, ``configs/distillers/``): ``uskd`` -- CIFAR-100 (``res18_sd_cifar.py``: alpha 0.1,
beta 0.1, mu 0.1); ``uskd_imagenet`` -- ImageNet (``res18_sd_img.py`` and the others: alpha 1, beta 0.1, mu 0.005).
``method.uskd.rank_from=paper`` ranks by probabilities instead of the code's log-probabilities (see the losses'
module docs). Batch-coupled: the target term's soft label subtracts the batch mean of ``s_t^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.uskd import RANK_FROM, uskd_loss
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses

PAPER = ("Yang, Zeng, Yuan & Li, From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach "
         "with Normalized Loss and Customized Soft Labels, ICCV 2023")


@dataclass
class USKDParams:
    alpha: float = 0.1
    """Weight of the customised target term (authors: 0.1 on CIFAR-100, 1 on ImageNet)."""
    beta: float = 0.1
    """Weight of the Zipf non-target term (authors: 0.1)."""
    mu: float = 0.1
    """Weight of the weak classifier's term (authors: 0.1 on CIFAR-100, 0.005 on ImageNet)."""
    rank_from: str = "code"
    """code (authors' code: rank by log-probabilities of the final prediction) | paper (by probabilities)."""


@register_distiller("uskd")
class USKD(Distiller):
    """Unified self-KD: customised soft target, Zipf non-target labels from a weak classifier and the prediction."""
    coupling = "batch-coupled"  # the soft target subtracts the batch mean of s_t^2

    Params = USKDParams
    uses = Uses(student_feats=True)

    def __init__(self, params: USKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if min(params.alpha, params.beta, params.mu) < 0:
            raise ConfigError(f"method.uskd needs alpha, beta and mu >= 0, got alpha={params.alpha}, "
                              f"beta={params.beta}, mu={params.mu}")
        if params.rank_from not in RANK_FROM:
            raise ConfigError(f"bad value for config key 'method.uskd.rank_from': {params.rank_from!r}; "
                              f"valid: {', '.join(RANK_FROM)}")
        info = ctx.student
        if info is None or len(info.names) < 2:
            got = info.names if info is not None else []
            raise ConfigError(f"uskd needs at least two tapped stages (its weak classifier reads the one before "
                              f"the last), got {got}; set model.taps to a list of at least two module names")
        if ctx.num_classes < 2:
            raise ConfigError(f"uskd needs at least 2 classes, got {ctx.num_classes}")
        self.weak = nn.Linear(int(info.shapes[-2][0]), ctx.num_classes)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        weak = self.weak(F.adaptive_avg_pool2d(out.feats_s[-2], 1).flatten(1))
        return uskd_loss(out.logits_s, weak, out.targets, p.alpha, p.beta, p.mu, p.rank_from)


register_preset("uskd", ["uskd"], {"uskd": {"alpha": 0.1, "beta": 0.1, "mu": 0.1}},
                summary="USKD (Yang 2023): customised target + Zipf non-target labels + weak classifier, "
                "alpha 0.1, beta 0.1, mu 0.1 (authors' CIFAR-100)",
                family="self-distillation", paper=PAPER, reference="yzd-v/cls_KD")
register_preset("uskd_imagenet", ["uskd"], {"uskd": {"alpha": 1.0, "beta": 0.1, "mu": 0.005}},
                summary="USKD, the authors' ImageNet setting (alpha 1, beta 0.1, mu 0.005)",
                family="self-distillation", paper=PAPER, reference="yzd-v/cls_KD")


def _register_tfd_combination() -> None:
    from . import tfd  # noqa: F401  (the tfd preset first)
    from .registry import resolve_preset

    base = resolve_preset("tfd+uskd")  # the automatic composition: CE 1, TFD's and USKD's (CIFAR) defaults
    register_preset("tfd+uskd", base.components, base.defaults,
                    summary="TFD + USKD (CE 1, TFD alpha 5e-3 / beta 4e-4, USKD's CIFAR-100 weights)",
                    family="self-distillation", paper=PAPER, reference="yzd-v/cls_KD")


_register_tfd_combination()
