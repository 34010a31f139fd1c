"""Variational information distillation (Ahn et al., CVPR 2019).

* :func:`vid_nll` -- Gaussian negative log-likelihood of the teacher map under ``N(mu(s), sigma^2)`` with a
  per-channel variance ``sigma_c^2 = softplus(alpha_c) + eps`` (a trainable parameter).
* :class:`VIDHead` -- one stage pair's regressor ``mu(.)`` (three 1x1 convolutions) and variance parameters;
  ``forward(f_s, f_t)`` returns the stage's loss.

Where the sources differ
------------------------
* **Reduction.** The paper sums ``log sigma_c + (t - mu)^2 / (2 sigma_c^2)`` over channels and positions; CRD
  (following the authors' code) takes the *mean* over batch, channels and positions of
  ``0.5 * ((mu - t)^2 / sigma^2 + log sigma^2)`` -- the same up to a constant factor -- and sums over stages with
  weight 1. We follow CRD.
* **Regressor.** As in CRD and the authors' code: ``conv1x1(C_s, C_t) - ReLU - conv1x1(C_t, C_t) - ReLU -
  conv1x1(C_t, C_t)``, no bias, with the variance initialised to 5 (``alpha = log(exp(5 - eps) - 1)``).
* **Sizes.** The larger map is average-pooled to the smaller one's size (CRD's rule).

Computed in float32 under autocast; teacher maps are treated as constants.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .at import match_spatial
from ..precision import f32

__all__ = ["vid_nll", "VIDHead"]


def vid_nll(mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """``mean(0.5 * ((mean - target)^2 / var + log var))`` with ``var_c = softplus(log_scale_c) + eps``.

    Args:
        mean: predicted mean ``(N, C, H, W)``.
        target: teacher map, same shape (detached).
        log_scale: ``(C,)`` unconstrained variance parameters.
    """
    if mean.shape != target.shape:
        raise ValueError(f"vid_nll: predicted mean {tuple(mean.shape)} does not match the teacher map "
                         f"{tuple(target.shape)}")
    with torch.autocast(device_type=mean.device.type, enabled=False):
        var = (F.softplus(f32(log_scale)) + eps).view(1, -1, 1, 1)
        diff = f32(mean) - f32(target).detach()
        return (0.5 * (diff.pow(2) / var + torch.log(var))).mean()


class VIDHead(nn.Module):
    """Regressor and variance of one VID stage pair: ``forward(f_s, f_t)`` -> scalar loss."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_var: float = 5.0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if init_var <= eps:
            raise ValueError(f"VID init_var must exceed eps={eps}, got {init_var}")
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )
        # softplus(alpha) + eps == init_var at initialisation
        alpha = math.log(math.expm1(init_var - eps))
        self.log_scale = nn.Parameter(torch.full((out_channels,), alpha))
        self.eps = float(eps)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        s, t = match_spatial(f_s, f_t)
        return vid_nll(self.regressor(s), t, self.log_scale, self.eps)
