"""NST as a method: MMD with a polynomial kernel between channel maps of every tapped stage
(see :mod:`..losses.nst`).

Stage mapping: CRD applies NST to ``feat[1:-1]``, the stage outputs -- all of our tapped stages by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ..errors import ConfigError
from ..losses.nst import nst_loss
from .registry import register_distiller, register_preset
from ._features import FEATURE_USES, paired_stages
from .base import BuildContext, Distiller, StepOutputs


@dataclass
class NSTParams:
    weight: float = 50.0
    """Weight of the NST term (CRD benchmark: 50)."""
    degree: int = 2
    """Degree d of the polynomial kernel (x.y + c)^d (paper and CRD: 2)."""
    c: float = 0.0
    """Offset c of the polynomial kernel (paper and CRD: 0)."""
    stages: Optional[list[int]] = None
    """Indices of the tapped stages to use (default: all, as CRD's feat[1:-1])."""


@register_distiller("nst")
class NST(Distiller):
    """Neuron selectivity transfer, summed over paired stages."""
    coupling = "per-sample"

    Params = NSTParams
    uses = FEATURE_USES

    def __init__(self, params: NSTParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.degree < 1:
            raise ConfigError(f"bad value for config key 'method.nst.degree': {params.degree}; must be >= 1")
        self.stages = paired_stages(ctx, "nst", params.stages)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        fs = [out.feats_s[i] for i in self.stages]
        ft = [out.feats_t[i] for i in self.stages]
        return {"nst": p.weight * nst_loss(fs, ft, p.degree, p.c)}


register_preset("nst", ["nst"], {"nst": {"weight": 50.0}},
                summary="neuron selectivity transfer (Huang & Wang 2017), polynomial kernel, weight 50 as CRD",
                paper='Huang & Wang: Like What You Like: Knowledge Distill via Neuron Selectivity Transfer '
                      '(arXiv:1707.01219, 2017)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
