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
from typing import Any, Callable, Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from .layouts import Layout
from .plan import TapPlan
from .probe import _resolve, _watch, _watch_eval, _Watcher
from .resolve import resolve_plan

__all__ = ["FeatureTap", "find_stages", "find_classifier", "plan_taps"]

log = logging.getLogger("tfdistill.features")


def plan_taps(model: nn.Module, example_input: Tensor, layers: str | Sequence[str] = "auto", *,
              model_name: str | None = None, min_maps: int = 2) -> TapPlan:
    """The tap plan for ``model`` on ``example_input`` (one eval-mode, no-grad forward pass), without hooks left."""
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


def _input_hw(args: tuple) -> tuple[int, int] | None:
    x = args[0] if args else None
    return (int(x.shape[-2]), int(x.shape[-1])) if isinstance(x, Tensor) and x.dim() == 4 else None


class FeatureTap:
    """Calls a model and returns ``(output, [stage features])`` using forward hooks.

    Args:
        model: any ``nn.Module``; it is not modified (hooks only).
        layers: ``"auto"`` or a list of module names (as in ``model.named_modules()``), shallow to deep.
        embedding: also capture the input of the classifier (the last ``nn.Linear`` that runs, found on the first
            call) as :attr:`embedding` -- the penultimate, pooled features used by CRD, RKD, PKT, ...
        call: what to call instead of ``model`` (e.g. a DistributedDataParallel or compiled wrapper of it);
            the hooks stay on ``model``'s modules.
        model_name: the name the plan and errors use (default: the model's class name).
        min_maps: with ``"auto"``, fewer usable maps than this is an error (default 2, what feature distillation
            needs; 0 for a tap that only wants the embedding).

    Every feature is (N, C, H, W): channels-last (N, H, W, C) outputs are permuted and token outputs laid out as
    maps (see :mod:`tfdistill.features.layouts`), named taps too. :meth:`plan` (and ``print(tap)``) shows the plan.
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
    ) -> None:
        self.model = model
        self.call = call if call is not None else model
        self.want_embedding = embedding
        self.embedding: Tensor | None = None
        self.auto = isinstance(layers, str)
        self.model_name = model_name
        self.min_maps = min_maps
        self._outs: list[Tensor | None] = []
        self._handles: list[Any] = []
        self._names: list[str] | None = None
        self._layouts: list[Layout] = []
        self._plan: TapPlan | None = None
        self._shapes: list[tuple[int, ...]] | None = None
        self._input_hw: tuple[int, int] | None = None
        self._repeated: set[int] = set()
        self._warned: set[str] = set()
        self._active = False  # inside this tap's own call: hooks fired by other callers of the model are ignored
        self._classifier: str | None = None
        if isinstance(layers, str):
            if layers != "auto":
                raise ConfigError(f"feature taps must be 'auto' or a list of module names, got {layers!r}")
        else:
            names = [str(n) for n in layers]
            if not names:
                raise ConfigError("feature taps: the list of module names is empty")
            _resolve(model, names)
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

    def _adopt(self, watcher: _Watcher) -> None:
        """Resolve the plan on ``watcher``'s pass and install the hooks it calls for."""
        if self._plan is None:
            named = None if self.auto else list(self._names or [])
            plan = resolve_plan(self.model, watcher, named, model_name=self.model_name,
                                min_maps=self.min_maps if self.auto else 1)
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

    def discover(self, example_input: Tensor) -> list[str]:
        """Resolve the plan now with one eval-mode, no-grad forward pass (no effect once resolved)."""
        if self._pending():
            self._adopt(_watch_eval(self.model, example_input))
            self._outs = [None] * len(self._outs)  # named taps' hooks ran too: keep nothing from this pass
            self._repeated.clear()
            self.embedding = None
        if self._shapes is None and self._plan is not None:
            self._shapes = [t.shape for t in self._plan.taps]
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

    def remove(self) -> None:
        """Remove every hook this tap installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._outs = [None] * len(self._outs)
        self.embedding = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # ------------------------------------------------------------------ call
    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, list[Tensor]]:
        self._input_hw = _input_hw(args)
        if self._pending():
            return self._first_call(args, kwargs)
        self._outs = [None] * len(self._outs)
        self._repeated.clear()
        self.embedding = None
        self._active = True
        try:
            out = self.call(*args, **kwargs)
        finally:
            self._active = False
        feats = self._outs
        self._outs = [None] * len(feats)
        missing = [n for n, f in zip(self.names, feats) if f is None]
        if missing:
            raise RuntimeError(f"feature tap(s) {missing} did not run during the forward pass")
        if self._repeated:
            self._warn_repeated([self.names[k] for k in sorted(self._repeated)])
            self._repeated.clear()
        if self._shapes is None:
            self._shapes = [tuple(f.shape[1:]) for f in feats]  # type: ignore[union-attr]
        return out, feats  # type: ignore[return-value]

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
        return out, feats

    def __repr__(self) -> str:
        if self._plan is None:
            return f"FeatureTap({self.model_name or type(self.model).__name__}, layers={self._names or 'auto'}, " \
                   "plan: not yet resolved (first call or discover())"
        return f"FeatureTap({self.model_name or type(self.model).__name__})\n{self._plan}"
