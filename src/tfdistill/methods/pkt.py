"""PKT as a method: probabilistic knowledge transfer on the penultimate features (see :mod:`..losses.pkt`).

Feature mapping: CRD applies PKT to ``feat[-1]``, the pooled features that enter the classifier -- our
``emb_s`` / ``emb_t`` (the input of the last ``nn.Linear``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses.pkt import pkt_loss
from .registry import register_distiller, register_preset
from ._features import EMBEDDING_USES
from .base import BuildContext, Distiller, StepOutputs

@dataclass
class PKTParams:
    weight: float = 30000.0
    """Weight of the PKT term (CRD benchmark: 30000)."""
    eps: float = 1e-7
    """Stabiliser of the normalisation and the logarithm (authors' code: 1e-7)."""


@register_distiller("pkt")
class PKT(Distiller):
    """Match the batch's cosine-similarity probability distributions of student and teacher embeddings."""
    coupling = "batch-coupled"  # probability distribution over the batch's samples

    Params = PKTParams
    uses = EMBEDDING_USES

    def __init__(self, params: PKTParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        return {"pkt": self.params.weight * pkt_loss(out.emb_s, out.emb_t, self.params.eps)}


register_preset("pkt", ["pkt"], {"pkt": {"weight": 30000.0}},
                summary="probabilistic knowledge transfer (Passalis & Tefas 2018), weight 30000 as CRD",
                paper='Passalis & Tefas: Learning Deep Representations with Probabilistic Knowledge Transfer (ECCV '
                      '2018)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
