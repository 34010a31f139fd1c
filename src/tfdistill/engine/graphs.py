"""Steps the K >= 1 runs of a group: one after another, or on CUDA replayed from one CUDA graph.

:class:`GraphRunner` takes the :class:`~tfdistill.engine.step.TrainStep` of every run and decides once whether their
steps are captured (``engine.cuda_graphs``); it owns everything a graph needs -- static inputs, learning-rate
tensors, streams, the graph -- and issues the few CUDA calls through a backend object (:class:`CudaBackend`; the
tests inject one that runs on the CPU).

CUDA graphs (``engine.cuda_graphs``, CUDA only)
-----------------------------------------------
The whole step of every run is captured in one CUDA graph and replayed: each run's batch is copied into its static
input buffers (the device-resident loader's batches are already on the GPU, so this is one device-to-device copy per
tensor), the learning rate of every param group is written into a device scalar, and ``graph.replay()`` runs
forward, backward and the optimizer of all K runs with one launch. The first ``WARMUP_STEPS`` steps of every run
are eager, on its own side stream (they are real training steps; cuDNN/cuBLAS pick their algorithms and the
optimizer creates its momentum buffers; once the buffers exist -- from the second step, or right away after a
resume -- they already apply the graph's update arithmetic, so a resumed run repeats the updates of the
uninterrupted one). Then the K steps are captured into ONE graph (K = 1 included, the same code): run k on its own
stream forked from and joined back into the capture stream, so the small kernels of different runs overlap and
one ``replay()`` launches them all; each run executes the kernels it would alone. At the start of every epoch
(:meth:`GraphRunner.new_epoch`) the graph is dropped if any run's step structure changed -- which parameters
require gradients (a component freezing a module) or which modules are in training mode -- and re-captured after
a new warm-up into a new memory pool. Values that change between epochs must live in tensors updated in place --
the :class:`~tfdistill.methods.Distiller` contract (TFD's ramp, DropBlock's probability); a Python float read in
``forward`` would be frozen into the graph. Inside the graph the SGD update is :func:`sgd_step_tensor_lr`: the same
arithmetic as ``torch.optim.SGD`` (foreach), except that the step is ``p += g * (-lr)`` with ``lr`` a device tensor
(``torch.optim.SGD`` would read a Python float once and bake it into the graph, or call ``.item()`` on a tensor lr,
which capture forbids); the momentum buffers are the optimizer's own state tensors, so checkpoints and resumption
are unchanged. With ``engine.compile`` as well, the compiled forward/backward is what gets captured; autocast's
weight cache is off in a captured step (``cache_enabled=False``, as PyTorch requires; numerics are unchanged).

Random numbers: without graphs (the CPU; CUDA without graphs) the K > 1 runs step one after another, each inside
its ``scope`` -- its own global RNG state (torch CPU + Python, and the CUDA generator on CUDA) is swapped in around
its step, so every run draws exactly the random numbers (dropout masks, CRD negatives) it draws alone and ends
bit-identical to its separate training. Random draws inside a graph come from the device's one CUDA generator in
capture order (no per-run swapping inside a graph): a packed run with dropout is then equal in distribution to its
separate run, not bit-identical. A group of one (K = 1) swaps nothing.

Refused or impossible: ``precision=fp16`` (the GradScaler reads ``found_inf`` on the host every step) raises a
:class:`~tfdistill.errors.ConfigError` on CUDA; on a non-CUDA device, under DDP, or with an optimizer other than
SGD, the runner notes it once per run and steps without graphs; a capture that fails (an op that synchronises with
the host, a CPU tensor in the step, ...) is noted once, that step is redone eagerly and the group stays eager --
and no later runner of the same process tries to capture again.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from .step import FP16_GRAPHS, StepOut, TrainStep

__all__ = ["GraphRunner", "CudaBackend", "sgd_step_tensor_lr", "momentum_buffers_ready", "WARMUP_STEPS"]

WARMUP_STEPS = 3
"""Eager steps of every run (on its side stream) before the steps are captured in a CUDA graph."""

_CAPTURE_BROKEN: str | None = None
"""Why a capture failed earlier in this process (then no later runner tries again: a failed capture can leave the
CUDA caching allocator with a capture it never saw end, on some torch versions)."""

Batch = tuple[Tensor, Tensor, Tensor]
Scope = Callable[[bool], Any]
"""``scope(cuda)`` -> a context manager that makes a run's own random streams the global ones for one step (its
CUDA generator too when ``cuda``)."""


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


def momentum_buffers_ready(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter with a gradient has its momentum buffer (in groups with momentum): then
    :func:`sgd_step_tensor_lr` can run."""
    for group in optimizer.param_groups:
        if float(group["momentum"]) == 0:
            continue
        for p in group["params"]:
            if p.grad is not None and optimizer.state.get(p, {}).get("momentum_buffer") is None:
                return False
    return True


class CudaBackend:
    """The CUDA calls of :class:`GraphRunner`: streams, synchronisation, capture (a ``torch.cuda.CUDAGraph`` into a
    new memory pool) and the graph's ``replay()``. A test backend with the same methods runs on the CPU."""

    device_type = "cuda"
    """The device type this backend captures on."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def stream(self) -> Any:
        return torch.cuda.Stream(device=self.device)

    def current_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def use_stream(self, stream: Any) -> Any:
        return torch.cuda.stream(stream)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def capture(self, body: Callable[[], None], stream: Any) -> Any:
        """``body`` captured on ``stream`` (our own capture stream, on the training device: torch.cuda.graph's
        default stream belongs to the device that was current when it was first created); returns the graph."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return graph


class GraphRunner:
    """One optimizer step of each of the K >= 1 runs of a group, each with its own :class:`TrainStep`: one after
    another (each in its ``scope`` when given), or on CUDA replayed from one graph (see the module docs).

    Args:
        members: the runs' steps (one or more), in the order of the batches given to :meth:`step`.
        scopes: per run, ``scope(cuda)`` -> a context manager swapping in its random streams (None: no swapping,
            e.g. a group of one).
        backend: the CUDA calls (default :class:`CudaBackend` on the first member's device).
    """

    def __init__(self, members: list[TrainStep], scopes: list[Scope] | None = None, *, backend: Any = None) -> None:
        self.members = list(members)
        self.scopes = list(scopes) if scopes is not None else [None] * len(self.members)
        self.backend = backend if backend is not None else CudaBackend(self.members[0].device)
        self._lrs: list[list[Tensor]] = [[] for _ in self.members]
        self._streams: list[Any] = [None for _ in self.members]
        self._capture_stream: Any = None
        self._warm_from = [0 for _ in self.members]  # steps_taken of each member when its warm-up (re)started
        self._graph: Any = None
        self._static: list[Batch] = []
        self._outs: list[StepOut] = []
        self._signature: tuple = ()
        self._graphs = self._decide()

    # ------------------------------------------------------------------ the one decision
    def _decide(self) -> bool:
        """Whether the steps are captured: every member asks for it (``cuda_graphs``) and can have it."""
        asking = [m for m in self.members if m.graphs_requested]
        if not asking:
            return False
        refused = False
        for m in asking:
            why = self._refusal(m)
            if why is not None:
                m.notice("graphs", f"engine.cuda_graphs=true{why}; the train step runs without CUDA graphs")
                refused = True
        if not refused and len(asking) < len(self.members):
            for m in asking:
                m.notice("graphs", "engine.cuda_graphs=true: the runs packed with this one do not ask for CUDA "
                                   "graphs; the train step runs without CUDA graphs")
            refused = True
        if refused:
            return False
        for m in self.members:
            m.set_graphed(True)
        return True

    def _refusal(self, m: TrainStep) -> str | None:
        if m.device.type != self.backend.device_type:
            return f" needs a CUDA device (this run uses {m.device.type})"
        if m.precision == "fp16":
            raise ConfigError(FP16_GRAPHS)
        if m.distributed:
            return " is not supported under DDP"
        if type(m.optimizer) is not torch.optim.SGD:
            return f" supports SGD only (got {type(m.optimizer).__name__})"
        if _CAPTURE_BROKEN is not None:
            return f": a capture failed earlier in this process ({_CAPTURE_BROKEN})"
        return None

    # ------------------------------------------------------------------ state
    @property
    def graphs(self) -> bool:
        """Whether the steps are (to be) replayed from a CUDA graph; then no run's CUDA generator is swapped (see the
        module docs)."""
        return self._graphs

    @property
    def captured(self) -> bool:
        """Whether a captured graph is held now (replayed by the next step whose batches fit it)."""
        return self._graph is not None

    @property
    def mode(self) -> str:
        """K = 1: the step's mode (``eager``, ``compiled``, ``cuda_graph``, ...); K > 1: ``packed_cuda_graph`` or
        ``sequential_<the steps' mode>``."""
        if len(self.members) <= 1:
            return self.members[0].mode if self.members else "none"
        return "packed_cuda_graph" if self._graphs else f"sequential_{self.members[0].mode}"

    def drop(self, k: int) -> None:
        """Run ``k`` left the group (it diverged): the others go on; a graph is re-captured without it."""
        del self.members[k], self.scopes[k], self._lrs[k], self._streams[k], self._warm_from[k]
        self._release()

    def new_epoch(self) -> None:
        """After each member's epoch start: the graph is dropped if any member's step structure changed; the next
        steps then warm up again (new kernels are tuned, newly trained parameters get momentum buffers) and
        re-capture into a fresh memory pool."""
        if self._graph is not None and self._structure() != self._signature:
            self._release()
            self._warm_from = [m.steps_taken for m in self.members]

    def _structure(self) -> tuple:
        return tuple(m.structure() for m in self.members)

    def _release(self) -> None:
        self._graph, self._outs, self._static = None, [], []

    # ------------------------------------------------------------------ stepping
    def step(self, batches: list[Batch]) -> list[StepOut]:
        """One step of every run on its own batch; returns each run's ``(loss, logits, terms)``, no host sync.

        With a graph the returned tensors are the graph's static outputs: read them before the next step."""
        if self._graphs:
            if self._graph is not None:
                if self._fits(batches):
                    return self._replay(batches)
            elif all(m.steps_taken - w >= WARMUP_STEPS for m, w in zip(self.members, self._warm_from)):
                out = self._capture(batches)
                if out is not None:
                    return out
            if self._graphs:  # warming up (or a batch of another shape, never from the fixed-shape loaders)
                return [self._scoped(k, lambda k=k, b=b: self._warmup_step(k, *b), False)
                        for k, b in enumerate(batches)]
        return [self._scoped(k, lambda m=m, b=b: m.step(*b), True)
                for k, (m, b) in enumerate(zip(self.members, batches))]

    def _scoped(self, k: int, fn: Callable[[], StepOut], cuda: bool) -> StepOut:
        scope = self.scopes[k]
        if scope is None:
            return fn()
        with scope(cuda):
            return fn()

    def _stream(self, k: int) -> Any:
        if self._streams[k] is None:
            self._streams[k] = self.backend.stream()
        return self._streams[k]

    def _fill_lrs(self, k: int) -> list[Tensor]:
        """Run ``k``'s learning rates written into its device scalars (created once, read by the graph)."""
        opt = self.members[k].optimizer
        if not self._lrs[k]:
            self._lrs[k] = [torch.zeros((), dtype=torch.float32, device=self.members[k].device)
                            for _ in opt.param_groups]
        for group, t in zip(opt.param_groups, self._lrs[k]):
            lr = group["lr"]
            if isinstance(lr, Tensor):
                t.copy_(lr, non_blocking=True)
            else:
                t.fill_(float(lr))
        return self._lrs[k]

    def _warmup_step(self, k: int, x: Tensor, y: Tensor, idx: Tensor) -> StepOut:
        """An eager step of run ``k`` on its side stream. Once its momentum buffers exist (after its first step, or
        right away after a resume) it applies the graph's own update arithmetic, so a resumed run replays exactly
        what an uninterrupted one computed at that step."""
        m = self.members[k]

        def update() -> None:
            if momentum_buffers_ready(m.optimizer):
                sgd_step_tensor_lr(m.optimizer, self._fill_lrs(k))
            else:
                m.optimizer_step()

        side, main = self._stream(k), self.backend.current_stream()
        side.wait_stream(main)
        with self.backend.use_stream(side):
            out = m.step(x, y, idx, update=update)
        main.wait_stream(side)
        return out

    def _fits(self, batches: list[Batch]) -> bool:
        return all(d.shape == s.shape and d.dtype == s.dtype
                   for static, batch in zip(self._static, batches) for d, s in zip(static, batch))

    def _capture(self, batches: list[Batch]) -> list[StepOut] | None:
        """Capture the K steps on these batches (fork/join: one stream per run) and replay once; None on failure."""
        members = self.members
        try:
            static = self._static = [tuple(t.clone() for t in b) for b in batches]
            lrs = [self._fill_lrs(k) for k in range(len(members))]
            self.backend.synchronize()
            for m in members:
                m.optimizer.zero_grad(set_to_none=True)  # grads are allocated inside the graph's memory pool
            if self._capture_stream is None:
                self._capture_stream = self.backend.stream()
            main, streams = self._capture_stream, [self._stream(k) for k in range(len(members))]

            def body() -> None:
                outs = []
                for m, s, (x, y, idx), lr in zip(members, streams, static, lrs):
                    s.wait_stream(main)  # fork
                    with self.backend.use_stream(s):
                        # what every replay means: gradients computed afresh (in the graph: the pool's tensors,
                        # overwritten; already None when the capture starts)
                        for group in m.optimizer.param_groups:
                            for p in group["params"]:
                                p.grad = None
                        loss, logits, terms = m.forward(x, y, idx)
                        loss.backward()
                        sgd_step_tensor_lr(m.optimizer, lr)
                    outs.append((loss, logits, terms))
                for s in streams:
                    main.wait_stream(s)  # join
                self._outs = outs

            graph = self.backend.capture(body, main)
        except Exception as exc:
            self._capture_failed(exc)
            return None
        self._graph, self._signature = graph, self._structure()
        graph.replay()
        return self._outs

    def _capture_failed(self, exc: BaseException) -> None:
        """A capture failed: one notice for the group, clean up, stay eager (and no later capture in this process)."""
        global _CAPTURE_BROKEN
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        _CAPTURE_BROKEN = f"{type(exc).__name__}: {reason}"
        self._graphs = False
        self._release()
        for m in self.members:
            m.set_graphed(False)
            m.optimizer.zero_grad(set_to_none=True)
        with contextlib.suppress(Exception):
            self.backend.synchronize()
        self.members[0].notice("capture", f"engine.cuda_graphs=true: capturing the train step failed "
                                          f"({type(exc).__name__}: {reason}); the step runs without CUDA graphs "
                                          f"(for the rest of this process)")

    def _replay(self, batches: list[Batch]) -> list[StepOut]:
        for k, (static, batch) in enumerate(zip(self._static, batches)):
            for dst, src in zip(static, batch):
                dst.copy_(src, non_blocking=True)
            self._fill_lrs(k)
        self._graph.replay()
        return self._outs
