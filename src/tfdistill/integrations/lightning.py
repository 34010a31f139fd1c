"""``DistillCallback``: any tfdistill method added to an unmodified ``LightningModule``'s training loss
(``pip install 'tfdistill[lightning]'``; lightning >= 2.0).

>>> trainer = L.Trainer(callbacks=[DistillCallback("tfd", student="net")], accumulate_grad_batches=2)
>>> trainer.fit(module, loader)

A Lightning callback cannot change the loss through Lightning's public hooks (``on_before_backward`` sees the loss
but cannot replace it). The mechanism used here, named: at ``setup`` the callback sets an instance attribute
``module.training_step`` that wraps the module's own (Lightning calls hooks by attribute lookup on the module), and
removes it at ``teardown``. The wrapper runs the original step inside ``method.capture()``, then returns
``ce_weight * (the loss the step returned) + the method's terms`` -- before Lightning divides by
``accumulate_grad_batches``, so accumulation, precision plugins, clipping and DDP see the total like any loss.

What the module must do: in ``training_step``, call the student (``student=`` names it: an attribute path of the
module, e.g. ``"net"``; default the module itself) once on the batch's images and return its cross-entropy -- a
tensor, or a dict whose ``"loss"`` it is. The batch holds the images at ``batch[0]``, the labels at ``batch[1]`` and,
for PS-KD and CRD, each sample's dataset index at ``batch[2]`` (else pass ``inputs=``, ``targets=``, ``index=``
functions of the batch). Each term is logged (``distill/<term>``); the method's state is in the callback's
checkpoint state; its per-epoch hook runs at each training epoch's start.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import unwrap
from ..methods import Method, logits_of
from ._common import extra_parameters, make_method, require, total_loss

_L = require("lightning", "lightning", "2.0")
Callback = _L.pytorch.Callback

__all__ = ["DistillCallback"]


class DistillCallback(Callback):
    """Adds a tfdistill method's terms to an unmodified LightningModule's training loss (see the module docs).

    Args:
        method: a method name (``"tfd"`` by default) or a ready :class:`~tfdistill.methods.Method` for the student.
        teacher: a trained network for teacher-based methods (``"kd"``, ``"tfd+kd"``, ...), frozen here.
        student: attribute path of the student network in the module (``"net"``); None: the module itself.
        num_classes: default: the width of the student's logits on the first batch.
        num_train, epochs: for PS-KD / CRD (default: the training set's length, ``trainer.max_epochs``).
        inputs, targets, index: functions of a batch giving images, labels, dataset indices (defaults: ``b[0]``,
            ``b[1]``, ``b[2]``).
        taps, teacher_taps: ``"auto"`` or module names (see :class:`tfdistill.FeatureTap`).
        example: a few input images: the method is then set up when fitting starts, before a resumed optimizer
            state is loaded -- needed to resume a method with parameters of its own (FitNets, CRD); without it,
            the method is set up on the first training batch.
        method_settings: the method's settings (``dict(ce_weight=1.0, tfd=dict(alpha=5e-3, beta=0))``).
    """

    def __init__(self, method: str | Method = "tfd", *, teacher: nn.Module | None = None, student: str | None = None,
                 num_classes: int | None = None, num_train: int = 0, epochs: int = 0,
                 inputs: Callable[[Any], Tensor] | None = None, targets: Callable[[Any], Tensor] | None = None,
                 index: Callable[[Any], Tensor] | None = None, taps: Any = "auto", teacher_taps: Any = "auto",
                 example: Tensor | None = None, method_settings: dict | None = None) -> None:
        self.spec = method
        self.teacher = teacher
        self.student_path = student
        self.num_classes, self.num_train, self.epochs = num_classes, num_train, epochs
        self.inputs = inputs or (lambda b: b[0])
        self.targets = targets or (lambda b: b[1])
        self.index = index or (lambda b: b[2])
        self.taps, self.teacher_taps = taps, teacher_taps
        self.settings = method_settings
        self.example = example
        self.method: Method | None = None
        self._pending_state: dict | None = None
        self._logits: Any = None
        self._hook: Any = None
        self._module: Any = None

    # ------------------------------------------------------------------ the wrapped training_step
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or "training_step" in vars(pl_module):
            return
        original = pl_module.training_step  # the module's own (bound) step
        self._module = pl_module

        def training_step(batch: Any, *args: Any, **kwargs: Any) -> Any:
            return self._step(trainer, pl_module, original, batch, *args, **kwargs)

        pl_module.training_step = training_step  # an instance attribute: Lightning looks hooks up on the module

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if "training_step" in vars(pl_module):
            del pl_module.training_step
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _student(self, pl_module: nn.Module) -> nn.Module:
        if self.student_path is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.student_path)
        except AttributeError:
            names = [n for n, _ in pl_module.named_children()]
            raise ConfigError(f"DistillCallback: the module has no student {self.student_path!r}; its children: "
                              f"{names}") from None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.example is not None and self.method is None:
            self._build(trainer, pl_module, self.example.to(pl_module.device))

    def _build(self, trainer: Any, pl_module: nn.Module, images: Tensor) -> None:
        student = self._student(pl_module)
        if self.teacher is not None:
            self.teacher.to(images.device)
        num_classes = self.num_classes
        if num_classes is None and not isinstance(self.spec, Method):
            plain = unwrap(student)  # never the compiled form before the taps exist
            with torch.no_grad():
                was = plain.training
                plain.eval()
                num_classes = int(logits_of(plain(images[:2])).shape[1])
                plain.train(was)
        num_train = self.num_train or _length(trainer)
        epochs = self.epochs or max(0, int(trainer.max_epochs or 0))
        self.method = make_method(self.spec, student, teacher=self.teacher, example=images[:2],
                                  num_classes=num_classes, num_train=num_train, epochs=epochs,
                                  settings=self.settings, where="DistillCallback", student_taps=self.taps,
                                  teacher_taps=self.teacher_taps)
        if self._pending_state is not None:
            self.method.load_component_state_dict(self._pending_state)
            self._pending_state = None
        self.method.on_epoch_start(trainer.current_epoch)
        extra = extra_parameters(self.method)
        if extra:
            if len(trainer.optimizers) != 1:
                raise ConfigError(f"DistillCallback: method {self.method.params.name!r} trains parameters of its own; "
                                  f"it needs exactly one optimizer, the module configures {len(trainer.optimizers)}")
            trainer.optimizers[0].add_param_group({"params": extra})

        def record(module: nn.Module, args: Any, output: Any) -> None:
            self._logits = output

        self._hook = student.register_forward_hook(record)

    def _step(self, trainer: Any, pl_module: Any, original: Callable, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if self.method is None:
            self._build(trainer, pl_module, self.inputs(batch))
        method = self.method
        assert method is not None
        self._logits = None
        with method.capture() as cap:
            out = original(batch, *args, **kwargs)
        if out is None:  # the module skipped this batch
            return out
        loss = out["loss"] if isinstance(out, dict) else out
        if not isinstance(loss, Tensor):
            raise ConfigError("DistillCallback: training_step must return its cross-entropy (a tensor, or a dict "
                              f"with 'loss'), got {type(out).__name__}")
        if self._logits is None:
            raise ConfigError(f"DistillCallback: training_step did not call the student "
                              f"({self.student_path or 'the module itself'}); set student= to the network it calls")
        index = self.index(batch) if method.needs_index() else None
        terms = method.terms_from(cap, logits_of(self._logits), self.targets(batch), images=self.inputs(batch),
                                  index=index)
        self._logits = None
        total = total_loss(method, loss, terms)
        for k, v in terms.items():
            pl_module.log(f"distill/{k}", v.detach(), on_step=True, on_epoch=False, prog_bar=False)
        return {**out, "loss": total} if isinstance(out, dict) else total

    # ------------------------------------------------------------------ epochs and checkpoints
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.method is not None:
            self.method.on_epoch_start(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        if self.method is not None:
            return {"method": self.method.component_state_dict()}
        return {"method": self._pending_state} if self._pending_state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("method")
        if state is None:
            return
        if self.method is not None:
            self.method.load_component_state_dict(state)
        else:
            self._pending_state = state


def _length(trainer: Any) -> int:
    loader = getattr(trainer, "train_dataloader", None)
    ds = getattr(loader, "dataset", None)
    try:
        return len(ds) if ds is not None else 0
    except TypeError:
        return 0
