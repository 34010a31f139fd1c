"""Accelerated train steps: eager, ``torch.compile`` and whole-step CUDA graphs, each with a clean fallback.

:class:`Accelerator` runs one optimizer step -- forward (under autocast), loss, backward, optimizer -- for any
module that maps ``(images, targets, index) -> (logits, {name: weighted term})`` (a :class:`~tfdistill.methods.Method`,
its DDP wrapper, or a pre-stage's loss). It knows nothing about methods. :class:`StepRunner` steps the K runs of a
packed group (one Accelerator each): one after another, or on CUDA replayed from one graph (see its docs).

Modes (``engine.compile`` x ``engine.cuda_graphs``)
---------------------------------------------------
* **eager** -- exactly the classic step: ``zero_grad(set_to_none) -> scaler.scale(loss).backward() ->
  scaler.step(opt) -> scaler.update()``.
* **compile** -- the forward + loss is ``torch.compile``d (``dynamic=False``: batches have a fixed shape);
  AOTAutograd compiles the matching backward; the optimizer stays the eager (foreach) SGD. If compilation is
  unsupported or fails (no C++ compiler, an op inductor cannot lower, ...), the step warns once and continues
  eagerly (the step that failed is redone eagerly; if the failure came from the backward, that step's BatchNorm
  running statistics were updated twice -- the only trace it leaves). ``TFDISTILL_COMPILE_BACKEND`` /
  ``TFDISTILL_COMPILE_MODE`` override the backend (default ``inductor``) and mode, or ``TFDISTILL_COMPILE_OPTIONS``
  gives compiler options instead of a mode (a JSON object, e.g. ``{"coordinate_descent_tuning": true}``: 1.04x on
  an H100 at batch 512, after ~2 minutes of compilation instead of ~40 s). Every Accelerator compiles the
  same code, so the runs of a packed group or of a sweep in one process share dynamo's cache for it: runs of one
  architecture reuse one graph, and the cache holds up to 64 entries (not dynamo's 8, past which the later runs
  would silently step eagerly; :func:`tfdistill.compiling.room_for_recompiles`). Measured on an H100: 1.26x at
  batch 512 and 1.28x for 8 packed runs at batch 64, after ~30-50 s of compilation (``benchmarks/README.md``).
* **cuda_graphs** (CUDA only) -- the whole step is captured in one CUDA graph and replayed: the batch is copied
  into static input buffers (the device-resident loader's batches are already on the GPU, so this is one
  device-to-device copy per tensor), the learning rate of every param group is written into a device scalar, and
  ``graph.replay()`` runs forward, backward and the optimizer with one launch. The first ``WARMUP_STEPS`` steps
  run eagerly on a side stream (they are real training steps; cuDNN/cuBLAS pick their algorithms and the
  optimizer creates its momentum buffers; once the buffers exist -- from the second step, or right away after a
  resume -- they already apply the graph's update arithmetic, so a resumed run repeats the updates of the
  uninterrupted one), then the step is captured on the training device's side stream and replayed. At the start
  of every epoch (``new_epoch``) the graph is dropped if the step's structure changed -- which parameters require
  gradients (a component freezing a module) or which modules are in training mode -- and re-captured after a new
  warm-up into a new memory pool. Values that change between epochs must
  live in tensors updated in place -- the :class:`~tfdistill.methods.Distiller` contract (TFD's ramp, DropBlock's
  probability); a Python float read in ``forward`` would be frozen into the graph. Inside the graph the SGD update is
  :func:`sgd_step_tensor_lr`: the same arithmetic as ``torch.optim.SGD`` (foreach), except that the step is
  ``p += g * (-lr)`` with ``lr`` a device tensor (``torch.optim.SGD`` would read a Python float once and bake it
  into the graph, or call ``.item()`` on a tensor lr, which capture forbids); the momentum buffers are the
  optimizer's own state tensors, so checkpoints and resumption are unchanged. With ``compile`` as well, the
  compiled forward/backward is what gets captured.

  Refused or impossible: ``precision=fp16`` (the GradScaler reads ``found_inf`` on the host every step) raises a
  :class:`~tfdistill.errors.ConfigError` on CUDA; on a non-CUDA device, under DDP, or with an optimizer other
  than SGD, the step warns once and runs without graphs; a capture that fails (an op that synchronises with the
  host, a CPU tensor in the step, ...) warns once, redoes that step eagerly and stays eager -- and no later
  Accelerator of the same process tries to capture again.

Under autocast with graphs the autocast weight cache is disabled (``cache_enabled=False``, as PyTorch requires
for capture); numerics are unchanged.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from ..compiling import options_from_env, with_room_for_recompiles
from ..errors import ConfigError, is_compile_error
from ..precision import autocast

__all__ = ["Accelerator", "StepRunner", "sgd_step_tensor_lr", "plain_configs", "total_loss", "WARMUP_STEPS"]

WARMUP_STEPS = 3
"""Eager steps (on a side stream) before the step is captured in a CUDA graph."""

_CAPTURE_BROKEN: str | None = None
"""Why a capture failed earlier in this process (then no later Accelerator tries again: a failed capture can leave
the CUDA caching allocator with a capture it never saw end, on some torch versions)."""

StepOut = tuple[Tensor, Tensor, dict[str, Tensor]]


def total_loss(terms: dict[str, Tensor]) -> Tensor:
    """The sum of all weighted terms, in float32 (for K stacked models: summed over the models too)."""
    return torch.stack([v.float() for v in terms.values()]).sum()


@torch.no_grad()
def sgd_step_tensor_lr(optimizer: torch.optim.Optimizer, lrs: list[Tensor]) -> None:
    """One ``torch.optim.SGD`` step whose learning rates are device tensors (``lrs[i]`` for param group ``i``).

    Graph-safe: no host synchronisation, no Python scalar that changes between steps. Same arithmetic as
    SGD's foreach implementation (weight decay, momentum with dampening, Nesterov, maximize) except the last
    update, ``p += d_p * (-lr)`` instead of ``p.add_(d_p, alpha=-lr)`` (one more rounding). Momentum buffers must
    exist already (they are created by the first eager step) and are updated in place in ``optimizer.state``.
    """
    for group, lr in zip(optimizer.param_groups, lrs):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        wd, mom = float(group["weight_decay"]), float(group["momentum"])
        damp, nesterov = float(group.get("dampening", 0.0)), bool(group.get("nesterov", False))
        if group.get("maximize", False):
            grads = torch._foreach_neg(grads)
        if wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if mom != 0:
            bufs = []
            for p in params:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is None:
                    raise RuntimeError("sgd_step_tensor_lr needs existing momentum buffers (run one eager step first)")
                bufs.append(buf)
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads, alpha=1 - damp)
            grads = torch._foreach_add(grads, bufs, alpha=mom) if nesterov else bufs
        torch._foreach_add_(params, torch._foreach_mul(grads, torch.neg(lr)))


def plain_configs(model: Any) -> None:
    """Replace OmegaConf sections held by modules (a component's ``params``) by plain dataclass objects.

    Dynamo cannot trace OmegaConf's attribute access (it graph-breaks and skips the whole forward), while
    dataclass fields are constants to it. The values are identical; only the container type changes.
    """
    if not isinstance(model, torch.nn.Module):
        return
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return
    for m in model.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, (DictConfig, ListConfig)):
                try:
                    m.__dict__[name] = OmegaConf.to_object(value)
                except Exception:  # a config that cannot become an object stays as it is
                    pass


class Accelerator:
    """Runs train steps of ``model`` with ``optimizer`` (+ ``scaler``) eagerly, compiled and/or as a CUDA graph.

    Args:
        model: maps ``(images, targets, index)`` to ``(logits, terms)``.
        optimizer: the optimizer over the trained parameters (SGD for CUDA graphs).
        scaler: a ``torch.amp.GradScaler`` (enabled only for fp16).
        device: the training device.
        precision: ``fp32 | bf16 | fp16`` (autocast dtype).
        compile: ``torch.compile`` the forward + loss.
        cuda_graphs: capture the whole step in a CUDA graph (CUDA only).
        distributed: running under DDP (no CUDA graphs then).
        log: called with each one-line notice (fallbacks); it is also issued as a ``RuntimeWarning``.
        loss_fn: ``terms -> scalar`` that is backpropagated (default :func:`total_loss`).
        watch: the module whose train/eval modes are part of the captured step (default: ``model`` if it is one).
        after_backward: called after every eager backward, before the optimizer step (a pre-stage under DDP
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
        self._log = log
        self._warned: set[str] = set()
        self.compile_requested = bool(compile)
        self.graphs_requested = bool(cuda_graphs)
        self.use_graphs = False
        if cuda_graphs:
            if self.device.type != "cuda":
                self.notice("graphs", f"engine.cuda_graphs=true needs a CUDA device (this run uses "
                                      f"{self.device.type}); the train step runs without CUDA graphs")
            elif precision == "fp16":
                raise ConfigError("engine.cuda_graphs=true cannot be combined with engine.precision=fp16: the "
                                  "GradScaler synchronises with the host every step; use engine.precision=bf16")
            elif distributed:
                self.notice("graphs", "engine.cuda_graphs=true is not supported under DDP; the train step runs "
                                      "without CUDA graphs")
            elif type(optimizer) is not torch.optim.SGD:
                self.notice("graphs", f"engine.cuda_graphs=true supports SGD only (got {type(optimizer).__name__});"
                                      f" the train step runs without CUDA graphs")
            elif _CAPTURE_BROKEN is not None:
                self.notice("graphs", f"engine.cuda_graphs=true: a capture failed earlier in this process "
                                      f"({_CAPTURE_BROKEN}); the train step runs without CUDA graphs")
            else:
                self.use_graphs = True
        self._eager_forward = self._make_forward(cache=not self.use_graphs)
        self.forward = self._eager_forward
        self.compiled = False
        self._compile_checked = False
        if compile:
            self._setup_compile()
        if self.device.type == "cuda" and (self.use_graphs or self.compiled) and \
                not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once
        # CUDA graph state
        self.steps = 0
        self._graph: Any = None
        self._pool: Any = None
        self._static_in: tuple[Tensor, ...] | None = None
        self._static_out: StepOut | None = None
        self._lrs: list[Tensor] = []
        self._side: Any = None
        self._signature: tuple = ()

    # ------------------------------------------------------------------ notices
    def notice(self, key: str, msg: str) -> None:
        """Issue ``msg`` once per accelerator (per ``key``)."""
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if self._log is not None:
            self._log(f"note: {msg}")

    @property
    def mode(self) -> str:
        parts = (["compiled"] if self.compiled else []) + (["cuda_graph"] if self.use_graphs else [])
        return "+".join(parts) or "eager"

    # ------------------------------------------------------------------ forward
    def _make_forward(self, cache: bool) -> Callable[[Tensor, Tensor, Tensor], StepOut]:
        model, precision, device, loss_fn = self.model, self.precision, self.device, self.loss_fn

        def forward(x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
            with autocast(precision, device, cache):
                logits, terms = model(x, y, idx)
            return loss_fn(terms), logits, terms

        return forward

    def _setup_compile(self) -> None:
        plain_configs(self.model)
        backend = os.environ.get("TFDISTILL_COMPILE_BACKEND", "inductor")
        mode = os.environ.get("TFDISTILL_COMPILE_MODE") or None
        if self.use_graphs and mode in ("reduce-overhead", "max-autotune"):
            # the whole step is captured by hand; inductor must not capture graphs of its own inside it
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
            # every Accelerator compiles the same code (one cache entry per run): a packed group of K runs or a
            # sweep's runs in one process would pass dynamo's default limit of 8 and silently run eagerly
            self.forward = with_room_for_recompiles(torch.compile(
                self._make_forward(cache=not self.use_graphs), backend=backend, dynamic=False, **kw))
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
        """What the captured step's structure depends on besides tensor values."""
        grads = tuple(bool(p.requires_grad) for g in self.optimizer.param_groups for p in g["params"])
        modes = tuple(m.training for m in self.watch.modules()) if self.watch is not None else ()
        return grads, modes

    def new_epoch(self) -> None:
        """Called at the start of an epoch: drop the captured graph if the step's structure changed; the next steps
        then warm up again (new kernels are tuned, newly trained parameters get momentum buffers) and re-capture
        into a fresh memory pool."""
        if self._graph is not None and self.structure() != self._signature:
            self._graph = None
            self._static_out = self._static_in = None
            self._pool = None
            self.steps = 0

    def step(self, x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
        """One optimizer step on the batch; returns ``(loss, logits, terms)`` without a host synchronisation.

        With CUDA graphs the returned tensors are the graph's static outputs: read them before the next step.
        """
        if self.use_graphs:
            if self._graph is not None:
                return self._replay(x, y, idx)
            if self.steps >= WARMUP_STEPS:
                out = self._capture(x, y, idx)
                if out is not None:
                    return out
            else:
                return self._side_stream_step(x, y, idx)
        return self._plain_step(x, y, idx)

    def _plain_step(self, x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
        if self.compiled and not self._compile_checked:
            try:
                out = self._eager_step(self.forward, x, y, idx)
                self._compile_checked = True
                return out
            except Exception as exc:
                self._compile_failed(exc)
                self.optimizer.zero_grad(set_to_none=True)
        elif self.compiled:
            try:
                return self._eager_step(self.forward, x, y, idx)
            except Exception as exc:
                if not is_compile_error(exc):
                    raise
                self._compile_failed(exc)
                self.optimizer.zero_grad(set_to_none=True)
        return self._eager_step(self.forward, x, y, idx)

    def _eager_step(self, forward: Callable[..., StepOut], x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
        loss, logits, terms = forward(x, y, idx)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.after_backward is not None:
            self.after_backward()
        if self.use_graphs and self._has_momentum_buffers():
            # warm-up steps of the graph path use the graph's own update arithmetic once it can run (after the
            # first step, or right away after a resume), so a resumed run replays exactly what an uninterrupted
            # one computed at that step
            self._fill_lrs()
            sgd_step_tensor_lr(self.optimizer, self._lrs)
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.steps += 1
        return loss, logits, terms

    def _has_momentum_buffers(self) -> bool:
        for group in self.optimizer.param_groups:
            if float(group["momentum"]) == 0:
                continue
            for p in group["params"]:
                if p.grad is not None and self.optimizer.state.get(p, {}).get("momentum_buffer") is None:
                    return False
        return True

    # ------------------------------------------------------------------ CUDA graphs
    def warmup_step(self, x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
        """An eager step of the graph path (on the side stream), never a capture: :class:`StepRunner` captures the
        steps of a packed group itself once every member has warmed up."""
        return self._side_stream_step(x, y, idx) if self.use_graphs else self._plain_step(x, y, idx)

    def _side_stream_step(self, x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
        if self._side is None:
            self._side = torch.cuda.Stream(device=self.device)
        main = torch.cuda.current_stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            out = self._plain_step(x, y, idx)
        main.wait_stream(self._side)
        return out

    def _fill_lrs(self) -> None:
        if not self._lrs:
            self._lrs = [torch.zeros((), dtype=torch.float32, device=self.device)
                         for _ in self.optimizer.param_groups]
        for group, t in zip(self.optimizer.param_groups, self._lrs):
            lr = group["lr"]
            if isinstance(lr, Tensor):
                t.copy_(lr, non_blocking=True)
            else:
                t.fill_(float(lr))

    def _capture(self, x: Tensor, y: Tensor, idx: Tensor) -> StepOut | None:
        """Capture the step on this batch and replay it once; None (after a notice) if capture is impossible."""
        try:
            self._static_in = (x.clone(), y.clone(), idx.clone())
            self._fill_lrs()
            torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=True)  # grads are allocated inside the graph's memory pool
            graph = torch.cuda.CUDAGraph()
            sx, sy, sidx = self._static_in
            if self._side is None:
                self._side = torch.cuda.Stream(device=self.device)
            # our own capture stream, on the training device (torch.cuda.graph's default stream belongs to the
            # device that was current when it was first created)
            with torch.cuda.stream(self._side):
                with torch.cuda.graph(graph, pool=self._pool, stream=self._side, capture_error_mode="thread_local"):
                    loss, logits, terms = self.forward(sx, sy, sidx)
                    loss.backward()
                    sgd_step_tensor_lr(self.optimizer, self._lrs)
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            self._graph, self._static_out = graph, (loss, logits, terms)
            self._signature = self.structure()
            if self._pool is None:
                self._pool = graph.pool()
        except Exception as exc:
            self.capture_failed(exc)
            return None
        graph.replay()
        self.steps += 1
        return self._static_out

    def capture_failed(self, exc: BaseException) -> None:
        """A capture failed: warn once, clean up, stay eager (and no later capture in this process)."""
        global _CAPTURE_BROKEN
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        _CAPTURE_BROKEN = f"{type(exc).__name__}: {reason}"
        self.use_graphs = False
        self._graph = self._static_out = self._static_in = None
        self.optimizer.zero_grad(set_to_none=True)
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(self.device)
        self.notice("capture", f"engine.cuda_graphs=true: capturing the train step failed ({type(exc).__name__}:"
                               f" {reason}); the step runs without CUDA graphs (for the rest of this process)")

    def _replay(self, x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
        assert self._static_in is not None and self._static_out is not None
        if any(d.shape != s.shape or d.dtype != s.dtype for d, s in zip(self._static_in, (x, y, idx))):
            return self._plain_step(x, y, idx)  # a batch of another shape (never from the fixed-shape loaders)
        for dst, src in zip(self._static_in, (x, y, idx)):
            dst.copy_(src, non_blocking=True)
        self._fill_lrs()
        self._graph.replay()
        self.steps += 1
        return self._static_out


Batch = tuple[Tensor, Tensor, Tensor]
Scope = Callable[[bool], Any]
"""``scope(cuda)`` -> a context manager that makes a run's own random streams the global ones for one step (its
CUDA generator too when ``cuda``)."""


class StepRunner:
    """One optimizer step of each of the K runs of a packed group (K >= 1), each with its own :class:`Accelerator`.

    * K = 1: exactly ``accel.step`` (eager, compiled or its own CUDA graph); no random-state swapping.
    * K > 1, eager (the CPU; CUDA without graphs): the runs step one after another, each inside its ``scope`` --
      its own global RNG state (torch CPU + Python, and the CUDA generator on CUDA) is swapped in around its step,
      so every run draws exactly the random numbers (dropout masks, CRD negatives) it draws alone and ends
      bit-identical to its separate training.
    * K > 1 with CUDA graphs: every run warms up eagerly on its side stream (``WARMUP_STEPS`` steps, inside its
      scope), then the K steps are captured into ONE graph, run k on its own stream forked from and joined back
      into the capture stream, so the small kernels of different runs overlap and one ``replay()`` launches them
      all. Each run executes the kernels it would alone. Random draws inside the graph come from the device's one
      CUDA generator in capture order (no per-run swapping inside a graph): a packed run with dropout is then equal
      in distribution to its separate run, not bit-identical. If capture fails, a notice is issued once and the
      group steps eagerly from then on.
    """

    def __init__(self, accels: list[Accelerator], scopes: list[Scope] | None = None) -> None:
        self.accels = list(accels)
        self.scopes = list(scopes) if scopes is not None else [None] * len(self.accels)
        self._graph: Any = None
        self._outs: list[StepOut] = []
        self._signature: tuple = ()
        self._streams: tuple = ()

    @property
    def packed_graph(self) -> bool:
        return len(self.accels) > 1 and all(a.use_graphs for a in self.accels)

    @property
    def graphs(self) -> bool:
        """Whether any member may replay a CUDA graph (then no run's CUDA generator is swapped: see the class docs)."""
        return any(a.use_graphs for a in self.accels)

    @property
    def mode(self) -> str:
        if len(self.accels) == 1:
            return self.accels[0].mode
        return ("packed_cuda_graph" if self.packed_graph else
                f"sequential_{self.accels[0].mode}" if self.accels else "none")

    def drop(self, k: int) -> None:
        """Run ``k`` left the group (it diverged): the others go on; a packed graph is re-captured without it."""
        del self.accels[k], self.scopes[k]
        self._release()

    def new_epoch(self) -> None:
        """After each member's ``new_epoch``: a packed graph is dropped if any member's step structure changed."""
        if self._graph is not None and self._structure() != self._signature:
            self._release()
            for a in self.accels:
                a.steps = 0  # warm up again (new kernels, newly trained parameters get momentum buffers)

    def _structure(self) -> tuple:
        return tuple(a.structure() for a in self.accels)

    def _release(self) -> None:
        self._graph, self._outs = None, []
        for a in self.accels:
            a._static_in = None

    def _scoped(self, k: int, fn: Callable[..., StepOut], batch: Batch, cuda: bool) -> StepOut:
        scope = self.scopes[k]
        if scope is None:
            return fn(*batch)
        with scope(cuda):
            return fn(*batch)

    def step(self, batches: list[Batch]) -> list[StepOut]:
        """One step of every run on its own batch; returns each run's ``(loss, logits, terms)``, no host sync."""
        if len(self.accels) == 1:
            return [self._scoped(0, self.accels[0].step, batches[0], not self.graphs)]
        if self.packed_graph:
            if self._graph is not None and all(a._static_in[0].shape == b[0].shape
                                               for a, b in zip(self.accels, batches)):
                return self._replay(batches)
            if self._graph is None and all(a.steps >= WARMUP_STEPS for a in self.accels):
                out = self._capture(batches)
                if out is not None:
                    return out
            if self.packed_graph:
                return [self._scoped(k, a.warmup_step, b, False) for k, (a, b) in enumerate(zip(self.accels, batches))]
        return [self._scoped(k, a.step, b, not self.graphs) for k, (a, b) in enumerate(zip(self.accels, batches))]

    def _capture(self, batches: list[Batch]) -> list[StepOut] | None:
        """Capture the K steps on these batches (fork/join: one stream per run) and replay once; None on failure."""
        accels, dev = self.accels, self.accels[0].device
        try:
            for a, (x, y, idx) in zip(accels, batches):
                a._static_in = (x.clone(), y.clone(), idx.clone())
                a._fill_lrs()
            torch.cuda.synchronize(dev)
            for a in accels:
                a.optimizer.zero_grad(set_to_none=True)  # grads are allocated inside the graph's memory pool
            graph = torch.cuda.CUDAGraph()
            main = torch.cuda.Stream(device=dev)
            streams = [torch.cuda.Stream(device=dev) for _ in accels]
            outs = []
            with torch.cuda.stream(main):
                with torch.cuda.graph(graph, stream=main, capture_error_mode="thread_local"):
                    for a, s in zip(accels, streams):
                        s.wait_stream(main)  # fork
                        with torch.cuda.stream(s):
                            loss, logits, terms = a.forward(*a._static_in)
                            loss.backward()
                            sgd_step_tensor_lr(a.optimizer, a._lrs)
                        outs.append((loss, logits, terms))
                    for s in streams:
                        main.wait_stream(s)  # join
            torch.cuda.current_stream(dev).wait_stream(main)
        except Exception as exc:
            accels[0].capture_failed(exc)  # one notice for the group
            for a in accels[1:]:
                a.use_graphs = False
                a.optimizer.zero_grad(set_to_none=True)
            self._release()
            return None
        self._graph, self._outs, self._signature = graph, outs, self._structure()
        self._streams = (main, *streams)  # kept alive with the graph that was captured on them
        graph.replay()
        for a in accels:
            a.steps += 1
        return outs

    def _replay(self, batches: list[Batch]) -> list[StepOut]:
        for a, batch in zip(self.accels, batches):
            for dst, src in zip(a._static_in, batch):
                dst.copy_(src, non_blocking=True)
            a._fill_lrs()
        self._graph.replay()
        for a in self.accels:
            a.steps += 1
        return self._outs


def describe(acc: Accelerator) -> dict[str, Any]:
    """What the accelerator ended up doing (for summaries and benchmarks)."""
    return {"mode": acc.mode, "compile_requested": acc.compile_requested, "cuda_graphs_requested": acc.graphs_requested}
