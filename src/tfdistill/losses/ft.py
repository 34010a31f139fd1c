"""Factor transfer (Kim, Park & Kwak, NeurIPS 2018): paraphraser, translator and the factor loss.

* :class:`Paraphraser` -- a convolutional auto-encoder on the teacher's map; its encoder output is the teacher
  factor. It is trained first, alone, to reconstruct the teacher map (:func:`paraphraser_loss`), then frozen.
* :class:`Translator` -- a convolutional encoder on the student's map producing the student factor.
* :func:`factor` / :func:`ft_loss` -- the distance between normalised factors.

Where the sources differ
------------------------
* **Factor normalisation.** The paper normalises each factor as a whole, ``F / ||F||_2`` over ``(C, H, W)``, and
  uses the l1 distance. CRD (and we) turn the factor into an attention-like map first: ``normalize(mean_c F^p1)``
  with ``p1 = 2``, flattened over positions, then the mean of ``|.|^p2`` with ``p2 = 1`` (mean absolute
  difference), weight 200.
* **Odd exponents p2 >= 3.** :func:`ft_loss` takes ``|d|^p2`` of the factor difference ``d`` for every ``p2``
  (a distance). CRD's code computes ``(d).pow(p2)`` for ``p2 != 1``, which keeps the sign for odd ``p2 >= 3``
  (its mean can be negative); the two agree for ``p2 = 1`` (CRD uses ``abs`` there) and for even ``p2``.
* **Architectures.** As in CRD: three 3x3 convolutions with LeakyReLU(0.1) in the paraphraser's encoder (channels
  ``C_t -> C_t -> k C_t -> k C_t``, rate ``k = 0.5``) and three 3x3 transposed convolutions in its decoder, no
  BatchNorm; the translator mirrors the encoder from ``C_s`` with BatchNorm. The paper's paraphraser also has no
  BatchNorm.
* **Pre-training.** CRD trains the paraphraser for 30 epochs with MSE reconstruction, at learning rate 0.01 for
  ResNet/WRN students (the run's rate otherwise); then it is kept fixed (not in the optimizer, eval mode).
* **Stage.** CRD applies FT to the output of the last stage (its ``feat[-2]``); maps of different sizes are
  average-pooled to the smaller size.

Computed in float32 under autocast; teacher maps are treated as constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .at import match_spatial
from ..precision import f32

__all__ = ["Paraphraser", "Translator", "factor", "ft_loss", "paraphraser_loss"]


def _conv_block(cin: int, cout: int, bn: bool, transpose: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(cin, cout, 3, 1, 1)
    return [conv, *([nn.BatchNorm2d(cout)] if bn else []), nn.LeakyReLU(0.1)]


def factor_channels(t_channels: int, rate: float = 0.5) -> int:
    return max(1, int(t_channels * rate))


class Paraphraser(nn.Module):
    """Auto-encoder on a ``C_t``-channel teacher map; ``encode`` gives the factor, ``forward`` the reconstruction."""

    def __init__(self, t_channels: int, rate: float = 0.5, bn: bool = False) -> None:
        super().__init__()
        c, k = t_channels, factor_channels(t_channels, rate)
        self.encoder = nn.Sequential(*_conv_block(c, c, bn), *_conv_block(c, k, bn), *_conv_block(k, k, bn))
        self.decoder = nn.Sequential(*_conv_block(k, k, bn, True), *_conv_block(k, c, bn, True),
                                     *_conv_block(c, c, bn, True))

    def encode(self, f_t: Tensor) -> Tensor:
        return self.encoder(f_t)

    def forward(self, f_t: Tensor) -> Tensor:
        return self.decoder(self.encoder(f_t))


class Translator(nn.Module):
    """Encoder from a ``C_s``-channel student map to the teacher factor's channel count."""

    def __init__(self, s_channels: int, t_channels: int, rate: float = 0.5, bn: bool = True) -> None:
        super().__init__()
        c, k = s_channels, factor_channels(t_channels, rate)
        self.encoder = nn.Sequential(*_conv_block(c, c, bn), *_conv_block(c, k, bn), *_conv_block(k, k, bn))

    def forward(self, f_s: Tensor) -> Tensor:
        return self.encoder(f_s)


def factor(f: Tensor, p1: float = 2.0) -> Tensor:
    """``normalize(mean_c f^p1)`` flattened over positions: ``(N, H*W)``."""
    return F.normalize(f.pow(p1).mean(1).flatten(1), dim=1)


def ft_loss(factor_s: Tensor, factor_t: Tensor, p1: float = 2.0, p2: float = 1.0) -> Tensor:
    """``mean |factor(F_s) - factor(F_t)|^p2`` (mean absolute difference for ``p2 = 1``); F_t detached.

    For odd ``p2 >= 3`` this is ``|d|^p2``, where CRD's code keeps the sign (``d^p2``); see the module docs."""
    with torch.autocast(device_type=factor_s.device.type, enabled=False):
        s, t = match_spatial(f32(factor_s), f32(factor_t).detach())
        diff = factor(s, p1) - factor(t, p1)
        return diff.abs().mean() if p2 == 1 else diff.abs().pow(p2).mean()


def paraphraser_loss(reconstruction: Tensor, f_t: Tensor) -> Tensor:
    """Mean squared reconstruction error of the teacher map (the paraphraser's pre-training loss)."""
    with torch.autocast(device_type=reconstruction.device.type, enabled=False):
        return F.mse_loss(f32(reconstruction), f32(f_t).detach())

