"""CRD as a method: contrastive representation distillation with memory banks over the training set
(see :mod:`..losses.crd`).

Feature mapping: as CRD, each network's pooled penultimate features (``feat[-1]``; our ``emb_s`` / ``emb_t``) go
through a trainable linear embedding (``feat_dim = 128``, l2-normalised); both embeddings are method extras.

Data: needs ``StepOutputs.index`` -- every sample's position in the training set, in ``[0, ctx.num_train)`` --
which any sampling order (shuffled, distributed) can supply; the banks are addressed by it, never by batch
position.

Memory banks and data parallelism
---------------------------------
The banks (``memory.memory_s``, ``memory.memory_t``), the learned ``memory.labels`` and the normalisation
constants ``memory.z`` are buffers: checkpointed with the method (``Method.distillers.state_dict()``), moved with
it, never touched by the optimizer. Each training step (i) scores the batch against the banks as they are, then
(ii) calls :meth:`CRD.update_memory` with the batch's indices, embeddings and labels, outside autograd.

Under DistributedDataParallel every rank holds a replica of the banks and must apply *the same* updates, i.e. the
updates of the *global* batch. A data-parallel engine sets :attr:`CRD.gather` to a function that concatenates a
tensor's rows over ranks in rank order (``tfdistill.engine.distributed.gather_rows`` does this with ``torch.distributed``); then
``update_memory`` all-gathers ``index``, both embeddings and the labels and applies the identical update on every
rank, and the once-estimated normalisation constants ``Z`` are averaged over ranks. The update is deterministic
given its inputs, so the replicas stay bit-identical. (The negatives each rank samples may differ; they are
random draws either way.) Without ``gather`` a data-parallel run would let the replicas drift apart: each rank
would only write its own samples' rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses.crd import NEGATIVES, ContrastMemory, Embed, nce_loss
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs
from ._features import EMBEDDING_USES


@dataclass
class CRDParams:
    weight: float = 0.8
    """Weight of the CRD term (CRD benchmark: 0.8)."""
    feat_dim: int = 128
    """Dimension of the embeddings and memory banks (CRD: 128)."""
    nce_k: int = 16384
    """Negatives per sample (CRD: 16384)."""
    nce_t: float = 0.07
    """Temperature (CRD: 0.07)."""
    nce_m: float = 0.5
    """Momentum of the memory update (CRD: 0.5)."""
    negatives: str = "other_class"
    """other_class (CRD's exact mode: negatives from other classes) | uniform (any sample but the anchor)."""


@register_distiller("crd")
class CRD(Distiller):
    """Contrastive representation distillation; embeddings and memory banks are part of the method."""
    coupling = "batch-coupled"  # memory bank updated once per step, negatives drawn per step

    Params = CRDParams
    uses = EMBEDDING_USES
    needs = ("num_train", "index")
    needs_gather = True  # the memory bank must stay identical across ranks (see the module docs)

    def __init__(self, params: CRDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.negatives not in NEGATIVES:
            raise ConfigError(f"bad value for config key 'method.crd.negatives': {params.negatives!r}; "
                              f"valid: {', '.join(NEGATIVES)}")
        if params.feat_dim < 1 or params.nce_k < 1 or params.nce_t <= 0 or not 0 <= params.nce_m < 1:
            raise ConfigError("method.crd needs feat_dim >= 1, nce_k >= 1, nce_t > 0 and 0 <= nce_m < 1")
        if ctx.num_train < 2:
            raise ConfigError(f"crd needs the training set size (num_train >= 2), got {ctx.num_train}")
        if ctx.student is None or ctx.teacher is None:
            raise ConfigError("method component 'crd' needs the embeddings of the student and a teacher")
        self.embed_s = Embed(ctx.student.embedding_dim, params.feat_dim)
        self.embed_t = Embed(ctx.teacher.embedding_dim, params.feat_dim)
        self.memory = ContrastMemory(params.feat_dim, ctx.num_train, ctx.num_classes, params.nce_k, params.nce_t,
                                     params.nce_m, params.negatives)
        self.num_train = int(ctx.num_train)

    def _mean_over_ranks(self, t: Tensor) -> Tensor:
        g = self.gather
        return t if g is None else g(t.unsqueeze(0)).mean(0)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.index is None:
            raise RuntimeError("crd needs the dataset index of every sample (StepOutputs.index); the training data "
                               "loader must yield (images, targets, index)")
        e_s = self.embed_s(out.emb_s)
        e_t = self.embed_t(out.emb_t)
        p_s, p_t = self.memory(e_s, e_t, out.index, out.targets,
                               reduce=self._mean_over_ranks if self.gather is not None else None)
        loss = nce_loss(p_s, self.num_train) + nce_loss(p_t, self.num_train)
        if self.training:
            self.update_memory(out.index, e_s, e_t, out.targets)
        return {"crd": self.params.weight * loss}

    @torch.no_grad()
    def update_memory(self, index: Tensor, emb_s: Tensor, emb_t: Tensor, targets: Optional[Tensor] = None) -> None:
        """Momentum-update the banks' rows ``index`` with the (normalised) embeddings ``emb_s``, ``emb_t``.

        Called by :meth:`terms` in training mode. With :attr:`gather` set, the tensors are first gathered over
        ranks, so every rank applies the update of the global batch.
        """
        g = self.gather
        emb_s, emb_t = emb_s.detach().float(), emb_t.detach().float()
        if g is not None:
            index, emb_s, emb_t = g(index), g(emb_s), g(emb_t)
            targets = g(targets) if targets is not None else None
        self.memory.update(index, emb_s, emb_t, targets)


register_preset("crd", ["crd"], {"crd": {"weight": 0.8}},
                summary="contrastive representation distillation (Tian et al. 2020), weight 0.8 as CRD",
                paper='Tian, Krishnan & Isola: Contrastive Representation Distillation (ICLR 2020)',
                reference='none: independent numpy/loop formulas (tests/test_baselines.py)')
