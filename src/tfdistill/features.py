"""Feature taps: intermediate features of any ``nn.Module`` through forward hooks, without editing the model.

>>> tap = FeatureTap(model, "auto")          # or FeatureTap(model, ["layer1", "layer2", "layer3"])
>>> logits, feats = tap(images)              # feats: list of stage outputs, shallow to deep

The "auto" rule
---------------
Discovery watches one forward pass (the first call, or :func:`find_stages` with an example input); only
outputs that are 4D with more than one spatial position count. A 1x1 map is left out: it has no positions to
compare (attention transfer's normalised attention map of one position is the constant 1, TFD's width-wise
importance degenerates to the sign of each channel), and it is, up to the global pooling, the classifier's input,
which methods that want it take as the embedding. Name such a layer in a list of taps to tap it anyway (at 32 px
a torchvision ResNet18 is 1x1 after ``layer4``, so "auto" gives ``layer1..layer3`` there and ``layer1..layer4``
at 64 px and above).

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
5. Never a stage: a module whose output is spatially *larger* than its input (an adaptive pool that upsamples,
   e.g. torchvision VGG's ``avgpool`` turning a 1x1 map into a 7x7 copy at 32 px), and parameter-free pooling,
   identity, dropout or upsampling layers (their output is a resampled copy of the stage before them).

A stem of bare layers (torchvision ResNet's ``conv1/bn1/relu/maxpool``) holds no container and so is not a stage;
trailing bare ``bn``/``relu``/pooling layers are not either. If fewer than two container stages exist (a model
built as one flat ``Sequential``), the rule falls back to leaf modules: the last leaf at each spatial size (pooling
layers excluded, rule 5).
Results (tests cover them): CIFAR ResNets -> ``layer1..layer3``; WRN -> ``block1..block3``; CIFAR VGG ->
``block0, block1, block2, block4``; CIFAR MobileNetV2 -> ``blocks.1, .2, .4, .6``; torchvision ResNets at 224 px ->
``layer1..layer4``; torchvision VGG -> the last ReLU before each max-pool (at 32 px: 32, 16, 8, 4 and 2 px);
torchvision MobileNetV2 -> ``features.1, .3, .6, .13, .18`` (the last block at each of 112/56/28/14/7; ``.18`` is
its 1x1 head convolution); ConvNeXt -> ``features.1, .3, .5, .7``; Swin -> ``features.1, .3, .5, .7`` (see
below); DenseNet -> the four dense blocks.

Layouts. Features are NCHW. A module whose output is channels-last *shaped* (N, H, W, C) -- torchvision's Swin
stages, the patch embedding of ViT-like models -- is recognised when the last layer with parameters that ran inside
it acts on the last dimension (``nn.Linear``, ``nn.LayerNorm``) and produced that very shape, or when the last layer
is a ``Permute`` to (0, 2, 3, 1); such taps are permuted to (N, C, H, W) (a view, no copy) for discovery and for
every call, with named taps too. (A ``torch.channels_last`` *memory format* is a different thing: the shape is
NCHW and nothing is permuted.) :meth:`FeatureTap.describe` says which taps were permuted.

Repeated calls. A module called several times in one forward pass (a shared block) yields its *last* output; the
tap warns once (naming the module) the first time that happens.

Hooks hold references only for the duration of one call's bookkeeping; each call clears the previous features,
so nothing stale accumulates. Works under ``torch.no_grad``, autocast and channels_last (features keep the dtype
and memory format the model produced). Remove the hooks with :meth:`FeatureTap.remove` or use a ``with`` block.
"""

from __future__ import annotations

import warnings
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


_RESAMPLERS: tuple[type, ...] = (
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._LPPoolNd, nn.Identity, nn.Upsample,
    nn.modules.dropout._DropoutNd, nn.Flatten,
)
"""Parameter-free layers whose output is a resampled (or the same) copy of their input: never a stage (rule 5)."""


def _tensor_key(t: Tensor) -> tuple | None:
    """Identifies a tensor during one pass (storage, shape, strides); None where there is no storage to read
    (functorch-batched, meta or fake tensors)."""
    try:
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
    except (RuntimeError, NotImplementedError):
        return None


def _is_permute_to_last(m: nn.Module) -> bool | None:
    """True/False for a ``Permute``-like leaf (torchvision.ops.misc.Permute) to channels-last / channels-first."""
    dims = getattr(m, "dims", None)
    if type(m).__name__ != "Permute" or not isinstance(dims, (list, tuple)) or len(dims) != 4:
        return None
    return list(dims) == [0, 2, 3, 1]


class _Watcher:
    """Records, for one forward pass, when each module finished, its output shape and how often it ran."""

    def __init__(self, model: nn.Module, keep: bool = False) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.keep = keep
        self.order: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.shape: dict[str, tuple[int, ...] | None] = {}
        self.in_shape: dict[str, tuple[int, ...] | None] = {}
        self.in_from: dict[str, str | None] = {}
        self._produced: dict[tuple, str] = {}
        self.outputs: dict[str, Any] = {}
        self.linear_inputs: dict[str, tuple[int, Tensor | None]] = {}
        self.handles: list[Any] = []
        self.counter = 0
        self._layout: dict[str, bool] | None = None
        for name, m in model.named_modules():
            if name:
                self.handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.counter += 1
            self.order[name] = self.counter
            self.calls[name] = self.calls.get(name, 0) + 1
            ok = isinstance(output, Tensor) and output.dim() == 4
            self.shape[name] = tuple(output.shape) if ok else None
            x = inputs[0] if inputs else None
            ok_in = isinstance(x, Tensor) and x.dim() == 4
            self.in_shape[name] = tuple(x.shape) if ok_in else None
            key_in = _tensor_key(x) if ok_in else None
            self.in_from[name] = self._produced.get(key_in) if key_in is not None else None
            key_out = _tensor_key(output) if ok else None
            if key_out is not None:
                self._produced[key_out] = name
            if self.keep:
                self.outputs[name] = output
            if isinstance(module, nn.Linear):
                self.linear_inputs[name] = (self.counter, inputs[0] if self.keep else None)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # ------------------------------------------------------------------ layouts
    def channels_last(self, name: str) -> bool:
        """Whether ``name``'s 4D output is shaped (N, H, W, C) (see "Layouts" in the module docs)."""
        if self._layout is None:
            self._layout = {}
        if name not in self._layout:
            self._layout[name] = self._detect_channels_last(name)
        return self._layout[name]

    def _detect_channels_last(self, name: str) -> bool:
        shape = self.shape.get(name)
        if shape is None:
            return False
        prefix = name + "."
        inside = [n for n in self.order if (n == name or n.startswith(prefix))
                  and not any(True for _ in self.modules[n].children())]
        if not inside:
            return False
        last_leaf = max(inside, key=self.order.__getitem__)
        perm = _is_permute_to_last(self.modules[last_leaf])
        if perm is not None:
            return perm
        with_params = [n for n in inside if any(True for _ in self.modules[n].parameters(recurse=False))]
        if not with_params:
            return False
        leaf = max(with_params, key=self.order.__getitem__)
        m = self.modules[leaf]
        if isinstance(m, nn.Linear):
            channels = m.out_features
        elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            channels = int(m.normalized_shape[0])
        else:  # convolutions, batch/group norm: channels first
            return False
        return self.shape.get(leaf) == shape and shape[-1] == channels and shape[1] != channels

    def _spatial_of(self, shape: tuple[int, ...] | None, channels_last: bool) -> tuple[int, int] | None:
        if shape is None:
            return None
        return (shape[1], shape[2]) if channels_last else (shape[2], shape[3])

    def size_of(self, name: str) -> tuple[int, int] | None:
        return self._spatial_of(self.shape.get(name), self.channels_last(name))

    def in_sizes_of(self, name: str) -> list[tuple[int, int]]:
        """The spatial size of ``name``'s input: in its producer's layout when a module produced it, else both
        readings (a tensor made by a plain op, e.g. ``x.permute(0, 2, 3, 1)`` in a forward method)."""
        shape, src = self.in_shape.get(name), self.in_from.get(name)
        if shape is None:
            return []
        if src is not None:
            return [self._spatial_of(shape, self.channels_last(src))]  # type: ignore[list-item]
        return list(dict.fromkeys([(shape[2], shape[3]), (shape[1], shape[2])]))

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[str]:
        modules = self.modules
        size = {n: self.size_of(n) for n in self.order}
        in_sizes = {n: self.in_sizes_of(n) for n in self.order}

        def upsamples(name: str) -> bool:
            o, ins = size[name], in_sizes[name]
            return o is not None and bool(ins) and all(o[0] > i[0] or o[1] > i[1] for i in ins)

        def spatial(name: str) -> tuple[int, int] | None:
            s = size[name]
            if s is None or s[0] * s[1] <= 1 or upsamples(name) or isinstance(modules[name], _RESAMPLERS):
                return None
            return s

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
            allowed = {size[name], *in_sizes[name]}
            prefix = name + "."
            return all(size[c] in allowed for c in cands if c.startswith(prefix))

        kept = [n for n in cands if single_stage(n)]

        def inner_work(name: str) -> bool:  # e.g. the 1x1 expansion inside a stride-2 block, at the input size
            return any(name.startswith(a + ".") and size[a] != size[name] for a in kept)

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

    A module called several times in one forward pass yields its *last* output (with a warning, once). Taps whose
    module returns a channels-last shaped (N, H, W, C) tensor are permuted to (N, C, H, W) once the first call or
    :meth:`discover` has seen them (see "Layouts" in the module docs). :meth:`describe` says what was tapped.
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
        self.auto = isinstance(layers, str)
        self._outs: list[Tensor | None] = []
        self._handles: list[Any] = []
        self._names: list[str] | None = None
        self._permute: list[bool] = []
        self._shapes: list[tuple[int, ...]] | None = None
        self._checked = False  # layouts of named taps checked (auto taps: at discovery)
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
        return self._names is not None

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """(C, H, W) of each tap as of the first call (empty before it)."""
        return list(self._shapes or [])

    def _install(self, names: list[str]) -> None:
        self._names = names
        self._outs = [None] * len(names)
        self._permute = [False] * len(names)
        for k, m in enumerate(_resolve(self.model, names)):
            self._handles.append(m.register_forward_hook(self._store(k)))

    def _store(self, k: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active:  # the model run by someone else (another tap on a shared teacher, a plain call)
                return
            if self._outs[k] is not None:
                self._repeated.add(k)
            self._outs[k] = output.permute(0, 3, 1, 2) if self._permute[k] else output

        return hook

    def _install_embedding(self, name: str) -> None:
        self._classifier = name
        module = dict(self.model.named_modules())[name]

        def pre_hook(module: nn.Module, inputs: Any) -> None:
            if self._active:
                self.embedding = inputs[0]

        self._handles.append(module.register_forward_pre_hook(pre_hook))

    def _adopt(self, watcher: _Watcher) -> None:
        """Install the hooks that discovery on ``watcher``'s pass calls for; read the taps' layouts from it."""
        if self._names is None:
            stages = watcher.stages()
            if len(stages) < 1:
                raise ConfigError(f"found no 4D stage outputs in {type(self.model).__name__} to tap")
            self._install(stages)
        if not self._checked:
            self._permute = [watcher.channels_last(n) for n in self.names]
            self._checked = True
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
        """Resolve "auto" now (and check the layout of named taps), with one eval-mode, no-grad forward pass
        (no effect once resolved)."""
        if self._names is None or not self._checked or (self.want_embedding and self._classifier is None):
            self._adopt(_watch_eval(self.model, example_input))
            self._outs = [None] * len(self._outs)  # named taps' hooks ran too: keep nothing from this pass
            self._repeated.clear()
            self.embedding = None
        return self.names

    def describe(self) -> str:
        """The taps as one line: ``layer1 64x32x32, layer2 128x16x16`` (+ how they were chosen)."""
        if self._names is None:
            return "auto (not yet discovered)"
        shapes = self._shapes or [()] * len(self._names)
        parts = []
        for n, shp, perm in zip(self._names, shapes, self._permute or [False] * len(self._names)):
            dims = "x".join(str(d) for d in shp) if shp else "?"
            parts.append(f"{n} {dims}" + (" (N,H,W,C output, permuted)" if perm else ""))
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
        if self._names is None or not self._checked or (self.want_embedding and self._classifier is None):
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
        missing = [n for n, f in zip(self._names, feats) if f is None]
        if missing:
            raise RuntimeError(f"feature tap(s) {missing} did not run during the forward pass")
        if self._repeated:
            self._warn_repeated([self._names[k] for k in sorted(self._repeated)])
            self._repeated.clear()
        if self._shapes is None:
            self._shapes = [tuple(f.shape[1:]) for f in feats]  # type: ignore[union-attr]
        return out, feats  # type: ignore[return-value]

    def _first_call(self, args: tuple, kwargs: dict) -> tuple[Any, list[Tensor]]:
        """Discover "auto" stages (and the classifier) while running the real forward pass once."""
        out, watcher = _watch(self.model, lambda: self.call(*args, **kwargs), keep=True)
        self._adopt(watcher)
        if self.want_embedding:
            self.embedding = watcher.linear_inputs[self._classifier][1]  # type: ignore[index]
        feats = [watcher.outputs[n] for n in self.names]
        feats = [f.permute(0, 3, 1, 2) if p else f for f, p in zip(feats, self._permute)]
        self._outs = [None] * len(self._outs)
        self._repeated.clear()
        if self._shapes is None:
            self._shapes = [tuple(f.shape[1:]) for f in feats]
        return out, feats

    def __repr__(self) -> str:
        return f"FeatureTap({type(self.model).__name__}, layers={self._names or 'auto (not yet discovered)'})"
