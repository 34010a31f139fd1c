"""TFD with another feature-mimicking loss in place of l2 (the paper's ablation figure: SP, AT, NST, AB).

:func:`depth_loss_with` and :func:`width_loss_with` take the *same* feature pairs as
:func:`tfdistill.losses.tfd.depth_loss` and :func:`~tfdistill.losses.tfd.width_loss` and apply a pair distance
``d(student, target)`` from :data:`DISTANCES` to them (the target is always a constant):

* **depth-wise** -- for every stage pair ``i < j`` the two maps aligned exactly as in :func:`depth_loss` (the larger
  map average-pooled to the smaller one's size, both cropped to their first ``min(C_i, C_j)`` channels);
  ``top_down``: ``d(f_i, f_j)``, ``bottom_up``: ``d(f_j, f_i)``, ``bidirectional``: the sum of both; the mean over
  the ``L(L-1)/2`` pairs.
* **width-wise** -- in every map (``C >= 2``) the channels ranked ``h .. 2h-1`` by TFD's importance are the
  student, the channels ranked ``0 .. h-1`` the target (``h = C // 2``, the ``k``-th student channel paired with
  the ``k``-th target channel, as in :func:`width_loss`); the mean over the maps.

The distances (the project's baseline loss functions, each computed in float32):

* ``l2`` -- not handled here: the ``tfd`` method keeps calling :func:`depth_loss` / :func:`width_loss` (mean
  squared error), so the default is unchanged bit for bit.
* ``sp`` -- :func:`tfdistill.losses.sp.sp_pair_loss`: ``||G_s - G_t||_F^2 / b^2`` of the row-normalised batch Gram
  matrices of the two (aligned) maps.
* ``at`` -- :func:`tfdistill.losses.at.at_pair_loss` with ``p = 2``: mean squared difference of the l2-normalised
  spatial attention maps ``mean_c f^2`` (for the width halves: the attention of the low half vs the top half).
* ``nst`` -- :func:`tfdistill.losses.nst.nst_pair_loss`: squared MMD (polynomial kernel, d = 2, c = 0) between
  the l2-normalised channel maps of the two.
* ``ab`` -- :func:`tfdistill.losses.ab.ab_margin_loss` with margin 1 applied *directly* to the student map (no
  connector: TFD has no trainable modules, and the aligned maps already have equal shapes): the student's
  responses are pushed beyond +-1 on the side given by the sign of the target's responses; summed over elements
  and divided by the batch size, *without* AB's ``3/1000`` and stage weights. Our taps are post-ReLU stage outputs,
  so targets are ``> 0`` or ``= 0`` (the "negative" side means "inactive").

Scale: these distances differ from the MSE by orders of magnitude (AB's sum over elements most of all). The paper
does not give the weights it used with them; ``alpha``/``beta`` are *not* rescaled here -- sweep them.

``detach_top=False`` (the released script's undetached width target) exists only for ``l2``: these pair losses
treat their target as a constant.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..precision import autocast
from .ab import ab_margin_loss
from .at import at_pair_loss
from .nst import nst_pair_loss
from .sp import sp_pair_loss
from .tfd import aligned_pairs, ranked_halves

__all__ = ["DISTANCES", "pair_distance", "depth_loss_with", "width_loss_with"]

PairDistance = Callable[[Tensor, Tensor], Tensor]

_PAIR: dict[str, PairDistance] = {
    "sp": sp_pair_loss,
    "at": lambda s, t: at_pair_loss(s, t, 2.0),
    "nst": nst_pair_loss,
    "ab": lambda s, t: ab_margin_loss(s, t, 1.0),
}

DISTANCES = ("l2", *_PAIR)


def pair_distance(name: str) -> PairDistance:
    """``d(student, target)`` for ``name`` in ``sp | at | nst | ab`` (``l2`` is TFD's own MSE, see module docs)."""
    if name not in _PAIR:
        raise ValueError(f"unknown TFD distance {name!r} for pair_distance; valid: {', '.join(_PAIR)}")
    return _PAIR[name]


def depth_loss_with(feats: Sequence[Tensor], distance: str, direction: str = "top_down") -> Tensor:
    """Depth-wise TFD with the pair distance ``distance`` on the aligned pairs (see module docs)."""
    d = pair_distance(distance)
    pairs = aligned_pairs(feats, direction, "depth_loss_with")
    with autocast("off", feats[0].device):
        terms = []
        for shallow, deep in pairs:
            if direction == "top_down":
                terms.append(d(shallow, deep.detach()))
            elif direction == "bottom_up":
                terms.append(d(deep, shallow.detach()))
            else:
                terms.append(d(shallow, deep.detach()) + d(deep, shallow.detach()))
        return torch.stack(terms).mean()


def width_loss_with(feats: Sequence[Tensor], distance: str) -> Tensor:
    """Width-wise TFD with the pair distance ``distance``: low half (student) vs top half (constant target)."""
    d = pair_distance(distance)
    halves = ranked_halves(feats, True, "width_loss_with")
    with autocast("off", feats[0].device):
        terms = [d(low, top) for low, top in halves]
        return torch.stack(terms).mean() if terms else feats[0].new_zeros((), dtype=torch.float32)
