"""Learning-rate schedules as pure functions of the global step (per-step warm-up, per-epoch decay)."""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_factor(step: int, *, epochs: int, steps_per_epoch: int, schedule: Any, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    * ``multistep``: ``gamma ** (number of milestones <= epoch)`` -- the decay takes effect at the first step of
      the milestone epoch (PyTorch's MultiStepLR stepped once per epoch behaves the same).
    * ``cosine``: per-step cosine from 1 to ``min_ratio`` (``schedule.min_lr / lr``) over the whole run.
    * ``poly``: per-step ``(1 - step / total) ** power`` (``schedule.power``, 0.9 in the segmentation codebases),
      from 1 towards 0 over the whole run.
    * ``constant``.
    A linear warm-up from ``warmup_factor`` to 1 over ``warmup_epochs`` multiplies the result.
    """
    epoch = step // max(1, steps_per_epoch)
    name = schedule.name
    if name == "multistep":
        factor = schedule.gamma ** sum(1 for m in schedule.milestones if epoch >= m)
    elif name == "cosine":
        total = max(1, epochs * steps_per_epoch)
        factor = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    elif name == "poly":
        total = max(1, epochs * steps_per_epoch)
        factor = (1 - min(step, total) / total) ** float(schedule.power)
    elif name == "constant":
        factor = 1.0
    else:  # validated by the config layer
        raise ValueError(f"unknown schedule {name!r}")
    warm = schedule.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        factor *= schedule.warmup_factor + (1 - schedule.warmup_factor) * step / warm
    return factor


class LRSchedule:
    """Sets every param group's lr from :func:`lr_factor` each optimizer step (``apply`` before the step, ``step``
    after it); works with float or tensor lrs. Its state is the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, *, epochs: int, steps_per_epoch: int,
                 schedule: Any) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.schedule = schedule
        self.min_ratio = (schedule.min_lr / base_lr) if base_lr > 0 else 0.0
        self.step_count = 0

    def lr(self, step: int | None = None) -> float:
        s = self.step_count if step is None else step
        return self.base_lr * lr_factor(s, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                                        schedule=self.schedule, min_ratio=self.min_ratio)
    def apply(self) -> float:
        """Write the current step's lr into the optimizer (before the optimizer step)."""
        value = self.lr()
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value
        return value

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
