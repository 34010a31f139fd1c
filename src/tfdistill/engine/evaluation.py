"""Evaluation: the task's test figures of a model over a loader (all-reduced under DDP); classification's are top-1 /
top-5 accuracy and mean cross-entropy (:mod:`tfdistill.tasks`)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..precision import autocast
from ..tasks import Task, get_task
from .distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, precision: str = "fp32", device: torch.device | None = None,
             info: DistInfo = DistInfo(), max_batches: int = 0, task: Task | None = None,
             num_classes: int = 0) -> dict[str, Any]:
    """The figures of ``task`` (default: classification -- top-1 / top-5 accuracy (%) and mean cross-entropy) of
    ``model`` over ``loader``, accumulated on the device by the task's evaluator and reduced across ranks.
    ``num_classes``: the model's classes (a dense task's confusion matrix is sized by it)."""
    task = task if task is not None else get_task("classification")
    was = model.training
    model.eval()
    device = device or next(model.parameters()).device
    acc = task.evaluator(device, num_classes)
    for b, (x, y, _) in enumerate(loader):
        if max_batches and b >= max_batches:
            break
        with autocast(precision, device):
            logits = task.predict(model, x)  # one pass, or the task's sliding windows
        acc.update(logits.float(), y)
    stats = acc.state()
    all_reduce_sum(stats, info)
    model.train(was)
    return acc.compute(stats)
