"""CC as a method: correlation congruence on linear embeddings of the penultimate features
(see :mod:`..losses.cc`).

Feature mapping: as CRD, each network's pooled features (``feat[-1]``; our ``emb_s`` / ``emb_t``) go through a
trainable linear embedding to ``feat_dim = 128`` dimensions (both embeddings are method extras, trained with the
student; the teacher network itself stays frozen), and CC compares the embeddings.

Two presets:

* ``cc`` -- ``kernel = "rbf"``, the paper's Gaussian RBF with the P-order Taylor expansion (gamma 0.4, P = 2),
  weight 0.02. Note: the 0.02 was tuned for CRD's formula; the RBF loss is orders of magnitude smaller, so at this
  weight CC barely acts (raise ``method.cc.weight`` to use the RBF form in earnest).
* ``cc_crd`` -- ``kernel = "crd"``, the formula CRD's benchmark actually ran (see
  :func:`..losses.cc.cc_loss_crd`), weight 0.02: reproduces CRD's CC row.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.cc import cc_loss, cc_loss_crd
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs
from ._features import EMBEDDING_USES

KERNELS = ("rbf", "crd")


@dataclass
class CCParams:
    weight: float = 0.02
    """Weight of the CC term (CRD benchmark: 0.02)."""
    kernel: str = "rbf"
    """rbf (paper: Gaussian RBF, P-order Taylor expansion) | crd (the formula of CRD's benchmark code)."""
    gamma: float = 0.4
    """gamma of the Gaussian RBF kernel exp(-gamma ||x - y||^2)."""
    order: int = 2
    """P, the order of the Taylor expansion."""
    feat_dim: int = 128
    """Dimension of the linear embeddings of both networks (CRD: 128)."""


@register_distiller("cc")
class CC(Distiller):
    """Correlation congruence between linear embeddings of the student's and teacher's penultimate features."""
    coupling = "batch-coupled"  # correlation between samples of the batch

    Params = CCParams
    uses = EMBEDDING_USES

    def __init__(self, params: CCParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.kernel not in KERNELS:
            raise ConfigError(f"bad value for config key 'method.cc.kernel': {params.kernel!r}; "
                              f"valid: {', '.join(KERNELS)}")
        if params.gamma <= 0 or params.order < 0 or params.feat_dim < 1:
            raise ConfigError("method.cc needs gamma > 0, order >= 0 and feat_dim >= 1")
        if ctx.student is None or ctx.teacher is None:
            raise ConfigError("method component 'cc' needs the embeddings of the student and a teacher")
        self.embed_s = nn.Linear(ctx.student.embedding_dim, params.feat_dim)
        self.embed_t = nn.Linear(ctx.teacher.embedding_dim, params.feat_dim)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        e_s = self.embed_s(out.emb_s.flatten(1))
        e_t = self.embed_t(out.emb_t.flatten(1))
        loss = cc_loss(e_s, e_t, p.gamma, p.order) if p.kernel == "rbf" else cc_loss_crd(e_s, e_t)
        return {"cc": p.weight * loss}


register_preset("cc", ["cc"], {"cc": {"weight": 0.02, "kernel": "rbf"}},
                summary="correlation congruence (Peng et al. 2019), Gaussian RBF (2nd-order Taylor), weight 0.02",
                paper='Peng et al.: Correlation Congruence for Knowledge Distillation (ICCV 2019)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
register_preset("cc_crd", ["cc"], {"cc": {"weight": 0.02, "kernel": "crd"}},
                summary="CC exactly as the CRD benchmark's code (its correlation formula), weight 0.02",
                paper='Peng et al.: Correlation Congruence for Knowledge Distillation (ICCV 2019), as run by the '
                      'CRD benchmark',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
