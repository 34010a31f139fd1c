"""FeatureTap: intermediate features of any ``nn.Module`` through forward hooks, without editing the model.

>>> tap = FeatureTap(model, "auto")          # or FeatureTap(model, ["layer1", "layer2", "layer3"])
>>> logits, feats = tap(images)              # feats: list of (N, C, H, W) maps, shallow to deep
>>> print(tap)                               # the tap plan: modules, shapes, strides, rule, TFD terms

Which modules are tapped is decided on the first call (or :meth:`FeatureTap.discover`) by the rules of
:mod:`tfdistill.features.resolve`: named taps, then the model's declaration, then the torchvision table, then the
probe fallback. The plan is logged once (logger ``tfdistill.features``, level INFO).

Repeated calls. A module called several times in one forward pass (a shared block) yields its *last* output; the
tap warns once (naming the module) the first time that happens.

Hooks hold references only for the duration of one call's bookkeeping; each call clears the previous features,
so nothing stale accumulates. Works under ``torch.no_grad``, autocast and channels_last (features keep the dtype
and memory format the model produced). Remove the hooks with :meth:`FeatureTap.remove` or use a ``with`` block.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .layouts import Layout, TokenGrid, as_token_grid
from .plan import TapPlan
from .probe import _resolve, _watch, _watch_eval, _Watcher, image_input
from .resolve import resolve_plan

__all__ = ["FeatureTap", "find_stages", "find_classifier", "plan_taps", "unwrap", "is_compiled"]

log = logging.getLogger("tfdistill.features")


def plan_taps(model: nn.Module, example_input: Tensor, layers: str | Sequence[str] = "auto", *,
              model_name: str | None = None, min_maps: int = 2) -> TapPlan:
    """The tap plan for ``model`` on ``example_input`` (one eval-mode, no-grad forward pass), without hooks left."""
    model = unwrap(model)
    names = None if isinstance(layers, str) else [str(n) for n in layers]
    if names is not None:
        _resolve(model, names)
    return resolve_plan(model, _watch_eval(model, example_input), names, model_name=model_name, min_maps=min_maps)


def find_stages(model: nn.Module, example_input: Tensor) -> list[str]:
    """Names of the modules FeatureTap(model, "auto") taps on ``example_input``, shallow to deep."""
    return plan_taps(model, example_input, min_maps=1).names


def find_classifier(model: nn.Module, example_input: Tensor) -> str | None:
    """Name of the last ``nn.Linear`` that runs in the forward pass (the classifier), or None."""
    return _watch_eval(model, example_input).classifier()


def _input_hw(args: tuple, kwargs: dict | None = None) -> tuple[int, int] | None:
    x = image_input(args, kwargs)
    return (int(x.shape[-2]), int(x.shape[-1])) if x is not None else None


def _compiled_type() -> type | None:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover -- every supported torch has it
        return None
    return OptimizedModule


_PARALLEL = ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel", "DeepSpeedEngine")
"""Wrappers whose ``.module`` is the model (torch DDP/DP, FSDP (v1), DeepSpeed's engine)."""


def unwrap(model: Any) -> nn.Module:
    """The model inside its wrappers: ``torch.compile``'s OptimizedModule (``._orig_mod``), DistributedDataParallel,
    DataParallel, FSDP (v1) and DeepSpeed (``.module``), in any nesting -- what ``accelerate.Accelerator.prepare``
    returns too. A model that is not wrapped is returned as it is."""
    compiled = _compiled_type()
    for _ in range(16):
        if compiled is not None and isinstance(model, compiled):
            model = model._orig_mod
        elif type(model).__name__ in _PARALLEL and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            break
    return model


def is_compiled(call: Any) -> bool:
    """Whether calling ``call`` runs ``torch.compile``d code (a compiled module at any level of its wrappers, or a
    compiled function)."""
    compiled = _compiled_type()
    for _ in range(16):
        if compiled is not None and isinstance(call, compiled):
            return True
        if getattr(call, "_torchdynamo_orig_callable", None) is not None:
            return True
        if type(call).__name__ in _PARALLEL and isinstance(getattr(call, "module", None), nn.Module):
            call = call.module
        else:
            return False
    return False


_LATE = ("its hooks did not run: if the model is torch.compile'd and its compiled code was made before this tap "
         "(torch skips checking hooks added later: torch._dynamo.config.skip_nnmodule_hook_guards), make the tap "
         "before the first compiled call, or call torch.compiler.reset() after making it")


class FeatureTap:
    """Calls a model and returns ``(output, [stage features])`` using forward hooks -- or records the features of
    the forwards you run yourself (:meth:`capture`).

    Args:
        model: any ``nn.Module`` -- or its wrapped form: a ``torch.compile``d module, a DistributedDataParallel,
            what ``accelerate.Accelerator.prepare`` returns (see :func:`unwrap`). The plan is made on the inner
            module (its names, no ``_orig_mod.``/``module.`` prefixes); calls go through the wrapper. Nothing is
            modified (hooks only).
        layers: ``"auto"`` or a list of module names (as in ``model.named_modules()`` of the inner module), shallow
            to deep.
        embedding: also capture the input of the classifier (the last ``nn.Linear`` that runs, found on the first
            call) as :attr:`embedding` -- the penultimate, pooled features used by CRD, RKD, PKT, ...
        call: what to call instead of the model (default: ``model`` as given, wrapper included); the hooks stay on
            the inner module. :meth:`bind` sets it later.
        model_name: the name the plan and errors use (default: the model's class name).
        min_maps: with ``"auto"``, fewer usable maps than this is an error (default 2, what feature distillation
            needs; 0 for a tap that only wants the embedding).
        token_grid: declares that the model's 3-D outputs (N, tokens, C) are a patch grid: ``patch`` pixels per token
            along each side, ``prefix`` leading non-patch tokens (class, distillation, register tokens) dropped --
            see :func:`tfdistill.features.token_grid`. Without it a 3-D output is read as tokens only where the
            model or a family table declares the grid.

    Every feature is (N, C, H, W): channels-last (N, H, W, C) outputs are permuted and token outputs laid out as
    maps (see :mod:`tfdistill.features.layouts`), named taps too. :meth:`plan` (and ``print(tap)``) shows the plan.

    Compiled models. Hooks run inside the compiled code when they exist before it is compiled (no graph break). A
    tap made after the compiled model already ran is not seen by that code (torch's
    ``skip_nnmodule_hook_guards``): then :attr:`features` and ``tap(x)`` refuse in one line instead of returning
    nothing. Resolve an ``"auto"`` plan before compiling (:meth:`discover`, or a first ``tap(x)``). FSDP: untested.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] = "auto",
        *,
        embedding: bool = False,
        call: Callable[..., Any] | None = None,
        model_name: str | None = None,
        min_maps: int = 2,
        token_grid: "TokenGrid | tuple[int, int] | int | None" = None,
    ) -> None:
        inner = unwrap(model)
        self.model = inner
        self.call = call if call is not None else model
        self.want_embedding = embedding
        self.embedding: Tensor | None = None
        self.auto = isinstance(layers, str)
        self.model_name = model_name
        self.min_maps = min_maps
        self.token_grid = as_token_grid(token_grid)
        self._outs: list[Tensor | None] = []
        self._handles: list[Any] = []
        self._names: list[str] | None = None
        self._layouts: list[Layout] = []
        self._plan: TapPlan | None = None
        self._shapes: list[tuple[int, ...]] | None = None
        self._input_hw: tuple[int, int] | None = None
        self._repeated: set[int] = set()
        self._warned: set[str] = set()
        self._active = False  # inside this tap's call or capture(): hooks fired by other callers are ignored
        self._forwards = 0  # forwards of the model seen in the current capture
        self._features: list[Tensor] | None = None
        self._error: str | None = None
        self._classifier: str | None = None
        if isinstance(layers, str):
            if layers != "auto":
                raise ConfigError(f"feature taps must be 'auto' or a list of module names, got {layers!r}")
        else:
            names = [str(n) for n in layers]
            if not names:
                raise ConfigError("feature taps: the list of module names is empty")
            _resolve(inner, names)
        self._handles.append(inner.register_forward_pre_hook(self._begin_forward, with_kwargs=True))
        if not isinstance(layers, str):
            self._install(names)

    # ------------------------------------------------------------------ hooks
    @property
    def names(self) -> list[str]:
        """The tapped module names (empty until "auto" discovery has run)."""
        return list(self._names or [])

    @property
    def discovered(self) -> bool:
        return self._plan is not None

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """(C, H, W) of each tap as of the first call (empty before it)."""
        return list(self._shapes or [])

    def _install(self, names: list[str]) -> None:
        self._names = names
        self._outs = [None] * len(names)
        self._layouts = [Layout()] * len(names)
        for k, m in enumerate(_resolve(self.model, names)):
            self._handles.append(m.register_forward_hook(self._store(k)))

    def _begin_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        """Root pre-hook: a forward of the model starts (its maps replace the previous forward's)."""
        if not self._active:
            return
        self._input_hw = _input_hw(args, kwargs)
        if self._pending():
            if _compiling():
                raise ConfigError(f"feature tap on {self._label()}: the plan is not resolved and the model is being "
                                  "compiled; call tap.discover(example) (or tap(example) once) before compiling")
            self._active = False
            try:
                self._discover_on(args, kwargs)
            finally:
                self._active = True
        self._outs = [None] * len(self._outs)
        self._repeated = set()
        self.embedding = None
        self._forwards = self._forwards + 1

    def _store(self, k: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active:  # the model run by someone else (another tap on a shared teacher, a plain call)
                return
            if self._outs[k] is not None:
                self._repeated.add(k)
            self._outs[k] = self._layouts[k].to_nchw(output, self._input_hw)

        return hook

    def _install_embedding(self, name: str) -> None:
        self._classifier = name
        module = dict(self.model.named_modules())[name]

        def pre_hook(module: nn.Module, inputs: Any) -> None:
            if self._active:
                self.embedding = inputs[0]

        self._handles.append(module.register_forward_pre_hook(pre_hook))

    def _pending(self) -> bool:
        return self._plan is None or (self.want_embedding and self._classifier is None)

    def _label(self) -> str:
        return self.model_name or type(self.model).__name__

    def _adopt(self, watcher: _Watcher) -> None:
        """Resolve the plan on ``watcher``'s pass and install the hooks it calls for."""
        if self._plan is None:
            named = None if self.auto else list(self._names or [])
            plan = resolve_plan(self.model, watcher, named, model_name=self.model_name,
                                min_maps=self.min_maps if self.auto else 1, token_grid=self.token_grid)
            if self._names is None:
                self._install(plan.names)
            self._layouts = [t.layout for t in plan.taps]
            self._plan = plan
            log.info("%s", plan)
        self._warn_repeated([n for n in self.names if watcher.calls.get(n, 0) > 1])
        if self.want_embedding and self._classifier is None:
            name = watcher.classifier()
            if name is None:
                raise ConfigError(f"{type(self.model).__name__} has no nn.Linear classifier to take an embedding from")
            self._install_embedding(name)

    def _warn_repeated(self, names: list[str]) -> None:
        new = [n for n in names if n not in self._warned]
        if new:
            self._warned.update(new)
            warnings.warn(f"feature tap: module(s) {', '.join(new)} of {type(self.model).__name__} ran more than "
                          "once in one forward pass; only the last output is used. Tap a module that runs once "
                          "(model.taps / FeatureTap(model, [names])) if that is not what you want",
                          RuntimeWarning, stacklevel=3)

    def _discover_on(self, args: tuple, kwargs: dict | None = None) -> None:
        if self._pending():
            self._adopt(_watch_eval(self.model, tuple(args), kwargs))
            self._outs = [None] * len(self._outs)  # named taps' hooks ran too: keep nothing from this pass
            self._repeated.clear()
            self.embedding = None
        if self._shapes is None and self._plan is not None:
            self._shapes = [t.shape for t in self._plan.taps]

    def discover(self, example_input: Any, **kwargs: Any) -> list[str]:
        """Resolve the plan now with one eval-mode, no-grad forward pass of the inner model (no effect once
        resolved). ``example_input``: the input (or a tuple of positional inputs); ``kwargs``: keyword inputs."""
        self._discover_on(example_input if isinstance(example_input, tuple) else (example_input,), kwargs)
        return self.names

    def plan(self) -> TapPlan | None:
        """The tap plan (None until the first call or :meth:`discover`); ``str()`` of it is a readable table."""
        return self._plan

    def describe(self) -> str:
        """The taps as one line: ``layer1 64x32x32, layer2 128x16x16 [auto]`` (layouts converted are noted)."""
        if self._names is None or self._plan is None:
            return "auto (not yet discovered)" if self._names is None else ", ".join(self._names) + " [named]"
        parts = []
        for t in self._plan.taps:
            note = "" if t.layout.kind == "NCHW" else f" ({t.layout.describe()})"
            parts.append(f"{t.name} {'x'.join(str(d) for d in t.shape)}{note}")
        return ", ".join(parts) + (" [auto]" if self.auto else " [named]")

    def bind(self, wrapped: Any) -> "FeatureTap":
        """Point this tap at ``wrapped``, a wrapped form of its model (``torch.compile``, DDP, Accelerate's
        ``prepare``): ``tap(x)`` then calls ``wrapped`` (compiled code stays compiled); the hooks and the plan
        stay as they are. Returns the tap."""
        inner = unwrap(wrapped)
        if inner is not self.model:
            raise ConfigError(f"tap.bind: {type(wrapped).__name__} wraps a {type(inner).__name__} that is not the "
                              f"tapped model ({self._label()}); bind the wrapper of the model the tap was made on")
        self.call = wrapped
        return self

    def remove(self) -> None:
        """Remove every hook this tap installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._outs = [None] * len(self._outs)
        self.embedding = None
        self._features = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # ------------------------------------------------------------------ capture
    @contextmanager
    def capture(self) -> Iterator["FeatureTap"]:
        """Record the maps of the forwards run inside the block (by you, a framework, a compiled or DDP wrapper):

        >>> with tap.capture():
        ...     out = model(x)            # any wrapped form of the tapped model
        >>> feats = tap.features          # the last forward's maps, (N, C, H, W), shallow to deep

        Each forward's maps replace the previous one's (:attr:`embedding` too). An ``"auto"`` plan not yet resolved
        is resolved on the first forward (an extra eval-mode, no-grad pass; eager models only).
        """
        if self._active:
            raise ConfigError(f"feature tap on {self._label()}: capture() is already active (no nesting)")
        self._features, self._error = None, None
        self._outs = [None] * len(self._outs)
        self._repeated = set()
        self._forwards = 0
        self.embedding = None
        self._active = True
        ok = False
        try:
            yield self
            ok = True
        finally:
            self._active = False
            self._finish(ok)

    def _finish(self, ok: bool) -> None:
        feats, self._outs = self._outs, [None] * len(self._outs)
        if not ok:
            return
        if self._forwards == 0:
            self._error = (f"feature tap on {self._label()}: no forward pass of the model was seen inside capture(); "
                           f"{_LATE}" if self._handles else f"feature tap on {self._label()}: its hooks were removed")
            return
        missing = [n for n, f in zip(self.names, feats) if f is None]
        if missing:
            self._error = (f"feature tap on {self._label()}: tap(s) {', '.join(missing)} did not run during the last "
                           f"forward pass; " + _LATE)
            return
        if self._repeated:
            self._warn_repeated([self.names[k] for k in sorted(self._repeated)])
            self._repeated = set()
        if self._shapes is None:
            self._shapes = [tuple(f.shape[1:]) for f in feats]  # type: ignore[union-attr]
        self._features = feats  # type: ignore[assignment]

    @property
    def features(self) -> list[Tensor]:
        """The maps of the last forward recorded by :meth:`capture` or ``tap(x)``: (N, C, H, W), shallow to deep.
        Raises (one line) when that forward recorded none, e.g. a compiled model whose code predates the tap."""
        if self._error is not None:
            raise ConfigError(self._error)
        if self._features is None:
            raise ConfigError(f"feature tap on {self._label()}: no features recorded yet; run the model inside "
                              "`with tap.capture():` (or call tap(x))")
        return list(self._features)

    # ------------------------------------------------------------------ call
    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, list[Tensor]]:
        self._input_hw = _input_hw(args, kwargs)
        if self._pending():
            if is_compiled(self.call):  # never trace the watcher's hooks into compiled code
                self._discover_on(args, kwargs)
            else:
                return self._first_call(args, kwargs)
        with self.capture():
            out = self.call(*args, **kwargs)
        return out, self.features

    def _first_call(self, args: tuple, kwargs: dict) -> tuple[Any, list[Tensor]]:
        """Resolve the plan (and the classifier) while running the real forward pass once."""
        out, watcher = _watch(self.model, lambda: self.call(*args, **kwargs), keep=True)
        self._adopt(watcher)
        if self.want_embedding:
            self.embedding = watcher.linear_inputs[self._classifier][1]  # type: ignore[index]
        feats = [lay.to_nchw(watcher.outputs[n], self._input_hw) for n, lay in zip(self.names, self._layouts)]
        self._outs = [None] * len(self._outs)
        self._repeated.clear()
        if self._shapes is None:
            self._shapes = [tuple(f.shape[1:]) for f in feats]
        self._features, self._error = feats, None
        return out, feats

    def __repr__(self) -> str:
        if self._plan is None:
            return f"FeatureTap({self._label()}, layers={self._names or 'auto'}, " \
                   "plan: not yet resolved (first call or discover())"
        return f"FeatureTap({self._label()})\n{self._plan}"


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover -- torch < 2.3
        return False
