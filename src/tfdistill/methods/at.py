"""AT as a method: attention transfer on every tapped stage (see :mod:`..losses.at`).

Stage mapping: CRD applies AT to ``feat[1:-1]`` -- the outputs of the three stages of a CIFAR ResNet / WRN
(``feat[0]`` is the stem, ``feat[-1]`` the pooled embedding). Our "auto" taps are exactly those stage outputs, so
AT uses all tapped stages by default. Our taps are the stage containers' outputs (post-block, post-activation),
the same tensors as CRD's ``feat[1..3]`` for ResNets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ..errors import ConfigError
from ..losses.at import at_loss
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, paired_stages
from .base import BuildContext, Distiller, StepOutputs

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
    coupling = "per-sample"

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
                summary="attention transfer (Zagoruyko & Komodakis 2017), p=2, weight 1000 as the CRD benchmark",
                paper='Zagoruyko & Komodakis: Paying More Attention to Attention (ICLR 2017)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
