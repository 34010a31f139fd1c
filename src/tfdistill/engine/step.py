"""One optimizer step of a module that maps ``(images, targets, index)`` to ``(logits, terms)``: eager or compiled.

:class:`TrainStep` runs one optimizer step -- forward (under autocast), loss, backward, optimizer -- for any module
that maps ``(images, targets, index) -> (logits, {name: weighted term})`` (a :class:`~tfdistill.methods.Method`,
its DDP wrapper, or a pre-stage's loss). It knows nothing about methods, and nothing about CUDA graphs: the K steps
of a group are stepped -- one after another, or replayed from one CUDA graph -- by
:class:`~tfdistill.engine.graphs.GraphRunner`.

Modes (``engine.compile``; ``engine.cuda_graphs`` is :mod:`.graphs`')
--------------------------------------------------------------------
* **eager** -- exactly the classic step: ``zero_grad(set_to_none) -> scaler.scale(loss).backward() ->
  scaler.step(opt) -> scaler.update()``.
* **compile** -- the forward + loss is ``torch.compile``d (``dynamic=False``: batches have a fixed shape);
  AOTAutograd compiles the matching backward; the optimizer stays the eager (foreach) SGD. If compilation is
  unsupported or fails (no C++ compiler, an op inductor cannot lower, ...), the step warns once and continues
  eagerly (the step that failed is redone eagerly; if the failure came from the backward, that step's BatchNorm
  running statistics were updated twice -- the only trace it leaves). ``TFDISTILL_COMPILE_BACKEND`` /
  ``TFDISTILL_COMPILE_MODE`` override the backend (default ``inductor``) and mode, or ``TFDISTILL_COMPILE_OPTIONS``
  gives compiler options instead of a mode (a JSON object, e.g. ``{"coordinate_descent_tuning": true}``: 1.04x on
  an H100 at batch 512, after ~2 minutes of compilation instead of ~40 s). Every TrainStep compiles the
  same code, so the runs of a packed group or of a sweep in one process share dynamo's cache for it: runs of one
  architecture reuse one graph, and the cache holds up to 64 entries (not dynamo's 8, past which the later runs
  would silently step eagerly; :func:`tfdistill.compiling.room_for_recompiles`). Measured on an H100: 1.26x at
  batch 512 and 1.28x for 8 packed runs at batch 64, after ~30-50 s of compilation (``benchmarks/README.md``).
  With CUDA graphs as well, the compiled forward/backward is what gets captured.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from ..compiling import options_from_env, with_room_for_recompiles
from ..errors import ConfigError, is_compile_error
from ..precision import autocast

__all__ = ["TrainStep", "StepOut", "total_loss", "FP16_GRAPHS"]

FP16_GRAPHS = ("engine.cuda_graphs=true cannot be combined with engine.precision=fp16: the GradScaler synchronises "
               "with the host every step; use engine.precision=bf16")

StepOut = tuple[Tensor, Tensor, dict[str, Tensor]]
"""``(loss, logits, terms)`` of one step."""


def total_loss(terms: dict[str, Tensor]) -> Tensor:
    """The sum of all weighted terms, in float32 (for K stacked models: summed over the models too)."""
    return torch.stack([v.float() for v in terms.values()]).sum()


class TrainStep:
    """Runs train steps of ``model`` with ``optimizer`` (+ ``scaler``), eagerly or compiled.

    Args:
        model: maps ``(images, targets, index)`` to ``(logits, terms)``.
        optimizer: the optimizer over the trained parameters (SGD for CUDA graphs).
        scaler: a ``torch.amp.GradScaler`` (enabled only for fp16).
        device: the training device.
        precision: ``fp32 | bf16 | fp16`` (autocast dtype).
        compile: ``torch.compile`` the forward + loss.
        cuda_graphs: this run asks for CUDA graphs (``engine.cuda_graphs``); whether it gets them is decided by the
            :class:`~tfdistill.engine.graphs.GraphRunner` that steps it, which then calls :meth:`set_graphed`.
        distributed: running under DDP (no CUDA graphs then).
        log: called with each one-line notice (fallbacks); it is also issued as a ``RuntimeWarning``.
        loss_fn: ``terms -> scalar`` that is backpropagated (default :func:`total_loss`).
        watch: the module whose train/eval modes are part of the step's :meth:`structure` (default: ``model`` if it
            is one).
        after_backward: called after every backward, before the optimizer step (a pre-stage under DDP
            all-reduces its gradients there).
    """

    def __init__(self, model: Callable[..., Any], optimizer: torch.optim.Optimizer, scaler: Any, *,
                 device: torch.device, precision: str = "fp32", compile: bool = False, cuda_graphs: bool = False,
                 distributed: bool = False, log: Callable[[str], None] | None = None,
                 loss_fn: Callable[[dict[str, Tensor]], Tensor] = total_loss,
                 watch: torch.nn.Module | None = None,
                 after_backward: Callable[[], None] | None = None) -> None:
        self.model = model
        self.after_backward = after_backward
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = torch.device(device)
        self.precision = precision
        self.loss_fn = loss_fn
        self.watch = watch if watch is not None else (model if isinstance(model, torch.nn.Module) else None)
        self.distributed = bool(distributed)
        self._log = log
        self._warned: set[str] = set()
        self.compile_requested = bool(compile)
        self.graphs_requested = bool(cuda_graphs)
        if self.graphs_requested and self.device.type == "cuda" and precision == "fp16":
            raise ConfigError(FP16_GRAPHS)  # bad input: refused while the run is built, before its folder exists
        self.graphed = False
        """Whether a graph runner replays this step from a CUDA graph (see :meth:`set_graphed`)."""
        self.steps_taken = 0
        """Steps this object ran itself (eager or compiled; never the replays of a graph)."""
        self._capturable = False
        self._eager_forward = self._make_forward(cache=True)
        self.forward = self._eager_forward
        """``(x, y, idx) -> (loss, logits, terms)`` under autocast, compiled or not (what a graph captures)."""
        self.compiled = False
        self._compile_checked = False
        if compile:
            self._setup_compile()
        if self.device.type == "cuda" and self.compiled and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once

    # ------------------------------------------------------------------ notices
    def notice(self, key: str, msg: str) -> None:
        """Issue ``msg`` once per step object (per ``key``)."""
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if self._log is not None:
            self._log(f"note: {msg}")

    @property
    def mode(self) -> str:
        """``eager``, ``compiled``, ``cuda_graph`` or ``compiled+cuda_graph``: what the step ended up doing."""
        parts = (["compiled"] if self.compiled else []) + (["cuda_graph"] if self.graphed else [])
        return "+".join(parts) or "eager"

    def set_graphed(self, on: bool) -> None:
        """Called by the graph runner: it replays this step from a CUDA graph (``on``), or no longer (its capture
        failed). The first time ``on``, the forward is made capturable -- autocast's weight cache off
        (``cache_enabled=False``, as PyTorch requires for capture; numerics are unchanged) and, compiled, a compile
        mode that captures no CUDA graphs of its own (the whole step is captured by the runner) -- and cuDNN picks
        its convolution algorithms once for the fixed shapes. Off leaves the forward as it is."""
        self.graphed = bool(on)
        if not on or self._capturable:
            return
        self._capturable = True
        self._eager_forward = self._make_forward(cache=False)
        if self.compiled:  # compiled again, capturable (lazily: nothing is compiled before its first call)
            self._compile_checked = False
            self._setup_compile()
        else:
            self.forward = self._eager_forward
        if self.device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------ forward
    def _make_forward(self, cache: bool) -> Callable[[Tensor, Tensor, Tensor], StepOut]:
        model, precision, device, loss_fn = self.model, self.precision, self.device, self.loss_fn

        def forward(x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
            with autocast(precision, device, cache):
                logits, terms = model(x, y, idx)
            return loss_fn(terms), logits, terms

        return forward

    def _setup_compile(self) -> None:
        backend = os.environ.get("TFDISTILL_COMPILE_BACKEND", "inductor")
        mode = os.environ.get("TFDISTILL_COMPILE_MODE") or None
        if self._capturable and mode in ("reduce-overhead", "max-autotune"):
            # the whole step is captured by the graph runner; inductor must not capture graphs of its own inside it
            mode = None if mode == "reduce-overhead" else "max-autotune-no-cudagraphs"
        try:
            options = options_from_env("TFDISTILL_COMPILE_OPTIONS")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if options is not None and mode is not None:
            raise ConfigError("TFDISTILL_COMPILE_MODE and TFDISTILL_COMPILE_OPTIONS are both set; torch.compile takes "
                              "one of them (unset one)")
        kw = {"mode": mode} if options is None else {"options": options}
        try:
            # every TrainStep compiles the same code (one cache entry per run): a packed group of K runs or a
            # sweep's runs in one process would pass dynamo's default limit of 8 and silently run eagerly
            self.forward = with_room_for_recompiles(torch.compile(
                self._make_forward(cache=not self._capturable), backend=backend, dynamic=False, **kw))
            self.compiled = True
        except Exception as exc:  # unsupported platform / Python version / backend name
            self._compile_failed(exc)

    def _compile_failed(self, exc: BaseException) -> None:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        self.notice("compile", f"engine.compile=true: torch.compile is unavailable here ({type(exc).__name__}: "
                               f"{reason}); the train step runs eagerly")
        self.forward = self._eager_forward
        self.compiled = False

    # ------------------------------------------------------------------ steps
    def structure(self) -> tuple:
        """What a captured step's structure depends on besides tensor values: which parameters require gradients
        and which modules of ``watch`` are in training mode."""
        grads = tuple(bool(p.requires_grad) for g in self.optimizer.param_groups for p in g["params"])
        modes = tuple(m.training for m in self.watch.modules()) if self.watch is not None else ()
        return grads, modes

    def step(self, x: Tensor, y: Tensor, idx: Tensor, update: Callable[[], None] | None = None) -> StepOut:
        """One optimizer step on the batch; returns ``(loss, logits, terms)`` without a host synchronisation.

        ``update``: applies the optimizer's update after the backward instead of :meth:`optimizer_step` (the graph
        runner's warm-up steps pass one that uses device-tensor learning rates once momentum buffers exist)."""
        if self.compiled and not self._compile_checked:
            try:
                out = self._eager_step(self.forward, x, y, idx, update)
                self._compile_checked = True
                return out
            except Exception as exc:
                self._compile_failed(exc)
                self.optimizer.zero_grad(set_to_none=True)
        elif self.compiled:
            try:
                return self._eager_step(self.forward, x, y, idx, update)
            except Exception as exc:
                if not is_compile_error(exc):
                    raise
                self._compile_failed(exc)
                self.optimizer.zero_grad(set_to_none=True)
        return self._eager_step(self.forward, x, y, idx, update)

    def optimizer_step(self) -> None:
        """The optimizer's own update through the GradScaler: ``scaler.step(opt)``, ``scaler.update()``."""
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _eager_step(self, forward: Callable[..., StepOut], x: Tensor, y: Tensor, idx: Tensor,
                    update: Callable[[], None] | None) -> StepOut:
        loss, logits, terms = forward(x, y, idx)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.after_backward is not None:
            self.after_backward()
        if update is not None:
            update()
        else:
            self.optimizer_step()
        self.steps_taken += 1
        return loss, logits, terms
