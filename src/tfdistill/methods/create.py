"""``create_method``: any registered method as a module for someone else's training loop (``tfdistill.create_method``).

>>> method = tfdistill.create_method("tfd", student, example=images[:2], num_classes=10)
>>> logits, terms = method(images, targets)          # the same Method the harness trains
>>> loss = sum(terms.values())

A thin wrapper over :func:`~.method.build_method`: settings as keyword arguments (``ce_weight=0.1``,
``tfd=dict(alpha=0.01, beta=0)``) instead of a config section, what the method needs beyond one batch
(:attr:`~.base.Distiller.needs`) asked for by name, and the method made ready for epoch 0. The caller then drives it
as the engine does: ``method.on_epoch_start(epoch)`` before every epoch (TFD's ramp, PS-KD's alpha, what the main
stage freezes), ``method.trainable_parameters()`` to the optimizer (the student's and the method's own, e.g.
FitNets' regressor: :meth:`~.method.Method.extra_parameters`), ``method.state_dict()`` to checkpoint it (student,
regressors, memory banks, PS-KD's past predictions).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import unwrap
from .method import Method, build_method, logits_of
from .registry import DISTILLERS, method_schema, method_uses, resolve_preset

__all__ = ["create_method", "method_needs"]

NEEDS = {
    "num_train": "num_train= (the training set size)",
    "epochs": "epochs= (the number of training epochs)",
    "index": "each sample's dataset index in every batch: method(images, targets, index)",
}


def method_needs(name: str) -> tuple[str, ...]:
    """What method ``name`` needs beyond a batch of images and labels (its components' declared
    :attr:`~.base.Distiller.needs`, plus ``"paired_batches"`` for CS-KD-like methods), in a fixed order."""
    declared = {n for c in resolve_preset(name).components for n in DISTILLERS.get(c).needs}
    if method_uses(name).paired_batches:
        declared.add("paired_batches")
    return tuple(n for n in ("num_train", "epochs", "index", "paired_batches") if n in declared)


def create_method(name: str, student: nn.Module, *, teacher: nn.Module | None = None, example: Tensor,
                  num_classes: int, num_train: int = 0, epochs: int = 0, student_taps: str | Sequence[str] = "auto",
                  teacher_taps: str | Sequence[str] = "auto", **settings: Any) -> Method:
    """The method ``name`` (``tfdistill methods`` lists them; ``a+b`` combines) for ``student``, as the engine
    trains it.

    Args:
        name: a registered method or a ``+`` combination (``tfd``, ``kd``, ``tfd+kd``, ``pskd``, ...).
        student: the network to train (its forward returns logits, or an output with ``.logits``).
        teacher: a trained network for teacher-based methods (frozen here: eval mode, no gradients).
        example: one input batch (two images are enough) on the device the method will run on; the taps and the
            shapes of the method's own modules are found on it (eval mode, no gradients).
        num_classes: the number of classes of the student's (and teacher's) logits.
        num_train, epochs: for methods that need them (PS-KD: both; CRD: ``num_train``); see :func:`method_needs`.
        student_taps, teacher_taps: ``"auto"`` or a list of module names (see :class:`~tfdistill.FeatureTap`).
        settings: the method's settings, as in its config section: ``ce_weight``, ``label_smoothing`` and one
            dict per component (``tfd=dict(alpha=5e-3, beta=0)``, ``kd=dict(T=4)``).

    Returns the :class:`~.method.Method`: ``method(images, targets[, index]) -> (logits, {name: weighted term})``,
    ready for epoch 0 (``on_epoch_start(0)`` was called, unless the method has pre-stages to run first).
    Raises :class:`~tfdistill.errors.ConfigError` / ``UnknownNameError`` with one line on bad input.
    """
    resolve_preset(name)  # an unknown name: one line listing the valid ones
    if not isinstance(student, nn.Module):
        raise ConfigError(f"create_method: student must be an nn.Module, got {type(student).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError(f"create_method: teacher must be an nn.Module or None, got {type(teacher).__name__}")
    if not isinstance(example, Tensor):
        raise ConfigError("create_method needs example= (one input batch on the right device, e.g. images[:2]), "
                          f"got {type(example).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"create_method: num_classes must be a positive integer, got {num_classes!r}")
    needs = method_needs(name)
    if "paired_batches" in needs:
        raise ConfigError(f"method {name!r} needs paired batches (every sample followed by a same-class partner: "
                          "images of 2N rows for N targets); use it through the tfdistill harness or pass such batches")
    missing = [n for n, v in (("num_train", num_train), ("epochs", epochs)) if n in needs and int(v) < 1]
    if missing:
        raise ConfigError(f"method {name!r} needs {' and '.join(NEEDS[n] for n in missing)}"
                          + ("; and " + NEEDS["index"] if "index" in needs else ""))
    params = _params(name, settings)
    _check_classes(student, example, num_classes, "student")
    if teacher is not None:
        _check_classes(teacher, example, num_classes, "teacher")
    method = build_method(student, params, example=example, num_classes=num_classes, num_train=int(num_train),
                          epochs=int(epochs), teacher=teacher, student_taps=student_taps, teacher_taps=teacher_taps,
                          student_name=type(student).__name__,
                          teacher_name=type(teacher).__name__ if teacher is not None else None)
    if not method.pre_stages():
        method.on_epoch_start(0)
    return method


def _params(name: str, settings: dict[str, Any]) -> Any:
    """The method's schema dataclass with ``settings`` applied (validated: one line naming the valid keys)."""
    schema = method_schema(name)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.name != "name"}
    bad = sorted(set(settings) - set(fields))
    if bad:
        raise ConfigError(f"method {name!r} has no setting(s) {bad}; valid: {', '.join(fields)}")
    plain = {}
    for key, value in settings.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            sub = {f.name for f in dataclasses.fields(fields[key].type)} if dataclasses.is_dataclass(
                fields[key].type) else set()
            wrong = sorted(set(value) - sub)
            if wrong:
                raise ConfigError(f"method {name!r}: {key} has no setting(s) {wrong}; valid: {', '.join(sorted(sub))}")
        plain[key] = value
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad setting for method {name!r}: {str(exc).strip().splitlines()[0]}") from None


def _check_classes(model: nn.Module, example: Tensor, num_classes: int, who: str) -> None:
    model = unwrap(model)  # never the compiled form: code compiled before the taps are made would not run them
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:  # a model that cannot run the example: one line, not the traceback from inside it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"create_method: the {who} ({type(model).__name__}) cannot run the example batch of shape "
                          f"{tuple(example.shape)}: {type(exc).__name__}: {first}") from None
    finally:
        model.train(was)
    logits = logits_of(out)
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ConfigError(f"the {who} ({type(model).__name__}) gives logits of shape {tuple(logits.shape)}, not "
                          f"(N, {num_classes}): num_classes={num_classes}; student and teacher need the same classes")
