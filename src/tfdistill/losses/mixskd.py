"""MixSKD (Yang, Zhou, Wang, An & Xu, "MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition",
ECCV 2022; code in the first author's winycg/Self-KD-Lib, ``main_mixskd_cifar.py`` / ``main_mixskd_imagenet.py``,
``methods/adversarial.py``, ``models/resnet_mixskd.py``).

A batch ``x`` (``B`` samples) and its mixup ``x_mix = lam x + (1 - lam) x[perm]`` go through the network together;
``S`` classifiers (auxiliary branches on the earlier stages, then the network's own) give logits ``z_s`` and
final-stage feature maps ``f_s`` on both halves. Writing ``a`` for the original half, ``m`` for the mixed half and
``mix(t) = lam t_a + (1 - lam) t_a[perm]`` for the interpolation of the original half:

* ``ce`` -- ``sum_s CE(z_s^a, y)`` (the last classifier's is the method's ``ce``; the others ``mixskd_aux_ce``);
* ``kd`` (``mixskd_kd``) -- ``KL_T(mix(z_S) || e_m) + KL_T(z_S^m || e_a) + sum_{s<S} [KL_T(mix(z_s) || z_s^m) +
  KL_T(z_s^m || mix(z_s))]``, each ``T^2 KL(softmax(t / T) || softmax(s / T))`` over the batch with the second
  argument a constant (``DistillKL``, T = 3), where ``e_a`` / ``e_m`` are the self-teacher's logits on the
  interpolated / mixed feature maps;
* ``feat`` (``mixskd_feat``) -- ``sum_s MSE(mix(f_s), f_s^m)``;
* ``adv`` (``mixskd_adv``) -- ``sum_s BCE(D_s(gap(mix(f_s))), [1, 0]) + BCE(D_s(gap(f_s^m)), [0, 1])`` (one
  ``BCEWithLogitsLoss`` over the ``2B`` rows), ``D_s`` a two-layer MLP per stage;
* ``mix_ce`` (``mixskd_mix_ce``) -- ``sum_s MCE(z_s^m) + MCE(e_a) + MCE(e_m)``, ``MCE(z) = lam CE(z, y) + (1 - lam)
  CE(z, y[perm])``.

Departures of the authors' CIFAR script from the paper, reproduced by default and documented:
* ``mix_ce`` is computed (``loss_mixcls``) but never added to the loss (``loss = loss_cls + loss_div + loss_fea +
  loss_gan``); their ImageNet script adds it (into ``loss_cls``). So on CIFAR the self-teacher (its logits are used
  only as detached KD targets and in ``mix_ce``) receives no gradient and stays at its initialisation.
  ``mixup_ce=True`` adds it, as their ImageNet script (the paper's full text was not available where this was
  written to check its equation).
* The discriminators are kept in a plain Python list (``discriminatorLoss.classifier = []``), so their parameters are
  not registered, never reach the optimizer and stay at their initialisation; the network *minimises* the
  discriminators' classification loss (there is no adversarial update). ``train_discriminators=True`` trains them
  jointly on the same loss (what registering them would do); the paper's adversarial min-max is not offered.

* :class:`Discriminator`, :class:`SelfTeacher` -- the modules; :func:`interpolate` -- ``mix(t)``;
  :func:`mixskd_terms` -- the terms above from the network's outputs.

Batch-coupled: the interpolation pairs samples of the batch (``perm``), and ``mix_ce`` / ``feat`` of a row depend on
its partner's; sub-batches of gradient accumulation would draw other pairs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import autocast, f32
from .kd import kd_loss

__all__ = ["Discriminator", "SelfTeacher", "interpolate", "mixup_cross_entropy", "adversarial_loss", "mixskd_terms"]


class Discriminator(nn.Module):
    """``Linear(C, 128) -> ReLU -> Linear(128, 2)`` on pooled features (the authors' ``Discriminator``)."""

    def __init__(self, dim_in: int, hidden: int = 128) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)


class SelfTeacher(nn.Module):
    """The feature-ensemble self-teacher: the ``S`` final-stage maps concatenated on channels, a bias-free 1x1
    convolution back to ``C`` channels, global average pooling, a linear classifier (the authors'
    ``ResNet_Final_Auxiliary_Classifer``)."""

    def __init__(self, channels: int, stages: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * stages, channels, kernel_size=1, bias=False)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = self.conv(torch.cat(list(feats), dim=1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def interpolate(t: Tensor, lam: Tensor | float, perm: Tensor) -> Tensor:
    """``lam t + (1 - lam) t[perm]``."""
    return lam * t + (1 - lam) * t.index_select(0, perm)


def mixup_cross_entropy(logits: Tensor, targets: Tensor, perm: Tensor, lam: Tensor | float) -> Tensor:
    """``lam CE(z, y) + (1 - lam) CE(z, y[perm])``."""
    return lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, targets.index_select(0, perm))


def adversarial_loss(discriminators: Sequence[Callable[[Tensor], Tensor]], first: Sequence[Tensor],
                     second: Sequence[Tensor]) -> Tensor:
    """``sum_s BCEWithLogits(D_s(gap([first_s; second_s])), [[1, 0]] * B + [[0, 1]] * B)``."""
    total = first[0].new_zeros(())
    for d, a, b in zip(discriminators, first, second):
        x = torch.cat([a, b])
        if x.dim() > 2:
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        n = a.shape[0]
        target = torch.zeros(2 * n, 2, device=x.device, dtype=x.dtype)
        target[:n, 0] = 1
        target[n:, 1] = 1
        total = total + F.binary_cross_entropy_with_logits(d(x), target)
    return total


def mixskd_terms(logits: Sequence[Tensor], feats: Sequence[Tensor], ens_logits: Tensor, ens_mix_logits: Tensor,
                 targets: Tensor, perm: Tensor, lam: Tensor | float,
                 discriminators: Sequence[Callable[[Tensor], Tensor]],
                 T: float = 3.0, mixup_ce: bool = False) -> dict[str, Tensor]:
    """MixSKD's terms (unweighted; see the module docs) from ``logits`` / ``feats``: per classifier, shallow to deep
    (the network's own last), ``2B`` rows each (originals, then mixed images); ``ens_logits`` / ``ens_mix_logits``:
    the self-teacher on the interpolated / the mixed feature maps (``B`` rows). Returns ``aux_ce`` (CE of every
    classifier but the last on the originals), ``kd``, ``feat``, ``adv`` and, with ``mixup_ce``, ``mix_ce``; float32
    with autocast off (the discriminators too)."""
    with autocast("off", ens_logits.device):
        n = targets.shape[0]
        z = [f32(t) for t in logits]
        f = [f32(t) for t in feats]
        lam = f32(lam) if isinstance(lam, Tensor) else lam
        mix_z = [interpolate(t[:n], lam, perm) for t in z]
        mixed_z = [t[n:] for t in z]
        ens_f = [interpolate(t[:n], lam, perm) for t in f]
        mixed_f = [t[n:] for t in f]
        e_a, e_m = f32(ens_logits), f32(ens_mix_logits)
        zero = e_a.new_zeros(())
        aux_ce = sum((F.cross_entropy(t[:n], targets) for t in z[:-1]), zero)
        kd = kd_loss(mix_z[-1], e_m, T) + kd_loss(mixed_z[-1], e_a, T)
        for a, b in zip(mix_z[:-1], mixed_z[:-1]):
            kd = kd + kd_loss(a, b, T) + kd_loss(b, a, T)
        feat = sum((F.mse_loss(a, b) for a, b in zip(ens_f, mixed_f)), zero)
        terms = {"aux_ce": aux_ce, "kd": kd, "feat": feat, "adv": adversarial_loss(discriminators, ens_f, mixed_f)}
        if mixup_ce:
            terms["mix_ce"] = sum((mixup_cross_entropy(t, targets, perm, lam) for t in [*mixed_z, e_a, e_m]), zero)
        return terms
