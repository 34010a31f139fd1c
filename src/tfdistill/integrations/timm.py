"""``DistillTask``: a ``timm.task.TrainingTask`` that trains with any tfdistill method (``pip install
'tfdistill[integrations]'``; timm >= 1.0.31, the task API it is tested with).

>>> task = DistillTask(model, "tfd")                         # or DistillTask(model, "kd", teacher="resnet50")
>>> out = task(images, targets)                              # {"loss", "output", "ce", "tfd_depth", "tfd_width"}
>>> out["loss"].backward()

The loss is the task's own classification criterion (timm's ``create_classification_loss``, or ``criterion=``) on
the student's output, weighted by the method's ``ce_weight``, plus the method's terms on the same forward pass --
never a second cross-entropy. :meth:`DistillTask.compile` and :meth:`DistillTask.prepare_distributed` re-wrap the
student as timm's tasks do; the taps, planned on the plain student, keep recording through the wrapper.

Whoever drives the task calls :meth:`DistillTask.set_epoch` at each epoch's start (TFD's ramp, PS-KD's alpha) and adds
:meth:`DistillTask.extra_parameters` (FitNets' regressor, CRD's embeddings; empty for TFD, KD, PS-KD) to the optimizer.
The method's state is task state (``get_task_state`` / ``load_task_state``: timm checkpoints it beside the model).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..methods import Method
from ._common import extra_parameters, make_method, require, total_loss

_timm = require("timm", "timm", "1.0.31", pip="'timm>=1.0.31'")  # timm.task's TrainingTask API as tested (1.0.31)
_task = require("timm.task", "timm", "1.0.31", dist="timm", pip="'timm>=1.0.31'")

__all__ = ["DistillTask"]


class DistillTask(_task.ClassificationTask):
    """A timm training task for any tfdistill method (see the module docs).

    Args:
        model: the student (any timm model, or any classifier).
        method: a method name (``"tfd"`` by default) or a ready :class:`~tfdistill.methods.Method` for ``model``.
        teacher: a trained teacher: a module, or a timm model name (built with ``teacher_kwargs``, e.g.
            ``pretrained=True`` or ``checkpoint_path=...``), frozen here.
        example: a few input images (default: two random images of the model's ``pretrained_cfg`` input size).
        num_classes: default ``model.num_classes``.
        num_train, epochs: for PS-KD / CRD.
        method_settings: the method's settings (``dict(tfd=dict(alpha=5e-3, beta=0))``).
        criterion, criterion_kwargs, device, dtype, verbose: as timm's ``ClassificationTask``.
    """

    def __init__(self, model: nn.Module, method: str | Method = "tfd", *, teacher: nn.Module | str | None = None,
                 teacher_kwargs: Optional[dict] = None, example: Optional[Tensor] = None,
                 num_classes: Optional[int] = None, num_train: int = 0, epochs: int = 0,
                 method_settings: Optional[dict] = None, taps: Any = "auto", teacher_taps: Any = "auto",
                 criterion: Optional[nn.Module | Callable] = None, criterion_kwargs: Optional[Dict[str, Any]] = None,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
                 verbose: bool = True) -> None:
        super().__init__(model, criterion=criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                         verbose=verbose)
        if num_classes is None:
            num_classes = getattr(model, "num_classes", None)
        if isinstance(teacher, str):
            teacher = _timm_teacher(teacher, num_classes, teacher_kwargs or {})
        elif teacher_kwargs:
            raise ConfigError("DistillTask: teacher_kwargs is for a teacher given by its timm name")
        if teacher is not None:
            teacher.to(self.device)
        if example is None and not isinstance(method, Method):
            size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
            if size is None:
                raise ConfigError("DistillTask: pass example= (a few input images); the model declares no input size")
            example = torch.randn(2, *size)
        if example is not None:
            example = example.to(self.device)
        m = make_method(method, model, teacher=teacher, example=example, num_classes=num_classes,
                        num_train=num_train, epochs=epochs, settings=method_settings, where="DistillTask",
                        student_taps=taps, teacher_taps=teacher_taps)
        self.__dict__["method"] = m  # not a submodule: its student is trainable_module (no second copy in state)

    # ------------------------------------------------------------------ the loss
    def forward(self, input: Tensor, target: Tensor, index: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``{"loss": ce_weight * criterion + terms, "output": logits, "ce": criterion, <term>: value, ...}``
        (the terms detached, for logging); ``index``: each sample's dataset index (PS-KD, CRD)."""
        method: Method = self.method
        if not self.training:
            return super().forward(input, target)
        with method.capture() as cap:
            output = self.trainable_module(input)
        ce = self.criterion(output, target)
        terms = method.terms_from(cap, output, target, images=input, index=index)
        out = {"loss": total_loss(method, ce, terms), "output": output, "ce": ce.detach()}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    # ------------------------------------------------------------------ what the driver calls
    def set_epoch(self, epoch: int) -> None:
        """The method's per-epoch hook (TFD's ramp, PS-KD's alpha, what the main stage freezes): call it at the start
        of every epoch (0-based)."""
        self.method.on_epoch_start(int(epoch))

    def extra_parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters, for the optimizer beside ``get_trainable_module().parameters()``."""
        return extra_parameters(self.method)

    def compile(self, backend: str = "inductor", mode: Optional[str] = None, **compile_kwargs: Any) -> nn.Module:
        """Compile the student (as ``ClassificationTask``); the taps record through the compiled module."""
        out = super().compile(backend=backend, mode=mode, **compile_kwargs)
        self.method.bind(self.trainable_module)
        return out

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs: Any) -> "DistillTask":
        """Wrap the student in DDP (as ``ClassificationTask``); the taps record through the wrapper."""
        if self.extra_parameters():
            raise ConfigError(f"DistillTask: method {self.method.params.name!r} trains parameters of its own, which "
                              "DDP on the student would not average across ranks; use it on one process or in "
                              "the tfdistill harness")
        super().prepare_distributed(device_ids=device_ids, **ddp_kwargs)
        self.method.bind(self.trainable_module)
        return self

    def train(self, mode: bool = True) -> "DistillTask":
        super().train(mode)
        self.method.distillers.train(mode)  # PS-KD / CRD update their memory in training mode only
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = super()._apply(fn, *args, **kwargs)
        method = self.__dict__.get("method")
        if method is not None:  # .to(device) moves the method's modules and the teacher with the task
            method.distillers._apply(fn)
            if method.teacher is not None:
                method.teacher._apply(fn)
        return result

    # ------------------------------------------------------------------ checkpoints
    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        return {} if ema else {"tfdistill_method": self.method.component_state_dict()}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if ema or not state:
            return
        if "tfdistill_method" not in state:
            if strict:
                raise ConfigError("DistillTask: the checkpoint's task state has no tfdistill method state")
            return
        self.method.load_component_state_dict(state["tfdistill_method"])


def _timm_teacher(name: str, num_classes: Optional[int], kwargs: dict) -> nn.Module:
    if name not in _timm.list_models() and not _timm.is_model(name):
        raise ConfigError(f"DistillTask: unknown timm model {name!r} for the teacher (timm.list_models() lists them)")
    try:
        return _timm.create_model(name, num_classes=num_classes, **kwargs)
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"DistillTask: cannot build teacher {name!r}: {first}") from None
