"""BYOT as a method: shallow auxiliary classifiers on the student's stages, taught by its own deepest classifier
(see :mod:`..losses.byot`).

The deepest classifier is the student's own (its logits and its classifier input -- the pooled embedding -- are
the teacher signal and the feature target, both constants); every tapped stage but the last gets an
:class:`~tfdistill.losses.byot.AuxClassifier`. The auxiliary classifiers are method modules: trained with the
student, checkpointed with the method state, counted in ``summary.json`` (``method_info.aux_params``), never part
of the exported student.

Loss (the first author's ``train.py``): ``CE(deepest)`` (the method's ``ce`` term) ``+ (1 - a) sum_i CE(aux_i)``
(``byot_ce``) ``+ a sum_i softCE_T(aux_i, deepest)`` (``byot_kd``) ``+ l sum_{i hinted} ||adapt_i(f_i) - f_deepest||_2``
(``byot_feat``), with ``a = 0.3``, ``T = 3``, ``l = 0.03``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.byot import AuxClassifier, feature_hint_loss, soft_cross_entropy
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class BYOTParams:
    alpha: float = 0.3
    """Weight of the distillation term; the auxiliary CE gets 1 - alpha (code: loss_coefficient 0.3)."""
    feature_weight: float = 0.03
    """Weight of the feature term (code: feature_loss_coefficient 0.03)."""
    T: float = 3.0
    """Temperature of the distillation term (code: 3)."""
    hint_all: bool = False
    """Feature term on every auxiliary classifier; false = the code's (none on the one nearest the deepest)."""


def branch_channels(shapes: list[tuple[int, int, int]], i: int) -> list[int]:
    """Output channels of the stride-2 SepConvs that take stage ``i`` down to the last stage's resolution."""
    c, h, w = shapes[i]
    c_last, h_last, w_last = shapes[-1]
    by_size = {(s[1], s[2]): s[0] for s in shapes}
    out = []
    while (h, w) != (h_last, w_last):
        if h < h_last or w < w_last or h % 2 or w % 2:
            raise ValueError(f"stage {i} ({h}x{w}) does not reach the last stage's {h_last}x{w_last} by halving")
        h, w = h // 2, w // 2
        out.append(by_size.get((h, w), c_last))
    return out


@register_distiller("byot")
class BYOT(Distiller):
    """Be Your Own Teacher: auxiliary classifiers on the shallow stages, distilled from the deepest one."""
    coupling = "per-sample"

    Params = BYOTParams
    uses = Uses(student_feats=True, embedding=True)

    def __init__(self, params: BYOTParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if not 0 <= params.alpha <= 1 or params.feature_weight < 0 or params.T <= 0:
            raise ConfigError(f"method.byot needs 0 <= alpha <= 1, feature_weight >= 0 and T > 0, got alpha "
                              f"{params.alpha}, feature_weight {params.feature_weight}, T {params.T}")
        info = ctx.student
        if info is None or len(info.names) < 2 or not info.embedding_dim:
            got = info.names if info is not None else []
            raise ConfigError(f"byot needs at least two tapped stages and a linear classifier, got stages {got}; "
                              f"set model.taps to a list of at least two module names")
        shapes = [tuple(int(v) for v in s) for s in info.shapes]
        n = len(shapes) - 1
        self.hinted = list(range(n)) if params.hint_all else list(range(n - 1))
        if params.feature_weight == 0:
            self.hinted = []
        self.aux = nn.ModuleList()
        for i in range(n):
            try:
                chans = branch_channels(shapes, i)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ConfigError(f"byot cannot build an auxiliary classifier on {info.names[i]!r}: {exc}") from None
            target = info.embedding_dim if i in self.hinted else 0  # no adaptation layer that no term uses
            self.aux.append(AuxClassifier(shapes[i][0], chans, ctx.num_classes, target))

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        if out.emb_s is None:
            raise RuntimeError("byot needs the student's embedding (classifier input) in this step")
        res = [aux(f) for aux, f in zip(self.aux, out.feats_s)]
        terms = {}
        if p.alpha < 1:
            terms["byot_ce"] = (1 - p.alpha) * torch.stack([F.cross_entropy(z.float(), out.targets)
                                                            for z, _, _ in res]).sum()
        if p.alpha > 0:
            terms["byot_kd"] = p.alpha * torch.stack([soft_cross_entropy(z, out.logits_s, p.T)
                                                      for z, _, _ in res]).sum()
        if self.hinted:
            terms["byot_feat"] = p.feature_weight * torch.stack([feature_hint_loss(res[i][2], out.emb_s)
                                                                 for i in self.hinted]).sum()
        return terms


register_preset("byot", ["byot"], family="self-distillation",
                summary="BYOT, be your own teacher (Zhang et al. 2019), "
                "auxiliary classifiers, a 0.3, T 3, feature 0.03 as the authors' code",
                paper='Zhang et al.: Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks '
                      'via Self Distillation (ICCV 2019)',
                reference='ArchipLab-LinfengZhang/pytorch-self-distillation-final (tests/test_selfdistill_aux.py; '
                          'tests/golden/selfdistill_authors.py)')
