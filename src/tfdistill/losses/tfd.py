"""Teacher-free Feature Distillation losses (Li, ECCV 2022).

Two pure tensor functions and a thin module:

* :func:`depth_loss` -- depth-wise TFD: deeper stage features supervise shallower ones.
* :func:`width_loss` -- width-wise TFD: a stage's important channels supervise its less important ones.
* :class:`TFDLoss` -- ``alpha * depth + beta * width`` as named terms.

Where the sources differ, and what each option follows
------------------------------------------------------
* **Distance.** The paper writes a squared l2 norm; like the released script we use the *mean* squared error
  (``F.mse_loss`` with mean reduction), which only rescales the loss weights.
* **Depth pairs.** The paper (Eq. 2) sums over all pairs ``i < j`` and divides by the number of pairs ``m``;
  :func:`depth_loss` does exactly that. Alignment is "pooling and channel cropping": the spatially larger map is
  adaptively average-pooled to the smaller one's size and both are cropped to their first ``min(C_i, C_j)``
  channels (cropping before pooling gives identical values and is cheaper, so we crop first).
* **Direction.** The paper freezes the deeper map (``top_down``, its final choice); its ablation also reports
  ``bottom_up`` (the shallower map is frozen and the deeper one learns) and ``bidirectional`` (both terms).
* **Width target.** The paper's intent is a frozen target: the top half of the channels supervises the bottom
  half. The released script does *not* detach the top half, so the "teacher" channels are also pulled towards the
  "students". ``detach_top=True`` (default) follows the paper, ``detach_top=False`` reproduces the script.
* **Importance.** Channel importance is the mean over batch and positions of the channel's map after
  l2-normalising it over its positions (``F.normalize(f.flatten(2), dim=2)``); channels are ranked in descending
  importance, and with ``h = C // 2`` the channels ranked ``h .. 2h-1`` mimic those ranked ``0 .. h-1`` pairwise.
  With an odd ``C`` the least important channel takes no part.
* **Weights.** The paper uses ``alpha = 0.005`` and ``beta = 0.0004``. The released script also ramps both in
  linearly over the first 20 epochs; that ramp lives in the training method (``tfd`` method, ``ramp_epochs``),
  not in these loss functions.

Both losses compute in float32 even under autocast (features in bf16/fp16 are upcast), contain no Python loop
over samples and no host synchronisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIRECTIONS = ("top_down", "bottom_up", "bidirectional")

__all__ = ["DIRECTIONS", "depth_loss", "width_loss", "channel_importance", "TFDLoss"]


def _check_maps(feats: Sequence[Tensor], what: str, min_maps: int) -> None:
    if isinstance(feats, Tensor):
        raise ValueError(f"{what} expects a list of feature maps (N, C, H, W), got a single tensor")
    if len(feats) < min_maps:
        raise ValueError(f"{what} needs at least {min_maps} feature map(s), got {len(feats)}")
    batch = None
    for k, f in enumerate(feats):
        if not isinstance(f, Tensor) or f.dim() != 4:
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"{what}: feature map {k} must be a 4D tensor (N, C, H, W), got {shape}")
        if batch is None:
            batch = f.shape[0]
        elif f.shape[0] != batch:
            raise ValueError(f"{what}: feature maps have mismatched batch sizes ({batch} vs {f.shape[0]} at map {k})")


def _no_autocast(t: Tensor):
    return torch.autocast(device_type=t.device.type, enabled=False)


def _align(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Crop both maps to their first min(C) channels, pool the larger one to the smaller size, in float32."""
    c = min(a.shape[1], b.shape[1])
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    out = []
    for t in (a, b):
        t = t[:, :c].float()
        if tuple(t.shape[2:]) != size:
            t = F.adaptive_avg_pool2d(t, size)
        out.append(t)
    return out[0], out[1]


def depth_loss(feats: Sequence[Tensor], direction: str = "top_down") -> Tensor:
    """Depth-wise TFD over stage features ``feats`` (shallow to deep): mean over all pairs ``i < j``.

    Args:
        feats: list of ``L >= 2`` feature maps ``(N, C_l, H_l, W_l)`` ordered from shallow to deep.
        direction: ``"top_down"`` (the deeper map is the detached target; the paper's choice),
            ``"bottom_up"`` (the shallower map is the detached target) or ``"bidirectional"`` (the sum of both).

    Returns:
        A float32 scalar: ``1/m * sum_{i<j} MSE(align(f_i), align(f_j))`` with ``m = L(L-1)/2``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown TFD direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    _check_maps(feats, "depth_loss", 2)
    with _no_autocast(feats[0]):
        total = feats[0].new_zeros((), dtype=torch.float32)
        pairs = 0
        for i in range(len(feats) - 1):
            for j in range(i + 1, len(feats)):
                shallow, deep = _align(feats[i], feats[j])
                if direction == "top_down":
                    term = F.mse_loss(shallow, deep.detach())
                elif direction == "bottom_up":
                    term = F.mse_loss(deep, shallow.detach())
                else:
                    # top_down + bottom_up: the value is twice the MSE, and each side receives exactly the
                    # gradient of the term in which it is the student -- i.e. the gradient of one undetached MSE.
                    mse = F.mse_loss(shallow, deep)
                    term = mse + mse.detach()
                total = total + term
                pairs += 1
        return total / pairs


@torch.no_grad()
def channel_importance(f: Tensor) -> Tensor:
    """Importance of each channel of ``f`` (N, C, H, W): mean over batch and positions of the map l2-normalised
    over its positions. Returns a float32 tensor of shape (C,)."""
    with _no_autocast(f):
        return F.normalize(f.float().flatten(2), dim=2).mean(dim=(0, 2))


def width_loss(feats: Sequence[Tensor], detach_top: bool = True) -> Tensor:
    """Width-wise TFD: in every map, the top half of the channels by importance supervises the next half.

    Args:
        feats: list of feature maps ``(N, C, H, W)``. Maps with ``C < 2`` are skipped.
        detach_top: detach the important (target) channels -- the paper's intent. ``False`` reproduces the
            released script, where the target channels also receive gradient.

    Returns:
        A float32 scalar: the mean over the non-skipped maps of ``MSE(f[:, ranks h..2h-1], f[:, ranks 0..h-1])``
        with ``h = C // 2``; zero when every map is skipped.
    """
    _check_maps(feats, "width_loss", 1)
    with _no_autocast(feats[0]):
        total = feats[0].new_zeros((), dtype=torch.float32)
        used = 0
        for f in feats:
            c = f.shape[1]
            if c < 2:
                continue
            h = c // 2
            order = torch.argsort(channel_importance(f), descending=True, stable=True)
            f32 = f.float()
            top = f32.index_select(1, order[:h])
            low = f32.index_select(1, order[h : 2 * h])
            total = total + F.mse_loss(low, top.detach() if detach_top else top)
            used += 1
        return total / used if used else total


class TFDLoss(nn.Module):
    """``alpha * depth_loss + beta * width_loss`` on a list of stage features.

    Returns a dict of named, already weighted terms: ``{"depth": alpha*L_depth, "width": beta*L_width,
    "total": sum}``. A term whose weight is 0 is not computed (it is returned as a zero).

    Args:
        alpha: weight of the depth-wise loss (paper: 0.005).
        beta: weight of the width-wise loss (paper: 0.0004).
        direction: depth-wise supervision direction, see :func:`depth_loss`.
        detach_top: freeze the width-wise target channels, see :func:`width_loss`.
        width_stages: indices of the maps the width-wise loss uses (default: all).
    """

    def __init__(
        self,
        alpha: float = 5e-3,
        beta: float = 4e-4,
        direction: str = "top_down",
        detach_top: bool = True,
        width_stages: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown TFD direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"TFD weights must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.direction = direction
        self.detach_top = bool(detach_top)
        self.width_stages = None if width_stages is None else [int(i) for i in width_stages]

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        _check_maps(feats, "TFDLoss", 1)
        zero = feats[0].new_zeros((), dtype=torch.float32)
        depth = self.alpha * depth_loss(feats, self.direction) if self.alpha > 0 else zero
        if self.beta > 0:
            maps = feats if self.width_stages is None else [feats[i] for i in self.width_stages]
            width = self.beta * width_loss(maps, self.detach_top)
        else:
            width = zero
        return {"depth": depth, "width": width, "total": depth + width}

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, direction={self.direction!r}, "
                f"detach_top={self.detach_top}, width_stages={self.width_stages}")
