"""FRSKD: Refine Myself by Teaching Myself -- Feature Refinement via Self-Knowledge Distillation (Ji et al., CVPR 2021).

* :class:`SelfTeacher` -- the auxiliary self-teacher network: a BiFPN-style top-down + bottom-up fusion of the
  student's stage maps (the authors' ``BiFPNc``, one repetition), giving refined maps (``width`` x the stage
  channels) and its own logits (global average pooling of the deepest refined map + a linear classifier).
* :func:`frskd_feature_loss` -- the feature distillation: the sum over stages of the attention-transfer distance
  between the student's map and the refined map (:func:`tfdistill.losses.at.at_pair_loss`, ``p = 2``: the mean
  squared difference of l2-normalised channel-mean ``f^2`` maps).
* The logit distillation is :func:`tfdistill.losses.kd.kd_loss` (``T^2 KL``, batch mean), the authors'
  ``DistillKL``.

Checked against the authors' release, github.com/MingiJi/FRSKD: ``classification/models/bifpnc.py`` (``BiFPNc``,
``BiFPN_layer``), ``classification/models/utils.py`` (``DepthConvBlock``, ``MaxPool2dStaticSamePadding``),
``classification/distill_loss/AT.py`` and ``KD.py``, ``classification/utils.py`` (``train``: the total loss) and
the CIFAR-100 command of ``classification/README.md`` (``--alpha 2 --beta 100``; defaults ``--temperature 4
--width 2 --depth 2 --repeat 1 --bifpn BiFPNc``). ``tests/test_selfdistill_aux.py`` reproduces ``Attention``'s
loss value on fixed inputs and the parameter count of ``BiFPNc`` for the same stage channels.

Total loss (the code's ``train``): ``CE(student) + CE(self-teacher) + alpha * KD(student <- self-teacher, T)
+ beta * sum_i AT(f_i, refined_i)``. The self-teacher's logits and refined maps are constants in the two
distillation terms; its cross-entropy reaches the student through the (not detached) stage maps.

Where the sources differ
------------------------
* **Sizes.** The code upsamples by 2 (nearest) and downsamples by a 3x3 stride-2 max pool with TensorFlow-style
  "same" padding; it assumes every stage halves the resolution. We do the same and refuse (ConfigError) stage
  maps whose sizes do not halve (``ceil(H / 2)``) from one stage to the next; the upsampling goes to the finer
  map's size (the same as x2 when the sizes halve exactly).
* **Stage maps.** The authors' networks hand the self-teacher and the attention loss ``relu(stage output)``; we
  apply the ReLU to the tapped maps as well (a no-op for the zoo's post-activation ResNets, not for pre-activation
  WRN blocks).
* Only one BiFPN repetition (the code's default ``--repeat 1``; its later repetitions would not fit its own
  channel bookkeeping).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .at import at_pair_loss

__all__ = ["SelfTeacher", "frskd_feature_loss", "check_pyramid"]


def _conv_bn(c_in: int, c_out: int, k: int, depth: int) -> nn.Sequential:
    """The code's ``DepthConvBlock``: k = 1: conv1x1-BN-ReLU (``depth`` unused); k = 3: ``depth`` times
    [ReLU (not before the first)] depthwise 3x3 -> pointwise 1x1 -> BN."""
    if k == 1:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
    layers: list[nn.Module] = []
    c = c_in
    for d in range(depth):
        if d:
            layers.append(nn.ReLU())
        layers += [nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=False), nn.Conv2d(c, c_out, 1, bias=False),
                   nn.BatchNorm2d(c_out)]
        c = c_out
    return nn.Sequential(*layers)


def _maxpool_same(x: Tensor) -> Tensor:
    """3x3 stride-2 max pool with "same" padding (pad ``extra // 2`` before, the rest after; zeros, as the code)."""
    h, w = x.shape[-2:]
    ev = (math.ceil(h / 2) - 1) * 2 - h + 3
    eh = (math.ceil(w / 2) - 1) * 2 - w + 3
    x = F.pad(x, [eh // 2, eh - eh // 2, ev // 2, ev - ev // 2])
    return F.max_pool2d(x, 3, 2)


class _Down(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = _conv_bn(c_in, c_out, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(_maxpool_same(x))


class _Up(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = _conv_bn(c_in, c_out, 1, 1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


def check_pyramid(sizes: Sequence[tuple[int, int]]) -> str | None:
    """Why the stage sizes ``[(H, W), ...]`` (shallow to deep) cannot feed the self-teacher, or None."""
    if len(sizes) < 2:
        return f"needs at least two stage maps, got {len(sizes)}"
    for a, b in zip(sizes, sizes[1:]):
        if (math.ceil(a[0] / 2), math.ceil(a[1] / 2)) != tuple(b):
            return f"every stage must halve the previous one's size, but {a[0]}x{a[1]} is followed by {b[0]}x{b[1]}"
    return None


class SelfTeacher(nn.Module):
    """BiFPN self-teacher over stage maps of ``channels`` (shallow to deep): ``forward(feats) -> (refined, logits)``.

    ``depth = (lateral, top-down, bottom-up)`` repetitions of the 3x3 blocks; refined maps have ``width * c``
    channels.
    """

    def __init__(self, channels: Sequence[int], num_classes: int, width: int = 2,
                 depth: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        ch = [int(c) for c in channels]
        n = len(ch)
        if n < 2:
            raise ValueError("the FRSKD self-teacher needs at least two stage maps")
        lat_d, up_d, down_d = (int(d) for d in depth)
        wc = [c * width for c in ch]
        self.eps = 1e-6
        self.lat = nn.ModuleList(_conv_bn(ch[i], wc[i], 1, lat_d) for i in range(n))
        self.lat2 = nn.ModuleList(_conv_bn(ch[i], wc[i], 1, lat_d) for i in range(1, n))
        # top-down path: level i (< n-1) fuses its lateral map with the upsampled level i+1
        self.up = nn.ModuleList(_Up(wc[i + 1], wc[i]) for i in range(n - 1))
        self.up_conv = nn.ModuleList(_conv_bn(wc[i], wc[i], 3, up_d) for i in range(n - 1))
        self.up_w = nn.ParameterList(nn.Parameter(torch.ones(2)) for _ in range(n - 1))
        # bottom-up path: level i (>= 1) fuses its second lateral map, its top-down map (not at the top) and the
        # downsampled level i-1
        self.down = nn.ModuleList(_Down(wc[i - 1], wc[i]) for i in range(1, n))
        self.down_conv = nn.ModuleList(_conv_bn(wc[i], wc[i], 3, down_d) for i in range(1, n))
        self.down_w = nn.ParameterList(nn.Parameter(torch.ones(3 if i < n - 1 else 2)) for i in range(1, n))
        self.fc = nn.Linear(wc[-1], num_classes)

    def _norm(self, w: Tensor, like: Tensor) -> Tensor:
        """Fast normalised fusion weights ``relu(w) / (sum + eps)``, in the maps' dtype (autocast)."""
        w = F.relu(w)
        return (w / (w.sum() + self.eps)).to(like.dtype)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        n = len(self.lat)
        if len(feats) != n:
            raise ValueError(f"the self-teacher was built for {n} stage maps, got {len(feats)}")
        x = [F.relu(f) for f in feats]
        lat2 = [self.lat2[i - 1](x[i]) for i in range(1, n)]
        lat = [self.lat[i](x[i]) for i in range(n)]
        td: list[Tensor] = [lat[-1]] * n  # td[i]: top-down map of level i
        for i in range(n - 2, -1, -1):
            w = self._norm(self.up_w[i], lat[i])
            up = self.up[i](F.relu(td[i + 1]), lat[i].shape[-2:])
            td[i] = self.up_conv[i](w[0] * F.relu(lat[i]) + w[1] * up)
        out = [td[0]]
        for i in range(1, n):
            w = self._norm(self.down_w[i - 1], lat2[i - 1])
            down = self.down[i - 1](F.relu(out[-1]))
            if i < n - 1:
                z = w[0] * F.relu(lat2[i - 1]) + w[1] * F.relu(td[i]) + w[2] * down
            else:
                z = w[0] * F.relu(lat2[i - 1]) + w[1] * down
            out.append(self.down_conv[i - 1](z))
        refined = [F.relu(f) for f in out]
        logits = self.fc(F.adaptive_avg_pool2d(refined[-1], 1).flatten(1))
        return refined, logits


def frskd_feature_loss(feats_s: Sequence[Tensor], refined: Sequence[Tensor]) -> Tensor:
    """``sum_i mean((Q(f_i) - Q(r_i))^2)``, ``Q`` the l2-normalised channel mean of ``f^2`` (refined maps detached).

    Maps of one pair must have the same spatial size (channels may differ)."""
    if len(feats_s) != len(refined) or not feats_s:
        raise ValueError(f"frskd_feature_loss needs equally many (>= 1) student and refined maps, "
                         f"got {len(feats_s)} and {len(refined)}")
    for s, r in zip(feats_s, refined):
        if s.shape[-2:] != r.shape[-2:]:
            raise ValueError(f"frskd_feature_loss: map sizes {tuple(s.shape[-2:])} and {tuple(r.shape[-2:])} differ")
    return torch.stack([at_pair_loss(s, r) for s, r in zip(feats_s, refined)]).sum()
