"""The task interface: what the engine needs to know about the kind of prediction a run learns.

A :class:`Task` answers, for a model's logits and the batch's targets: the supervised loss (:meth:`Task.loss`, with
label smoothing), the training accuracy's counts (:meth:`Task.hits`), an :class:`Evaluator` that accumulates the test
figures on the device (its state is one float64 tensor, so the engine can all-reduce it over data-parallel ranks
without knowing what it holds), which figures the metrics rows keep (:attr:`Task.test_keys`), the primary metric that
picks the best epoch (:attr:`Task.primary_metric`) and the figures of ``summary.json`` (:meth:`Task.summary`).

``summary.json`` names its primary metric in ``"primary_metric"`` (absent means ``"top1"``, the classification
runs written before tasks existed) and carries ``best_<m>``/``last_<m>``; ``metrics.jsonl`` carries ``test_<m>``: what
the report tabulates.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from ..registry import Registry

TASKS: Registry[type["Task"]] = Registry("task")
"""name -> Task class."""


class Evaluator:
    """Accumulates one evaluation pass on the device (no host synchronisation until :meth:`compute`)."""

    def update(self, logits: Tensor, targets: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def state(self) -> Tensor:
        """Everything accumulated, as one float64 tensor of sums (the engine all-reduces it over ranks)."""
        raise NotImplementedError  # pragma: no cover - interface

    def compute(self, state: Tensor) -> dict[str, Any]:
        """The figures from a (reduced) :meth:`state`; always ``"loss"`` and ``"count"`` (samples seen)."""
        raise NotImplementedError  # pragma: no cover - interface


class Task:
    """One kind of prediction (see the module docs)."""

    name: ClassVar[str] = ""
    primary_metric: ClassVar[str] = ""
    """The figure that picks the best epoch (higher is better), e.g. ``top1`` or ``miou``."""
    test_keys: ClassVar[tuple[str, ...]] = ()
    """Evaluated figures written as ``test_<k>`` into the metrics rows, in this order (those present)."""
    dense: ClassVar[bool] = False
    """Targets per position ((N, H, W) labels for (N, C, H, W) logits): methods declare whether they apply
    (:attr:`tfdistill.methods.base.Distiller.dense`)."""

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"task {self.name!r} takes no options, got {sorted(options)}")

    def predict(self, model: Any, images: Tensor) -> Tensor:
        """The model's evaluation logits for ``images`` (default: one forward pass)."""
        return model(images)

    def check(self, logits: Tensor) -> str | None:
        """Why the model's ``logits`` (of an example batch) cannot be trained for this task (one line), or None."""
        return None

    def loss(self, logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        """Training accuracy's counts for one batch: (correct predictions as a device tensor, predictions made)."""
        raise NotImplementedError  # pragma: no cover - interface

    def evaluator(self, device: Any, num_classes: int) -> Evaluator:
        raise NotImplementedError  # pragma: no cover - interface

    def summary(self, best: float, last_eval: dict) -> dict[str, Any]:
        """The task's figures in ``summary.json``: the best and last values of the primary metric and the rest."""
        raise NotImplementedError  # pragma: no cover - interface

    def text(self, evaluated: dict) -> str:
        """The primary figure for a console line, e.g. ``top-1 71.20%``."""
        return f"{self.primary_metric} {evaluated[self.primary_metric]:.2f}%"


def get_task(name: str, **options: Any) -> Task:
    """The task named ``name`` (an instance) with its ``options`` (the data set's, e.g. a sliding window)."""
    return TASKS.get(name)(**options)
