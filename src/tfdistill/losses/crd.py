"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

* :class:`Embed` -- linear projection + l2 normalisation (one per network, trained with the student).
* :class:`ContrastMemory` -- the two memory banks over the whole training set (buffers: checkpointed), the
  sampling of contrast indices, the NCE scores and the momentum update.
* :func:`sample_contrast_indices` -- ``(B, K+1)`` indices: the positive (the sample itself) then ``K`` negatives,
  drawn on the device without a Python loop over samples.
* :func:`contrast_scores` -- dot products of anchors with memory rows at given indices.
* :func:`nce_loss` -- CRD's NCE objective (its Eq. 18, ``ContrastLoss``) for one side.

The objective (CRD's code)
--------------------------
Student embeddings ``s`` are contrasted against the *teacher's* memory bank and teacher embeddings ``t`` against
the *student's* bank, with the same ``K + 1`` indices per sample. With temperature ``tau``,
``P = exp(<m, a> / tau) / Z``, where ``Z`` (one per side) is estimated once, on the first training batch, as
``N * mean(exp(<m, a> / tau))``. With ``M = K / N``,
``L_side = -1/B sum_b [ log(P_pos / (P_pos + M + eps)) + sum_k log(M / (P_neg_k + M + eps)) ]`` and
``L = L_student + L_teacher``; the ``crd`` method weighs it by 0.8 (CE 1). After scoring, the banks' rows of the
batch are updated with momentum ``m = 0.5``: ``row <- normalize(m row + (1 - m) emb)``.

Where the sources differ
------------------------
* **Negatives.** CRD's data loader (its default ``mode=exact``) draws, per sample, ``K = 16384`` negatives
  uniformly *without replacement* from the training samples of *other classes*. We sample on the device: with
  ``negatives="other_class"`` (default) uniformly *with replacement* from the other classes (i.i.d. draws from the
  noise distribution, which is what NCE assumes; at ``K = 16384`` of ~49.5k candidates about 15 % of CRD's draws
  would be duplicates under replacement). Class labels of the training set are learned by the bank as batches
  arrive (``labels`` buffer, ``-1`` = not yet seen; unseen samples count as "other class" during the first
  epoch), or can be given up front with :meth:`ContrastMemory.set_labels`. ``negatives="uniform"`` draws from all
  samples except the positive itself (CRD's fallback sampler, which did not even exclude the positive).
* **Scores.** CRD gathers the ``B x (K+1) x D`` memory rows and uses a batched product. When the bank is not much
  larger than ``K`` (CIFAR: N = 50k, K = 16384) we instead score every bank row (``B x N``, from a copy of the
  ``N x D`` bank) and pick the ``K + 1`` needed -- the same numbers with about a tenth of the memory traffic
  (64 x 16385 x 128 floats vs 64 x 50k + 50k x 128); for ImageNet-sized banks we gather like CRD.
* **Z.** Estimated from the first training batch as in CRD, without a host synchronisation (``torch.where`` on the
  stored value, ``-1`` meaning "not set"), and -- when a reduction is supplied -- averaged over data-parallel ranks
  so every rank uses the same constants.
* **Embeddings.** Applied to the penultimate (pooled) features of both networks, as CRD's ``feat[-1]``.

All of it is computed in float32 with autocast disabled; the banks are float32.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import f32

__all__ = ["Embed", "ContrastMemory", "NEGATIVES", "sample_contrast_indices", "contrast_scores", "nce_loss"]

NEGATIVES = ("other_class", "uniform")
EPS = 1e-7


class Embed(nn.Module):
    """``normalize(W x + b)``: projects flattened features to ``dim_out`` dimensions on the unit sphere.

    Runs in float32 even under autocast: the scores are divided by a small temperature (0.07), which would
    amplify half-precision rounding of the embeddings about fourteenfold.
    """

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.normalize(self.linear(f32(x.flatten(1))), dim=1)


def sample_contrast_indices(index: Tensor, targets: Optional[Tensor], labels: Optional[Tensor], num_data: int,
                            num_classes: int, k: int, mode: str = "other_class") -> Tensor:
    """``(B, k + 1)`` long tensor: column 0 is ``index`` (the positives), columns 1..k are negatives.

    Args:
        index: ``(B,)`` dataset indices of the batch.
        targets: ``(B,)`` class labels of the batch, in ``[0, num_classes)`` (needed for ``"other_class"``).
        labels: ``(num_data,)`` known labels of the whole training set, ``-1`` where unknown (``"other_class"``).
        num_data: size of the training set.
        num_classes: number of classes.
        k: number of negatives per sample.
        mode: ``"other_class"`` -- uniform with replacement over samples whose known label differs from the
            anchor's (unknown labels count as different); ``"uniform"`` -- uniform with replacement over all
            samples except the anchor itself.

    Everything happens on ``index``'s device with fixed-size tensors: no Python loop, no host synchronisation.
    """
    if mode not in NEGATIVES:
        raise ValueError(f"unknown CRD negative sampling {mode!r}; valid: {', '.join(NEGATIVES)}")
    b, dev = index.shape[0], index.device
    index = index.long()
    if mode == "uniform" or targets is None or labels is None:
        u = torch.randint(0, max(num_data - 1, 1), (b, k), device=dev)
        neg = (u + (u >= index.unsqueeze(1)).long()).clamp(max=num_data - 1)  # skip the anchor itself
    else:
        groups = labels.long() + 1  # 0 = label not known yet, c + 1 = class c
        order = torch.argsort(groups, stable=True)  # bank indices grouped by label
        counts = torch.zeros(num_classes + 1, dtype=torch.long, device=dev)
        counts.scatter_add_(0, groups, torch.ones_like(groups))
        starts = torch.cumsum(counts, 0) - counts
        g = targets.long() + 1
        n_same, first = counts[g].unsqueeze(1), starts[g].unsqueeze(1)  # the anchor's class block in `order`
        n_other = (num_data - n_same).clamp(min=1)
        u = (torch.rand(b, k, device=dev) * n_other).long()
        u = torch.minimum(u, n_other - 1)  # position among the other-class samples
        pos = u + n_same * (u >= first).long()  # skip the anchor's class block
        neg = order[pos.clamp(max=num_data - 1)]
    return torch.cat([index.unsqueeze(1), neg], dim=1)


def contrast_scores(memory: Tensor, anchors: Tensor, idx: Tensor) -> Tensor:
    """``(B, K+1)`` dot products ``<memory[idx[b, j]], anchors[b]>``.

    For a bank with at most ``4 (K + 1)`` rows all rows are scored (``B x N``) and the needed ones picked;
    otherwise the ``B x (K+1) x D`` rows are gathered (CRD's way). Both give the same values.
    """
    n, kp1 = memory.shape[0], idx.shape[1]
    if n <= 4 * kp1:
        # a copy: the product saves it for backward, and the bank is updated in place before backward runs
        return (anchors @ memory.detach().clone().t()).gather(1, idx)
    rows = memory.index_select(0, idx.reshape(-1)).view(idx.shape[0], kp1, memory.shape[1])
    return torch.bmm(rows, anchors.unsqueeze(2)).squeeze(2)


def nce_loss(p: Tensor, num_data: int) -> Tensor:
    """CRD's NCE loss for one side; ``p`` is ``(B, K+1)`` with the positive's probability in column 0."""
    m = p.shape[1] - 1
    c = m / float(num_data)
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + (c + EPS)))
    log_d0 = torch.log(c / (p[:, 1:] + (c + EPS)))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


class ContrastMemory(nn.Module):
    """CRD's two memory banks (``memory_s``: student embeddings, ``memory_t``: teacher embeddings), each
    ``(num_data, dim)``, plus the known ``labels`` and the normalisation constants ``z`` -- all buffers, so they
    are saved in checkpoints and moved with the module.

    ``forward(emb_s, emb_t, index, targets)`` returns ``(p_s, p_t)``, the ``(B, K+1)`` normalised scores of the
    student anchors against the teacher bank and of the teacher anchors against the student bank (positive in
    column 0). It does *not* update the banks; call :meth:`update` afterwards (the ``crd`` method does, or a
    data-parallel engine with all-gathered tensors).
    """

    def __init__(self, dim: int, num_data: int, num_classes: int, k: int = 16384, temperature: float = 0.07,
                 momentum: float = 0.5, negatives: str = "other_class") -> None:
        super().__init__()
        if num_data < 2:
            raise ValueError(f"CRD needs a training set of at least 2 samples, got {num_data}")
        if k < 1 or temperature <= 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"CRD needs k >= 1, temperature > 0 and 0 <= momentum < 1, got k={k}, "
                             f"temperature={temperature}, momentum={momentum}")
        if negatives not in NEGATIVES:
            raise ValueError(f"unknown CRD negative sampling {negatives!r}; valid: {', '.join(NEGATIVES)}")
        self.num_data, self.num_classes, self.k = int(num_data), int(num_classes), int(k)
        self.temperature, self.momentum, self.negatives = float(temperature), float(momentum), negatives
        stdv = 1.0 / math.sqrt(dim / 3.0)  # CRD's initialisation: rows of expected unit norm
        self.register_buffer("memory_s", torch.rand(num_data, dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("memory_t", torch.rand(num_data, dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("labels", torch.full((num_data,), -1, dtype=torch.long))
        self.register_buffer("z", torch.full((2,), -1.0))

    @torch.no_grad()
    def set_labels(self, labels: Tensor) -> None:
        """Give the labels of the whole training set up front (``(num_data,)``, values in ``[0, num_classes)``)."""
        if labels.shape != self.labels.shape:
            raise ValueError(f"expected {tuple(self.labels.shape)} labels, got {tuple(labels.shape)}")
        self.labels.copy_(labels.long())

    def sample(self, index: Tensor, targets: Optional[Tensor]) -> Tensor:
        return sample_contrast_indices(index, targets, self.labels, self.num_data, self.num_classes, self.k,
                                       self.negatives)

    def forward(self, emb_s: Tensor, emb_t: Tensor, index: Tensor, targets: Optional[Tensor] = None,
                reduce: Optional[Callable[[Tensor], Tensor]] = None) -> tuple[Tensor, Tensor]:
        """Normalised NCE scores ``(p_s, p_t)``; ``reduce`` averages a tensor over data-parallel ranks (for Z)."""
        with torch.autocast(device_type=emb_s.device.type, enabled=False):
            s, t = f32(emb_s), f32(emb_t)
            index = index.long()
            if self.training and targets is not None:
                with torch.no_grad():
                    self.labels.index_copy_(0, index, targets.long())
            idx = self.sample(index, targets)
            e_s = torch.exp(contrast_scores(self.memory_t, s, idx) / self.temperature)
            e_t = torch.exp(contrast_scores(self.memory_s, t, idx) / self.temperature)
            with torch.no_grad():
                est = torch.stack([e_s.mean(), e_t.mean()]) * self.num_data
                if reduce is not None:
                    est = reduce(est)
                z = torch.where(self.z < 0, est, self.z)
                if self.training:
                    self.z.copy_(z)
            return e_s / z[0], e_t / z[1]

    @torch.no_grad()
    def update(self, index: Tensor, emb_s: Tensor, emb_t: Tensor, targets: Optional[Tensor] = None) -> None:
        """Momentum update of the banks' rows ``index``: ``row <- normalize(m row + (1 - m) emb)``.

        Deterministic given its inputs, so ranks that all apply it to the same (all-gathered) tensors keep
        identical banks. Duplicate indices within one call keep one of the candidate rows.
        """
        index = index.long()
        m = self.momentum
        for bank, emb in ((self.memory_s, emb_s), (self.memory_t, emb_t)):
            rows = bank.index_select(0, index).mul_(m).add_(emb.detach().to(bank.dtype), alpha=1.0 - m)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))
        if targets is not None:
            self.labels.index_copy_(0, index, targets.long())
