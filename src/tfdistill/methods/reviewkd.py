"""ReviewKD as a method: the student's stage features and pooled embedding, fused deepest first by attention-based
fusion modules (ABF), regress the teacher's with the hierarchical context loss (see :mod:`..losses.reviewkd`).

Levels: every tapped stage of student and teacher (paired one to one, as the other stage-pair methods) and the
pooled embeddings as ``1x1`` maps -- the authors' ``feat[1:-1] + [pooled]``. The ABFs (:class:`.ReviewFusion`) are
this component's trainable modules: the engine trains and checkpoints them with the student (through
``Method.extra_parameters`` and the component state, like FitNets' regressor); they are sized here from the
tapped shapes, so no per-architecture channel/shape table is needed (the authors list one per model pair).

Warm-up: the authors' CIFAR-100 script scales the term by ``min(1, epoch / 20)`` with *0-based* epochs, so the
first epoch trains without it (``warmup_offset = 0``, our default); mdistiller's copy counts epochs from 1
(``min(1, (e + 1) / 20)``; ``warmup_offset = 1``). ImageNet: no warm-up.

Presets:

* ``reviewkd`` -- CIFAR-100: weight 5 (``script/reviewKD.sh`` for most pairs; 8 for ShuffleNetV2, 0.6 for
  ResNet56 -> ResNet20, 1 for ResNet110 -> ResNet32), warm-up 20 epochs, CE 1.
* ``reviewkd_imagenet`` -- ImageNet ResNet34 -> ResNet18 (``imagenet_amp.py``): weight 1, no warm-up, CE 1
  (mdistiller's ResNet50 -> MobileNetV1: weight 8).

Per-sample (BatchNorm in the ABFs aside, as in FitNets' regressor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses.reviewkd import ReviewFusion, hcl_loss
from ._features import feature_infos, paired_stages
from .base import BuildContext, Distiller, StepOutputs, Uses
from .registry import register_distiller, register_preset

PAPER = "Chen, Liu, Zhao & Jia, Distilling Knowledge via Knowledge Review, CVPR 2021"
REFERENCE = "dvlab-research/ReviewKD"


@dataclass
class ReviewKDParams:
    weight: float = 5.0
    """Weight of the hierarchical context loss (authors: 5 on CIFAR-100 for most pairs, 1 on ImageNet)."""
    warmup: int = 20
    """Linear warm-up: in epoch e (0-based) the term is scaled by min(1, (e + warmup_offset) / warmup); 0: none
    (authors: 20 on CIFAR-100, none on ImageNet)."""
    warmup_offset: int = 0
    """0: the authors' CIFAR-100 script (the first epoch has no ReviewKD term); 1: mdistiller's epochs from 1."""
    max_mid_channels: int = 512
    """Cap of the ABFs' fusion width, min(cap, student embedding channels) (authors: 512)."""


@register_distiller("reviewkd")
class ReviewKD(Distiller):
    """Knowledge review: ABF fusion of the student's levels, hierarchical context loss to the teacher's."""
    coupling = "per-sample"

    Params = ReviewKDParams
    uses = Uses(teacher=True, student_feats=True, teacher_feats=True, embedding=True)

    def __init__(self, params: ReviewKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.warmup < 0 or params.warmup_offset not in (0, 1) or params.max_mid_channels < 1:
            raise ConfigError("method.reviewkd needs warmup >= 0, warmup_offset 0 or 1 and max_mid_channels >= 1, "
                              f"got {params.warmup}, {params.warmup_offset}, {params.max_mid_channels}")
        s, t = feature_infos(ctx, "reviewkd")
        paired_stages(ctx, "reviewkd")  # one to one, or a clear error
        if not s.embedding_dim or not t.embedding_dim:
            raise ConfigError("method component 'reviewkd' needs the pooled embeddings of student and teacher "
                              "(the features that enter the classifier)")
        student = [*s.shapes, (s.embedding_dim, 1, 1)]
        teacher = [*t.shapes, (t.embedding_dim, 1, 1)]
        self.fusion = ReviewFusion(student, teacher, params.max_mid_channels)
        self.register_buffer("ramp", torch.ones(()), persistent=False)
        self.on_epoch_start(0)

    def on_epoch_start(self, epoch: int) -> None:
        p = self.params
        self.ramp.fill_(min(1.0, (epoch + p.warmup_offset) / p.warmup) if p.warmup > 0 else 1.0)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.emb_s is None or out.emb_t is None or not out.feats_t:
            raise RuntimeError("reviewkd needs the tapped features and embeddings of student and teacher")
        results = self.fusion([*out.feats_s, out.emb_s[:, :, None, None]])
        loss = hcl_loss(results, [*out.feats_t, out.emb_t[:, :, None, None]])
        return {"reviewkd": self.ramp * (self.params.weight * loss)}


register_preset("reviewkd", ["reviewkd"], {"ce_weight": 1.0, "reviewkd": {"weight": 5.0, "warmup": 20}},
                summary="knowledge review (Chen et al. 2021): ABF fusion of the student's stages + hierarchical "
                        "context loss, weight 5, 20-epoch warm-up, CE 1 as the authors' CIFAR-100 script",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
register_preset("reviewkd_imagenet", ["reviewkd"], {"ce_weight": 1.0, "reviewkd": {"weight": 1.0, "warmup": 0}},
                summary="ReviewKD as the authors' ImageNet ResNet34 -> ResNet18 run: weight 1, no warm-up, CE 1",
                family="teacher-based", paper=PAPER, reference=REFERENCE)
