"""Teacher-free Feature Distillation losses (Li, ECCV 2022).

Two pure tensor functions, the eager reference definition of TFD:

* :func:`depth_loss` -- depth-wise TFD: deeper stage features supervise shallower ones.
* :func:`width_loss` -- width-wise TFD: a stage's important channels supervise its less important ones.

:class:`~tfdistill.losses.tfd_loss.TFDLoss` (``alpha * depth + beta * width`` as named terms) is the module over
these functions and their compiled form (:mod:`tfdistill.losses.tfd_fused`).

Where the sources differ, and what each option follows
------------------------------------------------------
* **Distance.** The paper writes a squared l2 norm; like the released script we use the *mean* squared error
  (``F.mse_loss`` with mean reduction), which only rescales the loss weights.
* **Depth pairs.** The paper (Eq. 2) sums over all pairs ``i < j`` and divides by the number of pairs ``m``;
  :func:`depth_loss` does exactly that. Alignment is "pooling and channel cropping": the spatially larger map is
  adaptively average-pooled to the smaller one's size and both are cropped to their first ``min(C_i, C_j)``
  channels (cropping before pooling gives identical values and is cheaper, so we crop first). Maps of one size (a
  ViT's or Mixer's token grids laid out as (N, C, h, w) by the feature taps) are not pooled at all: each pair is
  compared position by position on the common channels, so the loss stays well defined; the width-wise term is
  per map and does not depend on sizes (``tests/test_taps.py`` checks both against values written out there).
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

Both losses compute in float32 even under autocast, contain no Python loop over samples and no host
synchronisation (they can be captured in a CUDA graph and traced by ``torch.compile`` / ``torch.func.vmap``).

How the fast path works (values equal to the definitions above up to float32 rounding)
--------------------------------------------------------------------------------------
* **No float32 copy of a feature map.** bf16/fp16 maps are never upcast as a whole: pooling reads them through a
  float32-accumulating reduction (``mean(dtype=float32)`` on a ``(N, C, h, kh, w, kw)`` view), the differences
  of a pooled float32 map and a bf16 map come from a type-promoting subtraction (float32 result, the bf16 operand
  read element by element; ``mse_loss`` is never given mixed dtypes, whose backward older torch lacks), and channel
  importance uses two float32 reductions (``sum`` and ``vector_norm``) instead of normalising a copy of the map:
  ``mean_{n,p} f/||f||_p = mean_n (sum_p f) / ||f||_p / (H W)``.
* **One pooling per map and size for all pairs.** Depth-wise pairs share their pooled maps: each map is cropped
  to the most channels any pair needs, pooled once to each smaller size some pair asks for, and a smaller size is
  pooled from the already pooled map when the bins nest evenly (32x32 -> 16x16 -> 8x8 instead of 32x32 -> 8x8
  twice); every pair then takes a channel crop (a view) of those tensors.
* **No permuted copy of a map.** Width-wise, only the ``2 * (C // 2)`` ranked channels are gathered (in the map's
  own dtype); the target half is gathered under ``no_grad`` when it is detached, so the backward pass scatters
  into the student channels only.
* Ranking ties: the importance is the same number computed in a different order, so two channels whose
  importances agree to float32 rounding may be ranked in the other order than by the literal formula.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import autocast

DIRECTIONS = ("top_down", "bottom_up", "bidirectional")

__all__ = ["DIRECTIONS", "aligned_pairs", "ranked_halves", "depth_loss", "width_loss", "channel_importance"]


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


def _low_precision(t: Tensor) -> bool:
    return t.dtype in (torch.float16, torch.bfloat16)


def _as_input(t: Tensor) -> Tensor:
    """float32 and bf16/fp16 maps are read as they are; any other dtype is converted to float32 (like ``.float()``)."""
    return t if t.dtype == torch.float32 or _low_precision(t) else t.float()


class _EvenAvgPool(torch.autograd.Function):
    """Average pooling with uniform ``kh x kw`` bins over the last two dims as a sum of strided views, in float32.

    The CPU path: ``avg_pool2d`` on NCHW maps and its backward (zero fill + scatter) are several times slower
    than ``kh * kw`` strided adds forward and ``kh * kw`` strided copies backward. bf16/fp16 inputs accumulate
    into a float32 output (no float32 copy of the input); the gradient comes back in the input's dtype. Any
    number of leading dims, so under ``vmap`` the rule just pools the batched tensor; works with ``torch.compile``.
    """

    @staticmethod
    def forward(x: Tensor, kh: int, kw: int) -> Tensor:  # type: ignore[override]
        out = None
        for i in range(kh):
            for j in range(kw):
                part = x[..., i::kh, j::kw]
                if out is None:
                    out = part.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                else:
                    out.add_(part)
        # out of place: returning the result of an in-place ``mul_`` made torch.compile's AOTAutograd (torch 2.4 to
        # 2.11) drop this Function's backward -- zero gradients
        return out * (1.0 / (kh * kw))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, kh, kw = inputs
        ctx.kh, ctx.kw, ctx.dtype = kh, kw, x.dtype

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # every input position of a bin receives the bin's gradient / (kh * kw): one broadcast copy
        kh, kw = ctx.kh, ctx.kw
        g = (grad * (1.0 / (kh * kw))).to(ctx.dtype)
        *lead, oh, ow = g.shape
        return g[..., :, None, :, None].expand(*lead, oh, kh, ow, kw).reshape(*lead, oh * kh, ow * kw), None, None

    @staticmethod
    def vmap(info, in_dims, x: Tensor, kh: int, kw: int):
        if in_dims[0] is None:
            return _EvenAvgPool.apply(x, kh, kw), None
        return _EvenAvgPool.apply(x.movedim(in_dims[0], 0), kh, kw), 0


_MAX_STRIDED_BINS = 16  # above this many positions per bin the strided sum stops paying off


def _pool(t: Tensor, size: tuple[int, int], strided: bool | None = None) -> Tensor:
    """Adaptive average pooling of ``t`` (N, C, H, W) to ``size``, returned in float32.

    When the size divides the map evenly the bins are uniform, and no float32 copy of a bf16/fp16 map is made:
    on CUDA float32 maps use ``avg_pool2d`` and bf16/fp16 maps a float32-accumulating ``mean`` over a
    (N, C, h, kh, w, kw) view (one kernel each way); elsewhere :class:`_EvenAvgPool`. Otherwise the (cropped)
    map is upcast and ``adaptive_avg_pool2d`` applies PyTorch's bin rule. ``strided`` forces the choice between
    :class:`_EvenAvgPool` and the CUDA formulation (default: by device).
    """
    n, c, h, w = t.shape
    oh, ow = size
    if h % oh == 0 and w % ow == 0:
        kh, kw = h // oh, w // ow
        if strided is None:  # (a compiler fuses the view + mean formulation better than a custom Function)
            strided = t.device.type != "cuda" and kh * kw <= _MAX_STRIDED_BINS and not torch.compiler.is_compiling()
        if strided:
            return _EvenAvgPool.apply(t, kh, kw)
        if t.dtype == torch.float32:
            return F.avg_pool2d(t, (kh, kw))
        return t.view(n, c, oh, kh, ow, kw).mean(dim=(3, 5), dtype=torch.float32)
    return F.adaptive_avg_pool2d(t.float(), size)


def _nests(big: tuple[int, int], small: tuple[int, int]) -> bool:
    return big[0] % small[0] == 0 and big[1] % small[1] == 0


class _Aligner:
    """Pooled, channel-cropped versions of a list of maps, each computed once and shared by all pairs."""

    def __init__(self, feats: Sequence[Tensor], pairs: list[tuple[int, int]]) -> None:
        self.feats = [_as_input(f) for f in feats]
        self.sizes = [(int(f.shape[2]), int(f.shape[3])) for f in self.feats]
        need: dict[int, int] = {}  # channels each map must keep in its pooled versions
        want: dict[int, set] = {}  # the sizes each map is pooled to
        for i, j in pairs:
            c = min(self.feats[i].shape[1], self.feats[j].shape[1])
            size = self.target(i, j)
            for m in (i, j):
                if self.sizes[m] != size:
                    need[m] = max(need.get(m, 0), c)
                    want[m] = want.get(m, set()) | {size}  # (no setdefault: torch 2.4's dynamo cannot trace it)
        self.pooled: dict[tuple[int, tuple[int, int]], Tensor] = {}
        for m, sizes in want.items():
            own = self.sizes[m]
            base = self.feats[m][:, : need[m]]
            done: list[tuple[int, int]] = []
            for size in sorted(sizes, key=lambda s: -s[0] * s[1]):  # large to small, so small ones can chain
                src, src_size = base, own
                if _nests(own, size):
                    for prev in done:  # the smallest already pooled map whose bins nest evenly into `size`
                        if _nests(own, prev) and _nests(prev, size) and prev[0] * prev[1] < src_size[0] * src_size[1]:
                            src, src_size = self.pooled[(m, prev)], prev
                self.pooled[(m, size)] = _pool(src, size)
                done.append(size)

    def target(self, i: int, j: int) -> tuple[int, int]:
        (hi, wi), (hj, wj) = self.sizes[i], self.sizes[j]
        return (min(hi, hj), min(wi, wj))

    def get(self, m: int, size: tuple[int, int], c: int) -> Tensor:
        t = self.feats[m] if self.sizes[m] == size else self.pooled[(m, size)]
        return t[:, :c]


def _mse(student: Tensor, target: Tensor) -> Tensor:
    """Mean squared error in float32, for operands of any mix of float32 / bf16 / fp16.

    Equal float32 operands go to ``mse_loss``. Otherwise the difference is formed by a type-promoting
    subtraction, which reads a bf16/fp16 operand element by element into the float32 result (no float32 copy of
    the operand); autograd hands each operand its gradient in its own dtype. ``mse_loss`` itself is never fed
    mixed dtypes: its backward has no mixed-dtype support on several supported torch versions (2.11 raises
    "Found dtype BFloat16 but expected Float"), and a low-precision pair would be subtracted in low precision.
    """
    if student.dtype == torch.float32 and target.dtype == torch.float32:
        return F.mse_loss(student, target)
    if student.dtype != torch.float32 and target.dtype != torch.float32:
        student = student.float()  # two low-precision operands: the subtraction must happen in float32
    return torch.sub(student, target).square().mean()


def aligned_pairs(feats: Sequence[Tensor], direction: str, what: str):
    """Every depth-wise pair ``i < j`` of ``feats`` as ``(shallow, deep)``: pooled to the smaller map's size and
    cropped to the common channels, in float32 or the maps' own low-precision dtype (shared pooled maps, see the
    module docs). ``direction`` and the maps are checked now (``what`` names the caller in errors); the pairs are
    computed while the returned iterator is consumed, which the caller does with autocast off."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown TFD direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    _check_maps(feats, what, 2)
    pairs = [(i, j) for i in range(len(feats) - 1) for j in range(i + 1, len(feats))]

    def aligned():
        al = _Aligner(feats, pairs)
        for i, j in pairs:
            c = min(al.feats[i].shape[1], al.feats[j].shape[1])
            size = al.target(i, j)
            yield al.get(i, size, c), al.get(j, size, c)

    return aligned()


def depth_loss(feats: Sequence[Tensor], direction: str = "top_down") -> Tensor:
    """Depth-wise TFD over stage features ``feats`` (shallow to deep): mean over all pairs ``i < j``.

    Args:
        feats: list of ``L >= 2`` feature maps ``(N, C_l, H_l, W_l)`` ordered from shallow to deep.
        direction: ``"top_down"`` (the deeper map is the detached target; the paper's choice),
            ``"bottom_up"`` (the shallower map is the detached target) or ``"bidirectional"`` (the sum of both).

    Returns:
        A float32 scalar: ``1/m * sum_{i<j} MSE(align(f_i), align(f_j))`` with ``m = L(L-1)/2``.
    """
    pairs = aligned_pairs(feats, direction, "depth_loss")
    with autocast("off", feats[0].device):
        terms = []
        for shallow, deep in pairs:
            if direction == "top_down":
                terms.append(_mse(shallow, deep.detach()))
            elif direction == "bottom_up":
                terms.append(_mse(deep, shallow.detach()))
            else:
                # top_down + bottom_up: the value is twice the MSE, and each side receives exactly the
                # gradient of the term in which it is the student -- i.e. the gradient of one undetached MSE.
                mse = _mse(shallow, deep)
                terms.append(mse + mse.detach())
        return torch.stack(terms).mean()


def _importance(f: Tensor) -> Tensor:
    """(C,) float32 channel importance without normalising a copy of ``f`` (see module docs)."""
    f = _as_input(f)
    h, w = f.shape[2], f.shape[3]
    s = f.sum(dim=(2, 3), dtype=torch.float32)
    norm = torch.linalg.vector_norm(f, dim=(2, 3), dtype=torch.float32)
    return (s / norm.clamp_min(1e-12)).mean(dim=0) / (h * w)


@torch.no_grad()
def channel_importance(f: Tensor) -> Tensor:
    """Importance of each channel of ``f`` (N, C, H, W): mean over batch and positions of the map l2-normalised
    over its positions. Returns a float32 tensor of shape (C,)."""
    with autocast("off", f.device):
        return _importance(f)


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
    halves = ranked_halves(feats, detach_top, "width_loss")
    with autocast("off", feats[0].device):
        terms = [_mse(low, top) for low, top in halves]
        return torch.stack(terms).mean() if terms else feats[0].new_zeros((), dtype=torch.float32)


def ranked_halves(feats: Sequence[Tensor], detach_top: bool, what: str):
    """Per map with ``C >= 2`` channels: ``(low, top)``, the channels ranked ``h .. 2h-1`` and ``0 .. h-1`` by
    importance (``h = C // 2``), gathered in the map's own dtype; ``top`` is gathered without gradient when
    ``detach_top``. The maps are checked now (``what`` names the caller in errors); the halves are computed while
    the returned iterator is consumed, which the caller does with autocast off."""
    _check_maps(feats, what, 1)

    def halves():
        for f in feats:
            c = f.shape[1]
            if c < 2:
                continue
            h = c // 2
            f = _as_input(f)
            with torch.no_grad():
                order = torch.argsort(_importance(f), descending=True, stable=True)
            low = f.index_select(1, order[h : 2 * h])
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_top):
                top = f.index_select(1, order[:h])
            yield low, top

    return halves()
