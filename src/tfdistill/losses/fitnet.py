"""FitNets: hints for thin deep nets (Romero et al., ICLR 2015).

* :class:`ConvRegressor` -- maps a student feature map onto a teacher map's shape (also AB's connector).
* :func:`hint_loss` -- mean squared error between the regressed student map and the teacher's hint.

Where the sources differ
------------------------
* **Stages.** The paper guides one middle layer and trains the student "up to the guided layer" on the hint loss
  first (stage 1), then the whole student with KD (stage 2). The CRD benchmark trains in a single stage:
  ``CE + 100 * hint`` from the start, on its ``hint_layer = 2`` (the output of the second of three ResNet stages).
  The ``fitnet`` method follows CRD; the paper's stage 1 is available as an optional pre-stage.
* **Regressor.** As in CRD: a 3x3 stride-2 convolution when the student map is twice the teacher's size, a 4x4
  stride-2 transposed convolution when it is half, otherwise a "valid" convolution whose kernel absorbs the size
  difference (a 1x1 convolution for equal sizes); then BatchNorm and (for FitNets) a ReLU. The paper uses a
  convolutional regressor without normalisation.
* **Distance.** Mean squared error (``F.mse_loss``), as CRD; the paper's ``1/2 ||.||^2`` only rescales.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import f32

__all__ = ["ConvRegressor", "hint_loss"]


class ConvRegressor(nn.Module):
    """Convolutional regressor from a ``(C_s, H_s, W_s)`` map to ``(C_t, H_t, W_t)``, then BatchNorm (+ ReLU).

    Raises ``ValueError`` for a student map smaller than the teacher's unless it is exactly half its size.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], relu: bool = True) -> None:
        super().__init__()
        (cs, hs, ws), (ct, ht, wt) = tuple(s_shape)[-3:], tuple(t_shape)[-3:]
        if (hs, ws) == (2 * ht, 2 * wt):
            self.conv: nn.Module = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif (2 * hs, 2 * ws) == (ht, wt):
            self.conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            self.conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        else:
            raise ValueError(f"cannot regress a student map of size {hs}x{ws} onto a teacher map of size "
                             f"{ht}x{wt} (only equal, 2x larger or 2x smaller student maps, or any larger one)")
        self.bn = nn.BatchNorm2d(ct)
        self.relu = relu
        self.out_shape = (ct, ht, wt)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Mean squared error between the (regressed) student map ``f_s`` and the teacher hint ``f_t`` (detached).

    Both must have the same shape. Computed in float32 under autocast.
    """
    if f_s.shape != f_t.shape:
        raise ValueError(f"hint_loss: regressed student map {tuple(f_s.shape)} does not match the teacher's "
                         f"{tuple(f_t.shape)}")
    with torch.autocast(device_type=f_s.device.type, enabled=False):
        return F.mse_loss(f32(f_s), f32(f_t).detach())
