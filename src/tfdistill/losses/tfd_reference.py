"""The TFD losses written literally, slow on purpose: the reference the fast :mod:`tfdistill.losses.tfd` is tested
against (``tests/test_tfd_fast.py``) and the "before" of the speed benchmark (``benchmarks/throughput.py``).

Depth-wise: for every pair, crop both maps to the common channels, upcast to float32, adaptive-average-pool the
larger one to the smaller size, mean squared error with the target detached. Width-wise: importance from
``F.normalize`` of a float32 copy, ``argsort``, two permuted float32 copies of the top and the next half.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["reference_depth_loss", "reference_width_loss", "reference_importance"]


def _align(a: Tensor, b: Tensor) -> list[Tensor]:
    c = min(a.shape[1], b.shape[1])
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    out = []
    for t in (a, b):
        t = t[:, :c].float()
        if tuple(t.shape[2:]) != size:
            t = F.adaptive_avg_pool2d(t, size)
        out.append(t)
    return out


def reference_depth_loss(feats: list[Tensor], direction: str = "top_down") -> Tensor:
    with torch.autocast(feats[0].device.type, enabled=False):
        total, pairs = feats[0].new_zeros((), dtype=torch.float32), 0
        for i in range(len(feats) - 1):
            for j in range(i + 1, len(feats)):
                s, d = _align(feats[i], feats[j])
                if direction == "top_down":
                    term = F.mse_loss(s, d.detach())
                elif direction == "bottom_up":
                    term = F.mse_loss(d, s.detach())
                else:
                    term = F.mse_loss(s, d.detach()) + F.mse_loss(d, s.detach())
                total, pairs = total + term, pairs + 1
        return total / pairs


def reference_importance(f: Tensor) -> Tensor:
    return F.normalize(f.detach().float().flatten(2), dim=2).mean(dim=(0, 2))


def reference_width_loss(feats: list[Tensor], detach_top: bool = True) -> Tensor:
    with torch.autocast(feats[0].device.type, enabled=False):
        total, used = feats[0].new_zeros((), dtype=torch.float32), 0
        for f in feats:
            c = f.shape[1]
            if c < 2:
                continue
            h = c // 2
            order = torch.argsort(reference_importance(f), descending=True, stable=True)
            f32 = f.float()
            top, low = f32.index_select(1, order[:h]), f32.index_select(1, order[h:2 * h])
            total, used = total + F.mse_loss(low, top.detach() if detach_top else top), used + 1
        return total / used if used else total
