"""PS-KD as a method: the student learns from soft targets mixing the label with its own previous-epoch
prediction (see :mod:`..losses.pskd`).

The loss *replaces* cross-entropy (``ce_weight = 0``): ``pskd = soft_cross_entropy(z, (1 - alpha_t) onehot(y)
+ alpha_t p_{t-1}(x))`` with ``alpha_t = alpha_T (t + 1) / T`` (``alpha_T = 0.8``, the authors' default), ``T`` the
run's epochs.

Memory
------
``memory`` (``num_train x K`` float32, a checkpointed buffer) holds, for every training sample (addressed by its
dataset index, ``StepOutputs.index``), the softmax of the student's logits at the last training step that saw it:
the prediction of the previous epoch, under that epoch's augmentation and before that step's update, as in the
authors' ``main.py`` (which keeps the matrix on the host; here it stays on the device: 0.2 MB per 1,000 samples
and 100 classes, ~5 GB for ImageNet's 1.28M x 1000). Each step reads the batch's rows, then writes them,
outside autograd. In epoch 0 the targets are the one-hot labels (the authors overwrite the memory with one-hot
rows in epoch 0; we use ``alpha = 0`` in epoch 0, the same targets). A row never written (a sample not seen in
the previous epoch, e.g. dropped by ``drop_last``) counts as its one-hot label, where the authors' zero row would
give ``(1 - alpha_t) onehot``.

Under DistributedDataParallel every rank holds the whole memory and applies the *global* batch's update: the
engine sets :attr:`PSKD.gather` (``needs_gather``), and the indices and predictions are all-gathered first, as
the authors' code does with ``all_gather`` -- so the replicas stay identical (CRD's scheme, see
:mod:`.crd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..losses.pskd import pskd_alpha, pskd_targets, soft_cross_entropy
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class PSKDParams:
    alpha_T: float = 0.8
    """alpha at the last epoch (authors: 0.8)."""
    weight: float = 1.0
    """Weight of the soft-target cross-entropy (it replaces CE)."""


@register_distiller("pskd")
class PSKD(Distiller):
    """Progressive self-knowledge distillation with a per-sample memory of the last epoch's predictions."""
    coupling = "per-sample"

    Params = PSKDParams
    uses = Uses()
    needs = ("num_train", "epochs", "index")
    needs_gather = True  # the memory must stay identical across ranks (see the module docs)

    def __init__(self, params: PSKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if not 0 <= params.alpha_T <= 1 or params.weight < 0:
            raise ConfigError(f"method.pskd needs 0 <= alpha_T <= 1 and weight >= 0, got alpha_T={params.alpha_T}, "
                              f"weight={params.weight}")
        if ctx.num_train < 1 or ctx.epochs < 1:
            raise ConfigError(f"pskd needs the training set size and the epoch count, got num_train="
                              f"{ctx.num_train}, epochs={ctx.epochs}")
        self.epochs = int(ctx.epochs)
        self.register_buffer("memory", torch.zeros(ctx.num_train, ctx.num_classes))
        self.register_buffer("alpha", torch.zeros(()), persistent=False)

    def on_epoch_start(self, epoch: int) -> None:
        self.alpha.fill_(0.0 if epoch == 0 else pskd_alpha(epoch, self.epochs, self.params.alpha_T))

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.index is None:
            raise RuntimeError("pskd needs the dataset index of every sample (StepOutputs.index); the training data "
                               "loader must yield (images, targets, index)")
        z = out.logits_s
        if self.training:
            prev = self.memory.index_select(0, out.index)
            onehot = F.one_hot(out.targets, prev.shape[1]).to(prev.dtype)
            prev = torch.where(prev.sum(1, keepdim=True) > 0, prev, onehot)
            loss = soft_cross_entropy(z, pskd_targets(out.targets, prev, self.alpha))
            self.update_memory(out.index, z)
        else:
            loss = F.cross_entropy(z.float(), out.targets)
        return {"pskd": self.params.weight * loss}

    @torch.no_grad()
    def update_memory(self, index: Tensor, logits: Tensor) -> None:
        """Write ``softmax(logits)`` into the rows ``index`` (all-gathered over ranks when :attr:`gather` is set)."""
        probs = F.softmax(logits.detach().float(), dim=1)
        g = self.gather
        if g is not None:
            index, probs = g(index), g(probs)
        self.memory.index_copy_(0, index, probs)


register_preset("pskd", ["pskd"], {"ce_weight": 0.0, "pskd": {"alpha_T": 0.8}},
                summary="progressive self-KD (Kim 2021): soft targets from the previous epoch, alpha_T 0.8",
                family="self-distillation",
                paper='Kim et al.: Self-Knowledge Distillation with Progressive Refinement of Targets (ICCV 2021)',
                reference='lgcnsai/PS-KD-Pytorch (tests/test_selfkd.py)')
