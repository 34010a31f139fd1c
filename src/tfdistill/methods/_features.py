"""What the feature-based methods share: the ``Uses`` of stage-pair and embedding methods, and the checks that
pick the student and teacher stages a method pairs.

Stage-pair methods (AT, NST, VID, AB, FSP, SP, FitNets, FT) compare tapped stage outputs of student and teacher
(:data:`FEATURE_USES`, :func:`feature_infos`, :func:`paired_stages`, :func:`stage_index`); embedding methods (PKT,
RKD, CC, CRD) compare the penultimate features that enter the classifier (:data:`EMBEDDING_USES`).
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import ConfigError
from .base import BuildContext, FeatureInfo, Uses

__all__ = ["FEATURE_USES", "EMBEDDING_USES", "feature_infos", "paired_stages", "stage_index"]

EMBEDDING_USES = Uses(teacher=True, embedding=True)
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
