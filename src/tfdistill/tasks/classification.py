"""Classification: one label per image; cross-entropy, top-1 / top-5 accuracy (%), best epoch by top-1."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .task import TASKS, Evaluator, Task


class ClassificationEvaluator(Evaluator):
    """Top-1 / top-5 hits and the summed cross-entropy; top-5 only with more than 5 classes (with 5 or fewer it is
    100 % by construction: not a measurement)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.stats = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, count
        self.classes = 0

    def update(self, logits: Tensor, targets: Tensor) -> None:
        logits = logits.float()
        self.classes = logits.shape[1]
        k = min(5, self.classes)
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets.view(-1, 1))
        self.stats += torch.stack([hit[:, :1].sum(), hit.sum(), F.cross_entropy(logits, targets, reduction="sum"),
                                   torch.tensor(float(targets.numel()), device=self.device)]).to(self.stats.dtype)

    def state(self) -> Tensor:
        return self.stats

    def compute(self, state: Tensor) -> dict[str, Any]:
        c1, c5, loss, n = state.tolist()
        n = max(n, 1.0)
        return {"top1": 100.0 * c1 / n, **({"top5": 100.0 * c5 / n} if self.classes > 5 else {}), "loss": loss / n,
                "count": int(n)}


@TASKS.register("classification")
class Classification(Task):
    name = "classification"
    primary_metric = "top1"
    test_keys = ("top1", "top5", "loss")

    def check(self, logits: Tensor) -> str | None:
        if logits.dim() != 2:
            return (f"a classification model must give (N, classes) logits, this one gives {tuple(logits.shape)} "
                    f"(a segmentation model needs a segmentation data set)")
        return None

    def loss(self, logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)

    def hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        return (logits.argmax(1) == targets).sum(), int(targets.shape[0])

    def evaluator(self, device: Any, num_classes: int) -> Evaluator:
        return ClassificationEvaluator(device)

    def summary(self, best: float, last_eval: dict) -> dict[str, Any]:
        return {"best_top1": best, "last_top1": last_eval.get("top1"),
                **({"last_top5": last_eval["top5"]} if "top5" in last_eval else {}),  # (more than 5 classes)
                "last_test_loss": last_eval.get("loss")}

    def text(self, evaluated: dict) -> str:
        return f"top-1 {evaluated['top1']:.2f}%"
