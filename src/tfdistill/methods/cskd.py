"""CS-KD as a method: class-wise self-knowledge distillation (Yun, Park, Lee & Shin, "Regularizing Class-wise
Predictions via Self-knowledge Distillation", CVPR 2020).

Every training sample comes with a partner of the same class (paired batches: ``Uses(paired_batches=True)``; the
data layer draws the partner uniformly among its class's training samples -- itself included, as the authors'
``PairBatchSampler`` in ``datasets.py`` -- and augments it independently). The student's prediction on the
partner, computed without gradient, is the target of a temperature-scaled KL on the sample's prediction:
``L = CE(z, y) + lambda * T^2 * KL(softmax(z_pair / T) || softmax(z / T))`` averaged over the batch, with the
authors' defaults ``T = 4``, ``lambda = 1`` (``train.py``: ``KDLoss``, ``--temp 4``, ``--lamda 1``); the KL term is
:func:`tfdistill.losses.kd.kd_loss`, which computes exactly their ``KDLoss`` (``KLDivLoss(reduction="sum") * T^2
/ B``; checked on fixed inputs in ``tests/test_selfkd.py``).

As in the authors' ``train.py``, the partners' forward pass runs in training mode after the main one (BatchNorm
statistics see both halves, the partner half second) and cross-entropy uses the first half only;
``data.batch_size`` counts the first half (each step processes ``2 x batch_size`` images, as theirs; the logged
``images_per_sec`` and ``train_acc`` count the first half only).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..losses.kd import kd_loss
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class CSKDParams:
    weight: float = 1.0
    """lambda, the weight of the class-wise KL (authors: 1)."""
    T: float = 4.0
    """Temperature (authors: 4)."""


@register_distiller("cskd")
class CSKD(Distiller):
    """KL from the (detached) prediction on a same-class partner to the prediction on the sample."""
    coupling = "per-sample"

    Params = CSKDParams
    uses = Uses(paired_batches=True)

    def __init__(self, params: CSKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.T <= 0 or params.weight < 0:
            raise ConfigError(f"method.cskd needs T > 0 and weight >= 0, got T={params.T}, weight={params.weight}")

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.logits_pair is None:
            if self.training:
                raise RuntimeError("cskd needs paired batches (StepOutputs.logits_pair): the training loader must "
                                   "be built with paired=True (the engine does this for Uses(paired_batches=True))")
            return {}
        return {"cskd": self.params.weight * kd_loss(out.logits_s, out.logits_pair, self.params.T)}


register_preset("cskd", ["cskd"], {"cskd": {"weight": 1.0, "T": 4.0}},
                summary="class-wise self-KD (Yun 2020): KL to a same-class sample's prediction, T 4, lambda 1",
                family="self-distillation",
                paper='Yun et al.: Regularizing Class-wise Predictions via Self-knowledge Distillation (CVPR 2020)',
                reference='alinlab/cs-kd (tests/test_selfkd.py)')
