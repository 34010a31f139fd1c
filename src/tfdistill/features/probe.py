"""Rule 4, the fallback: stage outputs guessed from one watched forward pass (the probe).

Used only when nothing names the taps, the model declares none and the torchvision table has no entry for its class
(see :mod:`tfdistill.features.resolve` for the order). The probe also measures what every rule needs: each
module's output shape on an example input, its layout and when it finished.

The probe's hard rules
----------------------
* Only 4D outputs with more than one spatial position count. A 1x1 map has no positions to compare (attention
  transfer's normalised map of one position is the constant 1, TFD's width-wise importance degenerates to the sign
  of each channel); name such a layer to tap it anyway. A 3-D (tokens) output is never read as a map here: its
  token grid is not known to the probe (a model that declares it, or the torchvision table, handles token models).
* Never a module inside an attention or MLP sub-block (a module path component or class name containing ``attn``,
  ``attention``, ``mlp`` or ``ffn``): the relative-position bias network of a Swin attention is not a stage.
* A *candidate* is a container module (it has child modules and parameters). A candidate that holds another
  candidate whose output size is neither its own input nor its own output size spans several stages (a
  ``features`` Sequential, a ``trunk``) and is dropped. Work at the input resolution is allowed, so a ResNet
  ``layer2`` whose first block runs a 1x1 convolution before its stride-2 one stays a stage.
* Candidates are grouped by output spatial size; in each group the one that finishes *last* in the forward pass is
  the stage (so among nested modules producing the same tensor the outermost wins). A candidate inside a kept one
  with a different output size is internal work of a downsampling block (an expansion convolution at the input
  resolution) and is skipped.
* Stages are ordered by when they finish, shallow to deep, and their resolution never increases: a stage larger
  than one before it is dropped.
* Never a stage: a module whose output is spatially *larger* than its input (an adaptive pool that upsamples, e.g.
  torchvision VGG's ``avgpool`` turning a 1x1 map into a 7x7 copy at 32 px), and parameter-free pooling, identity,
  dropout or upsampling layers (their output is a resampled copy of the stage before them).
* If fewer than two container stages exist (a model built as one flat ``Sequential``), the rule falls back to leaf
  modules: the last leaf at each spatial size.

Layouts. A module whose output is channels-last *shaped* (N, H, W, C) is recognised when the last layer with
parameters that ran inside it acts on the last dimension (``nn.Linear``, ``nn.LayerNorm``) and produced that very
shape, or when the last layer is a ``Permute`` to (0, 2, 3, 1); such taps are permuted to (N, C, H, W). (A
``torch.channels_last`` *memory format* is a different thing: the shape is NCHW and nothing is permuted.)
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError



def image_input(args: Any, kwargs: Any = None) -> Tensor | None:
    """The image batch of a forward call: the first 4-D tensor among the positional arguments, else among the
    keyword arguments (``pixel_values=`` of a Hugging Face model first); None if there is none."""
    for x in args or ():
        if isinstance(x, Tensor) and x.dim() == 4:
            return x
    if kwargs:
        x = kwargs.get("pixel_values")
        if isinstance(x, Tensor) and x.dim() == 4:
            return x
        for x in kwargs.values():
            if isinstance(x, Tensor) and x.dim() == 4:
                return x
    return None


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


_SUBBLOCK = re.compile(r"attn|attention|mlp|ffn", re.IGNORECASE)


def inside_attention_or_mlp(name: str, modules: dict[str, nn.Module]) -> bool:
    """Whether ``name`` is, or lies inside, an attention or MLP sub-block (a path component or the class name of
    the module or of an ancestor matches ``attn|attention|mlp|ffn``) -- never a stage."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        path = ".".join(parts[:k])
        m = modules.get(path)
        if _SUBBLOCK.search(parts[k - 1]) or (m is not None and _SUBBLOCK.search(type(m).__name__)):
            return True
    return False


def _describe_output(output: Any) -> str:
    """What a module returned, in a few words (for errors): ``a tensor``, ``a tuple of 3``, ``None``, ..."""
    if isinstance(output, Tensor):
        return "a tensor"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    return "None" if output is None else f"a {type(output).__name__}"


class _Watcher:
    """Records, for one forward pass, when each module finished, its output shape and how often it ran."""

    def __init__(self, model: nn.Module, keep: bool = False) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.keep = keep
        self.order: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.shape: dict[str, tuple[int, ...] | None] = {}
        self.raw: dict[str, tuple[int, ...] | None] = {}
        self.kind: dict[str, str] = {}
        self.input_shape: tuple[int, ...] | None = None
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
        self.handles.append(model.register_forward_pre_hook(self._root, with_kwargs=True))

    def _root(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        x = image_input(args, kwargs)
        if self.input_shape is None and x is not None:
            self.input_shape = tuple(x.shape)

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.counter += 1
            self.order[name] = self.counter
            self.calls[name] = self.calls.get(name, 0) + 1
            ok = isinstance(output, Tensor) and output.dim() == 4
            self.shape[name] = tuple(output.shape) if ok else None
            self.raw[name] = tuple(output.shape) if isinstance(output, Tensor) else None
            self.kind[name] = _describe_output(output)
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
    def spatial(self, name: str) -> tuple[int, int] | None:
        """``name``'s output size if it can be a stage (4D, more than one position, not an upsampling or
        parameter-free resampling layer), else None."""
        s = self.size_of(name)
        if s is None or s[0] * s[1] <= 1 or isinstance(self.modules[name], _RESAMPLERS):
            return None
        ins = self.in_sizes_of(name)
        if ins and all(s[0] > i[0] or s[1] > i[1] for i in ins):  # upsamples
            return None
        return s

    def last_per_size(self, names: list[str]) -> list[str]:
        """Of ``names``, the one that finishes last at each spatial size, in forward order (non-stages dropped)."""
        best: dict[tuple[int, int], str] = {}
        for n in names:
            key = self.spatial(n) if n in self.order else None
            if key is not None and (key not in best or self.order[n] > self.order[best[key]]):
                best[key] = n
        return sorted(best.values(), key=self.order.__getitem__)

    def stages(self) -> list[str]:
        """The probe rule (module docs): the guessed stage outputs, shallow to deep."""
        modules = self.modules
        size = {n: self.size_of(n) for n in self.order}
        in_sizes = {n: self.in_sizes_of(n) for n in self.order}

        def is_container(m: nn.Module) -> bool:
            return any(True for _ in m.children()) and any(True for _ in m.parameters())

        allowed = [n for n in self.order if not inside_attention_or_mlp(n, modules)]
        cands = [n for n in allowed if self.spatial(n) is not None and is_container(modules[n])]

        def single_stage(name: str) -> bool:
            ok = {size[name], *in_sizes[name]}
            prefix = name + "."
            return all(size[c] in ok for c in cands if c.startswith(prefix))

        kept = [n for n in cands if single_stage(n)]

        def inner_work(name: str) -> bool:  # e.g. the 1x1 expansion inside a stride-2 block, at the input size
            return any(name.startswith(a + ".") and size[a] != size[name] for a in kept)

        stages = self.non_increasing(self.last_per_size([n for n in kept if not inner_work(n)]))
        if len(stages) < 2:
            leaves = [n for n in allowed if not any(True for _ in modules[n].children())]
            stages = self.non_increasing(self.last_per_size(leaves))
        return stages

    def non_increasing(self, names: list[str]) -> list[str]:
        """Drop a map that is larger (in either dimension) than one before it."""
        out: list[str] = []
        for n in names:
            s = self.spatial(n)
            if s is None:
                continue
            if all(s[0] <= (p := self.spatial(o))[0] and s[1] <= p[1] for o in out):  # type: ignore[index]
                out.append(n)
        return out

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


def _watch_eval(model: nn.Module, example_input: Any, kwargs: dict | None = None) -> _Watcher:
    """One eval-mode, no-grad forward pass under watch (BatchNorm statistics untouched, mode restored).
    ``example_input`` is the first positional argument, or a tuple of them (``kwargs``: keyword arguments, e.g.
    a Hugging Face model's ``pixel_values=``)."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _watch(model, lambda: model(*args, **(kwargs or {})))[1]
    finally:
        model.train(was_training)
