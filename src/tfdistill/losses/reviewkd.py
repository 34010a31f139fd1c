"""ReviewKD: distilling knowledge via knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021).

The student's features of every level are fused with those of all deeper levels ("review"), then compared with
the teacher's feature of the same level:

* :class:`ABF` -- attention-based fusion of one level: a 1x1 conv + BatchNorm maps the student's map to
  ``mid`` channels; except at the deepest level, the fused map of the level below it (the *residual*) is upsampled
  (nearest) to this map's size, and a 1x1 conv + sigmoid on both gives two spatial attention maps that weight their
  sum; the result is resized (nearest) to the teacher's map size, and a 3x3 conv + BatchNorm maps it to the
  teacher's channels. It returns ``(output, residual)``.
* :class:`ReviewFusion` -- one ABF per level, run deepest first: the levels are the student's tapped stages and its
  pooled embedding as a ``1x1`` map (the authors' ``feat[1:-1] + [pooled]``), ``mid = min(512, C_emb)`` channels.
* :func:`hcl_loss` -- the hierarchical context loss: per level, the MSE of the maps plus the MSEs of their
  adaptive average pools to ``4x4, 2x2, 1x1`` (only those smaller than the map), weighted ``1/2, 1/4, 1/8`` and the
  sum divided by the total weight; summed over levels.

As the authors' code (``dvlab-research/ReviewKD`` ``CIFAR-100/model/reviewkd.py``, the same in
``megvii-research/mdistiller``), reproduced exactly: the ABF's convolutions start from
``kaiming_uniform_(a=1)``; a pyramid level ``l`` is skipped when ``l >= H`` (the map's height), and the weights
halve per level *used*; ``mid`` is capped at 512 (mdistiller reads a ``MAX_MID_CHANNEL`` setting but never uses
it). Its modules run in training mode, BatchNorm with batch statistics, like the student.

Departures of our pipeline (not of the loss): the authors distil into the teacher's *pre-activation* stage outputs
(``preact=True``) and on ImageNet from the student's too; our feature taps give the stages' outputs
(post-activation, see :mod:`tfdistill.features`). The loss and the fusion are the same functions of the features.

The loss is computed in float32 (float64 stays float64) with autocast off. Per-sample (MSEs are means over samples;
the ABFs' BatchNorm couples the batch as the student's own BatchNorm does). Checked against the authors'
``ReviewKD``/``ABF`` and ``hcl`` on fixed inputs and parameters (``tests/golden/reviewkd.json``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import autocast, f32

__all__ = ["ABF", "ReviewFusion", "hcl_loss", "hcl_map_loss", "HCL_LEVELS"]

HCL_LEVELS = (4, 2, 1)
"""Pyramid sizes of the hierarchical context loss (a level is used when smaller than the map's height)."""
HCL_DECAY = 0.5
"""Each pyramid level used weighs this times the previous one (the full map weighs 1)."""
UPSAMPLE_MODE = "nearest"
"""How the residual is resized to a level's map, and the fused map to the teacher's (the authors': nearest)."""


def fuse(x: Tensor, y: Tensor, att: Tensor) -> Tensor:
    """``x * att[:, 0] + y * att[:, 1]``: the ABF's attention-weighted sum of the level's map and the residual."""
    return x * att[:, 0:1] + y * att[:, 1:2]


class ABF(nn.Module):
    """Attention-based fusion of one level (see the module docs); ``forward(x, residual=None, out_size)``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, stride=1, padding=1,
                                             bias=False), nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(mid_channels * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse
                         else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("this ABF fuses a residual from the deeper level; none was given")
            residual = F.interpolate(residual, tuple(x.shape[-2:]), mode=UPSAMPLE_MODE)
            x = fuse(x, residual, self.att_conv(torch.cat([x, residual], dim=1)))
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, tuple(out_size), mode=UPSAMPLE_MODE)
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """The student's levels fused deepest first by one :class:`ABF` per level.

    Args:
        student: ``(C, H, W)`` of each student level, shallow to deep (tapped stages, then the embedding as
            ``(C_emb, 1, 1)``).
        teacher: ``(C, H, W)`` of the teacher's level it is compared with, same order and length.
        max_mid_channels: cap of the fusion width ``mid = min(max_mid_channels, C_emb)`` (authors: 512).

    ``forward(feats)`` takes the student's level maps (shallow to deep) and returns the outputs in the same order,
    each of its teacher level's shape. ``abfs[i]`` is level ``i`` (the authors keep the reverse order).
    """

    def __init__(self, student: Sequence[Sequence[int]], teacher: Sequence[Sequence[int]],
                 max_mid_channels: int = 512) -> None:
        super().__init__()
        if len(student) != len(teacher) or len(student) < 1:
            raise ValueError(f"ReviewKD pairs student and teacher levels one to one; got {len(student)} student "
                             f"and {len(teacher)} teacher levels")
        mid = min(int(max_mid_channels), int(student[-1][0]))
        n = len(student)
        self.out_sizes = [tuple(int(v) for v in t[1:]) for t in teacher]
        self.abfs = nn.ModuleList(ABF(int(s[0]), mid, int(t[0]), i < n - 1)
                                  for i, (s, t) in enumerate(zip(student, teacher)))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.abfs):
            raise ValueError(f"ReviewFusion expects {len(self.abfs)} student levels, got {len(feats)}")
        results: list[Tensor] = []
        residual = None
        for i in reversed(range(len(feats))):
            out, residual = self.abfs[i](feats[i], residual, self.out_sizes[i])
            results.insert(0, out)
        return results


def hcl_map_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """The hierarchical context loss of one pair of ``(N, C, H, W)`` maps (see the module docs)."""
    if fs.shape != ft.shape:
        raise ValueError(f"hcl compares maps of one shape, got {tuple(fs.shape)} and {tuple(ft.shape)}")
    h = fs.shape[2]
    with autocast("off", fs.device):  # float32 (float64 stays): a mixed-dtype mse has no backward on some torches
        fs, ft = f32(fs), f32(ft)
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= h:
                continue
            cnt *= HCL_DECAY
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (size, size)),
                                     F.adaptive_avg_pool2d(ft, (size, size)), reduction="mean") * cnt
            tot += cnt
        return loss / tot


def hcl_loss(fstudent: Sequence[Tensor], fteacher: Sequence[Tensor]) -> Tensor:
    """Sum over levels of :func:`hcl_map_loss` (the authors' ``hcl``); the teacher's maps are detached."""
    if len(fstudent) != len(fteacher):
        raise ValueError(f"hcl_loss pairs levels one to one, got {len(fstudent)} and {len(fteacher)}")
    total = fstudent[0].new_zeros(())
    for fs, ft in zip(fstudent, fteacher):
        total = total + hcl_map_loss(fs, ft.detach())
    return total
