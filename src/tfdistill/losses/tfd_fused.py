"""Both TFD losses as one compiled region: a few fused kernels forward and backward instead of ~125 small ones.

On a GPU a ResNet32 train step at batch 64 replays from a CUDA graph in ~2.5 ms, and the eager TFD losses of
:mod:`tfdistill.losses.tfd` add ~125 kernels to it (pooling, crops, differences, reductions, the importance, a
sort and two gathers per map, forward and backward): 0.34 ms of loss, a TFD step 1.16x a CE step (H200, bf16).
:class:`FusedTFD` hands the losses to ``torch.compile`` as one region, so TorchInductor generates a handful of
fused Triton kernels (measured on the same H200, torch 2.11, ``benchmarks/profile_tfd.py``: the losses' forward +
backward 343 -> 50 us at batch 64 and 816 -> 147 us at batch 512; TFD/CE step 1.16 -> 1.03 and 1.13 -> 1.05).

What the region computes (:func:`weighted_losses` with ``dense=True``), and why it is written that way:

* **depth-wise**: :func:`~tfdistill.losses.tfd.depth_loss` itself (pooling views and crops fuse into the
  reductions of the differences);
* **width-wise** with the paper's frozen target (``detach_top=True``): :func:`width_loss_dense`, the same value
  without a sort or a scatter -- the ranking comes from ``C x C`` comparisons (:func:`ranked_partners`, exactly
  ``argsort(descending=True, stable=True)``), every channel's partner is gathered from the detached map and the
  squared differences are masked to the student channels, so the backward is one dense elementwise kernel per map.
  ``detach_top=False`` (the released script) keeps :func:`~tfdistill.losses.tfd.width_loss`'s gathers;
* the weights ``[alpha * ramp, beta * ramp]`` come in as one float32 tensor and are applied inside the region
  (a tensor, so TFD's ramp changes them in place: no recompilation, and a captured CUDA graph stays valid).

Properties:

* **Values** equal the eager functions' up to float32 rounding (reductions summed in another order; tested). Two
  channels whose importances agree to float32 rounding may be ranked in the other order, as in the eager code.
* **Static shapes** (``dynamic=False``): one compilation per feature-map shape, dtype and layout (~8-17 s on the
  H200's 16 cores, then cached); K packed runs with the same student share the compiled kernels.
* **Fallback**: the first call with a new input signature (shapes, strides, dtypes, grad mode, autocast: what the
  compiled code's guards check) compiles the forward *and* the backward on detached copies of the maps (a probe
  whose result is discarded) inside ``try``, so nothing compiles mid-step; if torch.compile is unavailable or fails
  (no Triton or C++ compiler, an old torch), it warns once and every call runs the eager functions, with the eager
  values exactly. After a successful probe the compiled region is used, and it is captured in the step's CUDA
  graph like any kernel. Probes allow the region's code 64 cache entries instead of dynamo's 8 (a sweep in one
  process builds many TFD runs, each configuration and shape one entry).
* Inside an outer ``torch.compile`` (``engine.compile=true`` compiles the whole step) the region's code is traced
  into the outer graph instead of being compiled on its own.
* ``method.tfd.fuse=auto`` (the default) compiles on CUDA only (:func:`fuse_available`): on a CPU the eager losses
  are already within a few % of a CE step and inductor's C++ build costs tens of seconds.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Sequence

import torch
from torch import Tensor

from ..compiling import options_from_env, room_for_recompiles
from ..errors import is_compile_error
from ..precision import autocast
from .tfd import _check_maps, _importance, depth_loss, width_loss

__all__ = ["tfd_losses", "weighted_losses", "ranked_partners", "width_loss_dense", "FusedTFD", "FUSE_MODES", "fuse_available",
           "inductor_options"]

FUSE_MODES = ("auto", "true", "false")
"""``method.tfd.fuse``: ``auto`` = compile where it pays off and can work (CUDA with Triton), ``true`` = always
try (eager fallback with a warning), ``false`` = the eager functions."""


def tfd_losses(feats: Sequence[Tensor], direction: str = "top_down", detach_top: bool = True,
               width_stages: Sequence[int] | None = None, depth: bool = True, width: bool = True,
               dense: bool = False) -> tuple[Tensor, Tensor]:
    """Unweighted ``(L_depth, L_width)`` of :func:`depth_loss` / :func:`width_loss` in one call (a term not asked
    for is a float32 zero). ``width_stages`` picks the maps of the width-wise loss (default: all). ``dense``: the
    width-wise loss with a frozen target in the compiled region's form, :func:`width_loss_dense` (equal up to
    float32 rounding)."""
    zero = feats[0].new_zeros((), dtype=torch.float32)
    d = depth_loss(feats, direction) if depth else zero
    if width:
        maps = list(feats) if width_stages is None else [feats[i] for i in width_stages]
        w = width_loss_dense(maps) if dense and detach_top else width_loss(maps, detach_top)
    else:
        w = zero
    return d, w


def weighted_losses(feats: Sequence[Tensor], weights: Tensor, **kw) -> tuple[Tensor, Tensor]:
    """``(weights[0] * L_depth, weights[1] * L_width)`` of :func:`tfd_losses` (``kw``): what :class:`FusedTFD`
    returns, eagerly or, with ``dense=True``, as the compiled region."""
    d, w = tfd_losses(feats, **kw)
    return weights[0] * d, weights[1] * w


def ranked_partners(importance: Tensor) -> tuple[Tensor, Tensor]:
    """Sort-free form of TFD's width-wise pairing, for a (C,) importance vector.

    Returns ``(partner, student)``: ``student[c]`` is true for the channels ranked ``h .. 2h-1`` (``h = C // 2``;
    ranks by descending importance, ties by channel index -- exactly ``argsort(descending=True, stable=True)``)
    and ``partner[c]`` is the channel ranked ``rank[c] - h`` (0 where ``student[c]`` is false). Computed with
    ``C x C`` comparisons and sums: a fused kernel or two in a compiled region instead of a sort's several."""
    c = importance.shape[0]
    h = c // 2
    idx = torch.arange(c, device=importance.device)
    a, b = importance[:, None], importance[None, :]
    ahead = (b > a) | ((b == a) & (idx[None, :] < idx[:, None]))  # [i, j]: channel j is ranked before channel i
    rank = ahead.sum(dim=1)
    student = (rank >= h) & (rank < 2 * h)
    match = rank[None, :] == (rank[:, None] - h)  # [i, j]: channel j is the one channel i mimics
    partner = torch.where(match, idx[None, :], 0).sum(dim=1)
    return partner, student


def width_loss_dense(feats: Sequence[Tensor]) -> Tensor:
    """:func:`~tfdistill.losses.tfd.width_loss` with ``detach_top=True``, written for a compiler: per map, the
    partner of every channel is gathered from the detached map and the squared differences are summed over the
    student channels only (a mask), so the backward is one dense elementwise kernel per map (no scatter, no sort).
    Equal to ``width_loss(feats, True)`` up to float32 rounding (the sum runs in another order)."""
    _check_maps(feats, "width_loss", 1)
    with autocast("off", feats[0].device):
        terms = []
        for f in feats:
            n, c, hh, ww = f.shape
            if c < 2:
                continue
            with torch.no_grad():
                partner, student = ranked_partners(_importance(f))
                target = f.detach().index_select(1, partner)
            diff = f.float() - target.float()
            sq = torch.where(student.view(1, c, 1, 1), diff.square(), 0.0)
            terms.append(sq.sum() / (n * (c // 2) * hh * ww))
        return torch.stack(terms).mean() if terms else feats[0].new_zeros((), dtype=torch.float32)


def fuse_available(device: torch.device) -> tuple[bool, str]:
    """Whether ``fuse=auto`` compiles on ``device``, and why not: only on CUDA (on a CPU the eager losses are
    already within a few % of a CE step, and inductor's C++ build costs tens of seconds) with Triton importable,
    and not while deterministic algorithms are requested."""
    if os.environ.get("TFDISTILL_NO_FUSE"):
        return False, "TFDISTILL_NO_FUSE is set"
    if device.type != "cuda":
        return False, f"device {device.type} (fuse=auto compiles on CUDA only)"
    if torch.are_deterministic_algorithms_enabled():  # generated scatter kernels may add atomically
        return False, "deterministic algorithms are on (engine.deterministic=true)"
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - CUDA builds of torch ship Triton
        return False, "Triton is not installed"
    return True, ""


def inductor_options() -> dict:
    """The inductor options of the region: ``TFDISTILL_FUSE_OPTIONS`` (a JSON object) if set, else
    ``combo_kernels`` where this torch has it (inductor then launches independent small kernels -- the per-map
    reductions -- as one; measured on an H200: TFD/CE step 1.047 -> 1.032 at batch 64, 1.061 -> 1.049 at 512)."""
    opts = options_from_env("TFDISTILL_FUSE_OPTIONS")
    if opts is not None:
        return opts
    try:
        from torch._inductor import config as inductor_config
    except Exception:  # pragma: no cover - a torch without inductor: the compile falls back anyway
        return {}
    return {"combo_kernels": True} if hasattr(inductor_config, "combo_kernels") else {}


def _signature(feats: Sequence[Tensor], weights: Tensor) -> tuple:
    """What a compiled region's guards depend on: the maps' shapes, strides, dtypes and grad flags, the device, the
    weights tensor, grad mode and autocast state. A call with a new signature is probed (compiled) first."""
    dev = feats[0].device.type
    autocast = torch.is_autocast_enabled(dev)
    return (tuple((tuple(f.shape), f.stride(), f.dtype, f.requires_grad) for f in feats), str(feats[0].device),
            weights.dtype, str(weights.device), torch.is_grad_enabled(), autocast,
            torch.get_autocast_dtype(dev) if autocast else None)


class FusedTFD:
    """Callable ``(feats, weights) -> (weights[0] * L_depth, weights[1] * L_width)`` with ``weights`` a float32
    tensor ``[w_depth, w_width]`` (a tensor, so changing it -- TFD's ramp -- neither recompiles nor invalidates a
    captured CUDA graph). ``compile=True``: the region through ``torch.compile`` with an eager fallback (see the
    module docs); otherwise, and after a fallback, exactly the eager :func:`tfd_losses` times the weights.

    ``mode`` after the first call: ``"compiled"`` or ``"eager"`` (``"pending"`` before it); ``reason`` says why a
    compile was not used. The inductor options are :func:`inductor_options`.
    """

    def __init__(self, direction: str = "top_down", detach_top: bool = True,
                 width_stages: Sequence[int] | None = None, depth: bool = True, width: bool = True,
                 compile: bool = True, backend: str | None = None) -> None:
        self.kw = dict(direction=direction, detach_top=bool(detach_top),
                       width_stages=None if width_stages is None else tuple(int(i) for i in width_stages),
                       depth=bool(depth), width=bool(width))
        self.backend = backend or os.environ.get("TFDISTILL_COMPILE_BACKEND", "inductor")
        self.mode = "pending" if compile else "eager"
        self.reason = "" if compile else "fuse=false"
        self._fn = None
        self._probed: set[tuple] = set()
        self.compile_s = 0.0
        """Seconds spent compiling (all probes)."""

    def __call__(self, feats: Sequence[Tensor], weights: Tensor) -> tuple[Tensor, Tensor]:
        _check_maps(feats, "TFD", 1)
        if self.mode != "eager":
            if torch.compiler.is_compiling():
                # traced by an outer torch.compile (engine.compile=true): the region's code joins the outer graph
                return weighted_losses(list(feats), weights, dense=True, **self.kw)
            sig = _signature(feats, weights)
            if sig not in self._probed:
                self._probe(feats, weights)
                if self.mode == "compiled":
                    self._probed.add(sig)
        if self.mode == "compiled":
            try:
                return self._fn(list(feats), weights)
            except Exception as exc:  # a recompile the probes did not foresee, and it failed: go on eagerly
                if not is_compile_error(exc):
                    raise
                self._fail(exc)
        return weighted_losses(feats, weights, **self.kw)

    def _probe(self, feats: Sequence[Tensor], weights: Tensor) -> None:
        """Compile the region for this call's signature, forward and backward, on detached copies of the maps (the
        result is discarded), so that no compilation happens mid-step; on failure, warn once and stay eager."""
        kw = self.kw
        t0 = time.perf_counter()
        try:
            if self._fn is None:
                def region(maps: list[Tensor], weights: Tensor) -> tuple[Tensor, Tensor]:
                    return weighted_losses(maps, weights, dense=True, **kw)

                options = inductor_options() if self.backend == "inductor" else {}
                self._fn = torch.compile(region, backend=self.backend, dynamic=False, fullgraph=True,
                                         **({"options": options} if options else {}))
            probe = [f.detach().clone().requires_grad_(f.requires_grad) for f in feats]
            with room_for_recompiles():  # the caller's grad mode and autocast state: the same guards as the calls
                d, w = self._fn(probe, weights)
                if d.requires_grad or w.requires_grad:  # compiles the backward now, not mid-step
                    torch.autograd.grad(d + w, [p for p in probe if p.requires_grad], allow_unused=True)
        except Exception as exc:  # no Triton/compiler, an op inductor cannot lower, an unsupported torch, ...
            self._fail(exc)
            return
        finally:
            self.compile_s += time.perf_counter() - t0
        self.mode = "compiled"

    def _fail(self, exc: BaseException) -> None:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        self.mode, self.reason, self._fn = "eager", f"torch.compile failed ({type(exc).__name__}: {msg})", None
        warnings.warn(f"TFD fuse: {self.reason}; the TFD losses run eagerly", RuntimeWarning, stacklevel=4)
