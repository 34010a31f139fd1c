"""VID as a method: variational information distillation on every tapped stage (see :mod:`..losses.vid`).

Stage mapping: CRD applies VID to ``feat[1:-1]``, the stage outputs -- all of our tapped stages by default -- with
one regressor and one per-channel variance vector per stage pair (method extras, trained with the student).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.vid import VIDHead
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, feature_infos, paired_stages
from .base import BuildContext, Distiller, StepOutputs


@dataclass
class VIDParams:
    weight: float = 1.0
    """Weight of the VID term (CRD benchmark: 1)."""
    init_var: float = 5.0
    """Initial predicted variance (authors' code and CRD: 5)."""
    eps: float = 1e-5
    """Variance floor (authors' code and CRD: 1e-5)."""
    stages: Optional[list[int]] = None
    """Indices of the tapped stages to use (default: all, as CRD's feat[1:-1])."""


@register_distiller("vid")
class VID(Distiller):
    """Variational information distillation: Gaussian NLL of teacher maps given regressed student maps."""
    coupling = "per-sample"

    Params = VIDParams
    uses = FEATURE_USES

    def __init__(self, params: VIDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.eps <= 0 or params.init_var <= params.eps:
            raise ConfigError("method.vid needs eps > 0 and init_var > eps")
        s, t = feature_infos(ctx, "vid")
        self.stages = paired_stages(ctx, "vid", params.stages)
        self.heads = nn.ModuleList(
            VIDHead(s.shapes[i][0], t.shapes[i][0], t.shapes[i][0], params.init_var, params.eps)
            for i in self.stages)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        losses = [head(out.feats_s[i], out.feats_t[i]) for head, i in zip(self.heads, self.stages)]
        return {"vid": self.params.weight * torch.stack(losses).sum()}


register_preset("vid", ["vid"], {"vid": {"weight": 1.0}},
                summary="variational information distillation (Ahn et al. 2019) on every stage, weight 1 as CRD",
                paper='Ahn et al.: Variational Information Distillation for Knowledge Transfer (CVPR 2019)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
