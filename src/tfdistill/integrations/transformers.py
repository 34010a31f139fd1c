"""``DistillTrainer``: a ``transformers.Trainer`` that trains with any tfdistill method (``pip install
'tfdistill[transformers]'``; transformers >= 5.0, which itself needs Python >= 3.10 and torch >= 2.4).

>>> trainer = DistillTrainer(model=model, args=args, train_dataset=ds, method="tfd")   # or method="kd", teacher=t
>>> trainer.train()

The loss of a training step is the model's own loss (its cross-entropy: the model computes it from ``labels``),
weighted by the method's ``ce_weight``, plus the method's terms on the same forward pass -- never a second
cross-entropy. The features are recorded while the Trainer's own call of the model runs (``method.capture()``), so
a compiled (``torch_compile=True``) or otherwise wrapped model is seen through.

Gradient accumulation: ``compute_loss`` returns a per-batch mean, and the Trainer is told so
(``loss_is_scaled_for_ga = False``; ``model_accepts_loss_kwargs = False``: ``num_items_in_batch`` is never handed to
the model), so it divides by the accumulation steps exactly once. For per-sample methods (``method_coupling``) the
accumulated update equals the full batch's.

What the model must do: take the batch's keys as keyword arguments (images under ``pixel_values``, labels under
``labels``; an ``index`` key, each sample's dataset index, is taken out for PS-KD and CRD), and return its loss and
logits (``ImageClassifierOutput``, a dict with ``loss`` and ``logits``, or a tuple ``(loss, logits, ...)``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..methods import Method, logits_of
from ._common import extra_parameters, make_method, require, total_loss

_tf = require("transformers", "transformers", "5.0")
Trainer = _tf.Trainer
TrainerCallback = _tf.TrainerCallback

__all__ = ["DistillTrainer"]

STATE_FILE = "tfdistill_method.pt"
"""The method's state (memory banks, regressors, PS-KD's past predictions) in each ``checkpoint-N`` folder."""


class DistillTrainer(Trainer):
    """A ``transformers.Trainer`` whose training loss is the model's own loss plus a tfdistill method's terms.

    Args (besides the Trainer's own, passed through):
        method: a method name (``"tfd"`` by default; ``tfdistill methods`` lists them) or a ready
            :class:`~tfdistill.methods.Method` made with :func:`tfdistill.create_method` for ``model``.
        teacher: a trained model for teacher-based methods (``"kd"``, ``"tfd+kd"``, ...), frozen here.
        method_settings: the method's settings (``dict(ce_weight=1.0, tfd=dict(alpha=5e-3, beta=4e-4))``).
        num_classes: default ``model.config.num_labels`` (or the logits' width on an example).
        example: a batch of inputs to set the method up on (default: the first two training samples, collated).
        taps, teacher_taps: ``"auto"`` or module names (see :class:`tfdistill.FeatureTap`).
        input_key, label_key, index_key: the batch keys of images, labels and dataset indices.

    Logged with the loss: every term (``ce`` = the model's own loss, ``tfd_depth``, ``kd``, ...) averaged over the
    logging interval. The method's state is saved in each checkpoint folder (``tfdistill_method.pt``) and loaded by
    ``train(resume_from_checkpoint=...)``; its per-epoch hook runs at each epoch's start.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: the Trainer divides by the steps once

    def __init__(self, model: nn.Module | None = None, args: Any = None, *, method: str | Method = "tfd",
                 teacher: nn.Module | None = None, method_settings: dict | None = None,
                 num_classes: int | None = None, example: torch.Tensor | None = None, taps: Any = "auto",
                 teacher_taps: Any = "auto", input_key: str = "pixel_values", label_key: str = "labels",
                 index_key: str = "index", **kwargs: Any) -> None:
        if model is None:
            raise ConfigError("DistillTrainer needs model= (the student)")
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # never pass num_items_in_batch: the model's loss stays a batch mean
        self.input_key, self.label_key, self.index_key = input_key, label_key, index_key
        device = self.args.device
        if teacher is not None:
            teacher.to(device)
        if example is None and not isinstance(method, Method):
            example = self._example()
        if example is not None:
            example = example.to(device)
        if num_classes is None:
            num_classes = getattr(getattr(model, "config", None), "num_labels", None)
        num_train = len(self.train_dataset) if self.train_dataset is not None and hasattr(
            self.train_dataset, "__len__") else 0
        self.method = make_method(method, model, teacher=teacher, example=example, num_classes=num_classes,
                                  num_train=num_train, epochs=self._epochs(num_train), settings=method_settings,
                                  where="DistillTrainer", student_taps=taps, teacher_taps=teacher_taps)
        if self.method.needs_index() and self.args.remove_unused_columns:
            raise ConfigError(f"DistillTrainer: method {self.method.params.name!r} needs each sample's dataset index "
                              f"(batch key {index_key!r}); set TrainingArguments(remove_unused_columns=False) so the "
                              "Trainer keeps it (DistillTrainer takes it out before calling the model)")
        self._sums: dict[str, float] = {}
        self._count = 0
        self.add_callback(_MethodHooks(self))

    # ------------------------------------------------------------------ setting up
    def _example(self) -> torch.Tensor:
        ds = self.train_dataset
        if ds is None or not hasattr(ds, "__len__") or len(ds) == 0:
            raise ConfigError("DistillTrainer: no train_dataset to take an example batch from; pass example=")
        batch = self.data_collator([ds[i] for i in range(min(2, len(ds)))])
        if self.input_key not in batch:
            raise ConfigError(f"DistillTrainer: the training batches have no {self.input_key!r} (keys: "
                              f"{sorted(batch)}); set input_key=")
        return batch[self.input_key]

    def _epochs(self, num_train: int) -> int:
        a = self.args
        if a.max_steps and a.max_steps > 0 and num_train:
            per_step = a.per_device_train_batch_size * a.gradient_accumulation_steps * max(1, a.world_size)
            return max(1, math.ceil(a.max_steps / max(1, num_train // per_step)))
        return max(1, math.ceil(a.num_train_epochs))

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, plus a parameter group with the method's own parameters (FitNets' regressor,
        CRD's embeddings), with the Trainer's weight decay."""
        had = self.optimizer is not None
        opt = super().create_optimizer(model) if model is not None else super().create_optimizer()
        extra = extra_parameters(self.method)
        if extra and not had:
            opt.add_param_group({"params": extra, "weight_decay": self.args.weight_decay})
        return opt

    # ------------------------------------------------------------------ the loss
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = dict(inputs)
        index = inputs.pop(self.index_key, None)
        labels = inputs.get(self.label_key)
        if labels is None:
            raise ConfigError(f"DistillTrainer: the batch has no {self.label_key!r}: the model computes its own "
                              "cross-entropy from the labels, the method adds to it")
        if not model.training:  # evaluation: the model's own loss
            outputs = model(**inputs)
            return (_loss_of(outputs), outputs) if return_outputs else _loss_of(outputs)
        with self.method.capture() as cap:
            outputs = model(**inputs)
        model_loss = _loss_of(outputs)
        terms = self.method.terms_from(cap, logits_of(outputs), labels, images=inputs.get(self.input_key),
                                       index=index)
        loss = total_loss(self.method, model_loss, terms)
        self._record({"ce": model_loss, **terms})
        return (loss, outputs) if return_outputs else loss

    def _record(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v.detach())
        self._count += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, plus each term's mean since the last training log."""
        if "loss" in logs and self._count:
            logs = {**logs, **{k: round(v / self._count, 6) for k, v in self._sums.items()}}
            self._sums, self._count = {}, 0
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; resuming also loads the method's state from the checkpoint folder."""
        path = resume_from_checkpoint
        if path is True:
            path = _tf.trainer_utils.get_last_checkpoint(self.args.output_dir)
            if path is None:
                raise ConfigError(f"DistillTrainer: no checkpoint in {self.args.output_dir} to resume from")
        if isinstance(path, str):
            state = os.path.join(path, STATE_FILE)
            if not os.path.isfile(state):
                raise ConfigError(f"DistillTrainer: {path} has no {STATE_FILE} (not saved by a DistillTrainer)")
            self.method.load_component_state_dict(torch.load(state, map_location=self.args.device,
                                                             weights_only=True))
        return super().train(resume_from_checkpoint, *args, **kwargs)


def _loss_of(outputs: Any) -> torch.Tensor:
    loss = outputs.get("loss") if isinstance(outputs, dict) else (outputs[0] if isinstance(outputs, tuple) else None)
    if not isinstance(loss, torch.Tensor):
        raise ConfigError("DistillTrainer: the model returned no loss; it must compute its own cross-entropy from "
                          "labels= (Hugging Face classifiers do) and return it as .loss / ['loss'] / the first element")
    return loss


class _MethodHooks(TrainerCallback):
    """The method's per-epoch hook at each epoch's start; its state beside each checkpoint."""

    def __init__(self, trainer: DistillTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.method.on_epoch_start(int(state.epoch + 1e-6))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{_tf.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                torch.save(self.trainer.method.component_state_dict(), os.path.join(folder, STATE_FILE))
