"""What the integrations share: the optional import, the method they train (made or given), the one rule that adds
its terms to the framework's own loss, and the checks that keep an integration honest (one line each)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from typing import Any, Sequence

from torch import Tensor, nn

from ..errors import ConfigError, TfdError
from ..methods import Method
from ..methods.registry import method_coupling
from ..methods.create import create_method

__all__ = ["MissingExtraError", "require", "make_method", "total_loss", "extra_parameters"]


class MissingExtraError(TfdError, ImportError):
    """An integration's framework is not installed, or too old (the message names the ``pip install``)."""


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def require(module: str, extra: str, minimum: str, dist: str | None = None, pip: str | None = None) -> Any:
    """Import ``module`` or raise one line naming ``pip install 'tfdistill[extra]'`` (missing or older than
    ``minimum``)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        installed = importlib.util.find_spec(module.split(".")[0]) is not None if module.split(".")[0] not in \
            sys.modules or sys.modules[module.split(".")[0]] is not None else False
        why = f" ({module} is installed but failed to import: {str(exc).strip().splitlines()[0]})" if installed else ""
        raise MissingExtraError(f"tfdistill.integrations.{extra} needs {dist or module}>={minimum}: "
                                f"pip install {pip or repr(f'tfdistill[{extra}]')}{why}") from None
    try:
        version = importlib.metadata.version(dist or module)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(mod, "__version__", minimum)
    if _version_tuple(version) < _version_tuple(minimum):
        raise MissingExtraError(f"tfdistill.integrations.{extra} needs {dist or module}>={minimum}, found "
                                f"{version}: pip install {pip or repr(f'tfdistill[{extra}]')}")
    return mod


def make_method(method: str | Method, student: nn.Module, *, teacher: nn.Module | None, example: Tensor | None,
                num_classes: int | None, num_train: int, epochs: int, settings: dict | None, where: str,
                student_taps: str | Sequence[str] = "auto", teacher_taps: str | Sequence[str] = "auto") -> Method:
    """The :class:`Method` an integration trains: ``method`` itself when it is one, else
    :func:`~tfdistill.create_method` with ``settings``; refused in one line when it cannot work there."""
    if isinstance(method, Method):
        if settings:
            raise ConfigError(f"{where}: method settings {sorted(settings)} given with a ready Method; "
                              "pass them to create_method instead")
        m = method
    else:
        if not isinstance(method, str):
            raise ConfigError(f"{where}: method must be a method name (e.g. 'tfd', 'kd') or a Method, "
                              f"got {type(method).__name__}")
        if example is None:
            raise ConfigError(f"{where}: no example batch to set the method up on; pass example= (a few inputs)")
        if num_classes is None:
            raise ConfigError(f"{where}: pass num_classes= (the model's number of classes)")
        m = create_method(method, student, teacher=teacher, example=example, num_classes=num_classes,
                          num_train=num_train, epochs=epochs, student_taps=student_taps, teacher_taps=teacher_taps,
                          **(settings or {}))
    name = m.params.name
    if m.label_smoothing:
        raise ConfigError(f"{where}: method {name!r} smooths the labels of its cross-entropy, but the cross-entropy "
                          "here is the framework's own: set label smoothing there (e.g. Trainer's "
                          "label_smoothing_factor, timm's smoothing) and use the method without it")
    if m.pre_stages():
        raise ConfigError(f"{where}: method {name!r} has pre-stage(s) {[s.name for s in m.pre_stages()]} to run "
                          "before the main training; set its init_epochs=0, or train it with the tfdistill harness")
    return m


def total_loss(method: Method, model_loss: Tensor, terms: dict[str, Tensor]) -> Tensor:
    """The loss to backpropagate: the framework's own cross-entropy weighted by the method's ``ce_weight`` (1 for
    most methods; KD's preset: 0.1; PS-KD: 0, its soft-target term replaces it), plus the method's weighted terms."""
    loss = model_loss * method.ce_weight if method.ce_weight != 1.0 else model_loss
    for v in terms.values():
        loss = loss + v
    return loss


def extra_parameters(method: Method) -> list[nn.Parameter]:
    """The parameters the method trains besides the student's (FitNets' regressor, CRD's embeddings): what an
    integration adds to the framework's optimizer."""
    student = {id(p) for p in method.student.parameters()}
    return [p for p in method.trainable_parameters("main") if id(p) not in student]


def coupling(method: Method) -> str:
    """``per-sample`` or ``batch-coupled`` (what gradient accumulation keeps exact; see ``method_coupling``)."""
    return method_coupling(method.params.name)
