"""AT as a method: attention transfer on every tapped stage (see :mod:`..losses.at`).

Also holds the small helpers the stage-pair methods (AT, NST, VID, AB, FSP, SP, FitNets, FT) share to check and
select the student/teacher stages they pair.

Stage mapping: CRD applies AT to ``feat[1:-1]`` -- the outputs of the three stages of a CIFAR ResNet / WRN
(``feat[0]`` is the stem, ``feat[-1]`` the pooled embedding). Our "auto" taps are exactly those stage outputs, so
AT uses all tapped stages by default. Our taps are the stage containers' outputs (post-block, post-activation),
the same tensors as CRD's ``feat[1..3]`` for ResNets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import Tensor

from ..errors import ConfigError
from ..losses.at import at_loss
from . import register_distiller, register_preset
from .base import BuildContext, Distiller, FeatureInfo, StepOutputs, Uses

FEATURE_USES = Uses(teacher=True, student_feats=True, teacher_feats=True)


def feature_infos(ctx: BuildContext, method: str) -> tuple[FeatureInfo, FeatureInfo]:
    """The student's and teacher's tapped-feature info, or a ConfigError naming the method."""
    if ctx.student is None or ctx.teacher is None:
        raise ConfigError(f"method component {method!r} needs the tapped features of both the student and a "
                          "teacher (set teacher.model and teacher.checkpoint)")
    return ctx.student, ctx.teacher


def paired_stages(ctx: BuildContext, method: str, stages: Optional[Sequence[int]] = None) -> list[int]:
    """Indices (non-negative) of the stage pairs a method uses: all tapped stages, or ``stages``.

    Student and teacher must have the same number of tapped stages (CRD pairs ``feat[i]`` with ``feat[i]``).
    """
    s, t = feature_infos(ctx, method)
    if len(s.names) != len(t.names):
        raise ConfigError(
            f"method component {method!r} pairs student and teacher stages one to one, but the student has "
            f"{len(s.names)} tapped stages {s.names} and the teacher {len(t.names)} {t.names}; set model.taps "
            f"and/or teacher.taps to equally long lists of module names")
    n = len(s.names)
    if stages is None:
        return list(range(n))
    picked = [int(i) for i in stages]
    if not picked or any(not -n <= i < n for i in picked):
        raise ConfigError(f"method.{method}.stages {list(stages)} out of range for {n} tapped stages")
    out = [i % n for i in picked]
    if len(set(out)) != len(out):
        raise ConfigError(f"method.{method}.stages {list(stages)} lists a stage twice")
    return out


def stage_index(ctx: BuildContext, method: str, key: str, index: int) -> tuple[int, int]:
    """A single (possibly negative) stage index resolved in the student's and the teacher's tapped stages.

    A negative index counts from each network's deepest stage (``-1``: the last stage of both).
    """
    s, t = feature_infos(ctx, method)
    n = min(len(s.names), len(t.names))
    if not -n <= index < n:
        raise ConfigError(f"method.{method}.{key}={index} out of range for the tapped stages (student "
                          f"{s.names}, teacher {t.names})")
    return index % len(s.names), index % len(t.names)


@dataclass
class ATParams:
    weight: float = 1000.0
    """Weight of the AT term (CRD benchmark: 1000)."""
    p: float = 2.0
    """Exponent of the attention map (paper and CRD: 2)."""
    stages: Optional[list[int]] = None
    """Indices of the tapped stages to use (default: all, as CRD's feat[1:-1])."""


@register_distiller("at")
class AT(Distiller):
    """Attention transfer between paired stage outputs, summed over stages."""

    Params = ATParams
    uses = FEATURE_USES

    def __init__(self, params: ATParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.p <= 0:
            raise ConfigError(f"bad value for config key 'method.at.p': {params.p}; must be > 0")
        self.stages = paired_stages(ctx, "at", params.stages)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        fs = [out.feats_s[i] for i in self.stages]
        ft = [out.feats_t[i] for i in self.stages]
        return {"at": self.params.weight * at_loss(fs, ft, self.params.p)}


register_preset("at", ["at"], {"at": {"weight": 1000.0}},
                summary="attention transfer (Zagoruyko & Komodakis 2017), p=2, weight 1000 as the CRD benchmark")
