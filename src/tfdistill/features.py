"""Feature taps: intermediate features of any ``nn.Module`` through forward hooks, without editing the model.

>>> tap = FeatureTap(model, "auto")          # or FeatureTap(model, ["layer1", "layer2", "layer3"])
>>> logits, feats = tap(images)              # feats: list of stage outputs, shallow to deep

The "auto" rule
---------------
Discovery watches one forward pass (the first call, or :func:`find_stages` with an example input); only
outputs that are 4D with more than one spatial position count.

1. A model that declares its stages (a ``stage_names`` attribute, as every zoo model does, naming the same
   points the CRD benchmark takes features from) gets those, keeping one per spatial size: the last declared
   stage at each resolution (CIFAR VGG declares ``block0..block4``, two of them at 4x4, and taps
   ``block0, block1, block2, block4``).
2. Otherwise a *candidate* is a container module (it has child modules and parameters). A candidate that holds
   another candidate whose output size is neither its own input nor its own output size spans several stages
   (a ``features`` Sequential, a ``trunk``) and is dropped. Work at the input resolution is allowed, so a ResNet
   ``layer2`` whose first block runs a 1x1 convolution before its stride-2 one stays a stage.
3. Candidates are grouped by output spatial size; in each group the one that finishes *last* in the forward pass
   is the stage (so among nested modules producing the same tensor the outermost wins, and a downsampling
   module followed by blocks at the new size yields the blocks' output). A candidate inside a kept one with a
   different output size is internal work of a downsampling block (an expansion convolution at the input
   resolution) and is skipped.
4. Stages are ordered by when they finish, shallow to deep.

A stem of bare layers (torchvision ResNet's ``conv1/bn1/relu/maxpool``) holds no container and so is not a stage;
trailing bare ``bn``/``relu``/pooling layers are not either. If fewer than two container stages exist (a model
built as one flat ``Sequential``), the rule falls back to leaf modules: the last leaf at each spatial size.
Results (tests cover them): CIFAR ResNets -> ``layer1..layer3``; WRN -> ``block1..block3``; CIFAR VGG ->
``block0, block1, block2, block4``; CIFAR MobileNetV2 -> ``blocks.1, .2, .4, .6``; torchvision ResNets ->
``layer1..layer4``; torchvision MobileNetV2 -> ``features.1, .3, .6, .13, .18`` (the last block at each of
112/56/28/14/7; ``.18`` is its 1x1 head convolution); ConvNeXt -> ``features.1, .3, .5, .7``; DenseNet ->
the four dense blocks.

Hooks hold references only for the duration of one call's bookkeeping; each call clears the previous features,
so nothing stale accumulates. Works under ``torch.no_grad``, autocast and channels_last (features keep the dtype
and memory format the model produced). Remove the hooks with :meth:`FeatureTap.remove` or use a ``with`` block.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["FeatureTap", "find_stages", "find_classifier"]


def _module_names(model: nn.Module, max_depth: int = 2) -> list[str]:
    return [n for n, _ in model.named_modules() if n and n.count(".") < max_depth]


def _resolve(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    out = []
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"feature tap {name!r} is listed twice")
        seen.add(name)
        if name not in modules or not name:
            valid = ", ".join(_module_names(model))
            raise ConfigError(f"unknown module {name!r} in {type(model).__name__}; valid (first levels): {valid}")
        out.append(modules[name])
    return out


class _Watcher:
    """Records, for one forward pass, when each module finished and the shape of its output."""

    def __init__(self, model: nn.Module, keep: bool = False) -> None:
        self.model = model
        self.keep = keep
        self.order: dict[str, int] = {}
        self.size: dict[str, tuple[int, int] | None] = {}
        self.in_size: dict[str, tuple[int, int] | None] = {}
        self.outputs: dict[str, Any] = {}
        self.linear_inputs: dict[str, tuple[int, Tensor | None]] = {}
        self.handles: list[Any] = []
        self.counter = 0
        for name, m in model.named_modules():
            if name:
                self.handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.counter += 1
            self.order[name] = self.counter
            ok = isinstance(output, Tensor) and output.dim() == 4
            self.size[name] = tuple(output.shape[2:]) if ok else None  # type: ignore[assignment]
            x = inputs[0] if inputs else None
            ok_in = isinstance(x, Tensor) and x.dim() == 4
            self.in_size[name] = tuple(x.shape[2:]) if ok_in else None  # type: ignore[assignment]
            if self.keep:
                self.outputs[name] = output
            if isinstance(module, nn.Linear):
                self.linear_inputs[name] = (self.counter, inputs[0] if self.keep else None)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def stages(self) -> list[str]:
        modules = dict(self.model.named_modules())

        def spatial(name: str) -> tuple[int, int] | None:
            size = self.size.get(name)
            return size if size is not None and size[0] * size[1] > 1 else None

        def last_per_size(names: list[str]) -> list[str]:
            best: dict[tuple[int, int], str] = {}
            for n in names:
                key = spatial(n)
                if key is not None and (key not in best or self.order[n] > self.order[best[key]]):
                    best[key] = n
            return sorted(best.values(), key=self.order.__getitem__)

        declared = getattr(self.model, "stage_names", None)
        if declared and all(n in self.order for n in declared):
            return last_per_size(list(declared))

        def is_container(m: nn.Module) -> bool:
            return any(True for _ in m.children()) and any(True for _ in m.parameters())

        cands = [n for n in self.order if spatial(n) is not None and is_container(modules[n])]

        def single_stage(name: str) -> bool:
            allowed = {self.size[name], self.in_size.get(name)}
            prefix = name + "."
            return all(self.size[c] in allowed for c in cands if c.startswith(prefix))

        kept = [n for n in cands if single_stage(n)]

        def inner_work(name: str) -> bool:  # e.g. the 1x1 expansion inside a stride-2 block, at the input size
            return any(name.startswith(a + ".") and self.size[a] != self.size[name] for a in kept)

        stages = last_per_size([n for n in kept if not inner_work(n)])
        if len(stages) < 2:
            stages = last_per_size([n for n in self.order if not any(True for _ in modules[n].children())])
        return stages

    def classifier(self) -> str | None:
        """The last nn.Linear that ran (the classifier), or None."""
        if not self.linear_inputs:
            return None
        return max(self.linear_inputs, key=lambda n: self.linear_inputs[n][0])


def _watch(model: nn.Module, call: Callable[[], Any], keep: bool = False) -> tuple[Any, _Watcher]:
    watcher = _Watcher(model, keep=keep)
    try:
        out = call()
    finally:
        watcher.remove()
    return out, watcher


def _watch_eval(model: nn.Module, example_input: Tensor) -> _Watcher:
    """One eval-mode, no-grad forward pass under watch (BatchNorm statistics untouched, mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _watch(model, lambda: model(example_input))[1]
    finally:
        model.train(was_training)


def find_stages(model: nn.Module, example_input: Tensor) -> list[str]:
    """Names of the stage modules of ``model`` by the "auto" rule (see module docs), shallow to deep."""
    return _watch_eval(model, example_input).stages()


def find_classifier(model: nn.Module, example_input: Tensor) -> str | None:
    """Name of the last ``nn.Linear`` that runs in the forward pass (the classifier), or None."""
    return _watch_eval(model, example_input).classifier()


class FeatureTap:
    """Calls a model and returns ``(output, [stage features])`` using forward hooks.

    Args:
        model: any ``nn.Module``; it is not modified (hooks only).
        layers: ``"auto"`` or a list of module names (as in ``model.named_modules()``), shallow to deep.
        embedding: also capture the input of the classifier (the last ``nn.Linear`` that runs, found on the first
            call) as :attr:`embedding` -- the penultimate, pooled features used by CRD, RKD, PKT, ...
        call: what to call instead of ``model`` (e.g. a DistributedDataParallel or compiled wrapper of it);
            the hooks stay on ``model``'s modules.

    A module called several times in one forward pass yields its *last* output.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] = "auto",
        *,
        embedding: bool = False,
        call: Callable[..., Any] | None = None,
    ) -> None:
        self.model = model
        self.call = call if call is not None else model
        self.want_embedding = embedding
        self.embedding: Tensor | None = None
        self._outs: list[Tensor | None] = []
        self._handles: list[Any] = []
        self._names: list[str] | None = None
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
        return self._names is not None

    def _install(self, names: list[str]) -> None:
        self._names = names
        self._outs = [None] * len(names)
        for k, m in enumerate(_resolve(self.model, names)):
            self._handles.append(m.register_forward_hook(self._store(k)))

    def _store(self, k: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self._outs[k] = output

        return hook

    def _install_embedding(self, name: str) -> None:
        self._classifier = name
        module = dict(self.model.named_modules())[name]

        def pre_hook(module: nn.Module, inputs: Any) -> None:
            self.embedding = inputs[0]

        self._handles.append(module.register_forward_pre_hook(pre_hook))

    def _adopt(self, watcher: _Watcher) -> None:
        """Install the hooks that discovery on ``watcher``'s pass calls for."""
        if self._names is None:
            stages = watcher.stages()
            if len(stages) < 1:
                raise ConfigError(f"found no 4D stage outputs in {type(self.model).__name__} to tap")
            self._install(stages)
        if self.want_embedding and self._classifier is None:
            name = watcher.classifier()
            if name is None:
                raise ConfigError(f"{type(self.model).__name__} has no nn.Linear classifier to take an embedding from")
            self._install_embedding(name)

    def discover(self, example_input: Tensor) -> list[str]:
        """Resolve "auto" now, with one eval-mode, no-grad forward pass (no effect once resolved)."""
        if self._names is None or (self.want_embedding and self._classifier is None):
            self._adopt(_watch_eval(self.model, example_input))
        return self.names

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
        if self._names is None or (self.want_embedding and self._classifier is None):
            return self._first_call(args, kwargs)
        self._outs = [None] * len(self._outs)
        self.embedding = None
        out = self.call(*args, **kwargs)
        feats = self._outs
        self._outs = [None] * len(feats)
        missing = [n for n, f in zip(self._names, feats) if f is None]
        if missing:
            raise RuntimeError(f"feature tap(s) {missing} did not run during the forward pass")
        return out, feats  # type: ignore[return-value]

    def _first_call(self, args: tuple, kwargs: dict) -> tuple[Any, list[Tensor]]:
        """Discover "auto" stages (and the classifier) while running the real forward pass once."""
        out, watcher = _watch(self.model, lambda: self.call(*args, **kwargs), keep=True)
        self._adopt(watcher)
        if self.want_embedding:
            self.embedding = watcher.linear_inputs[self._classifier][1]  # type: ignore[index]
        return out, [watcher.outputs[n] for n in self.names]

    def __repr__(self) -> str:
        return f"FeatureTap({type(self.model).__name__}, layers={self._names or 'auto (not yet discovered)'})"
