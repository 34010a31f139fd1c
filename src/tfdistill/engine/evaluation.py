"""Evaluation: top-1 / top-5 accuracy and mean cross-entropy of a model over a loader (all-reduced under DDP)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast
from .distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, precision: str = "fp32", device: torch.device | None = None,
             info: DistInfo = DistInfo(), max_batches: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader`` (reduced across ranks). Top-5
    only where there are more than 5 classes (with 5 or fewer it is 100 % by construction: not a measurement)."""
    was = model.training
    model.eval()
    device = device or next(model.parameters()).device
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, count
    classes = 0
    for b, (x, y, _) in enumerate(loader):
        if max_batches and b >= max_batches:
            break
        with autocast(precision, device):
            logits = model(x)
        logits = logits.float()
        classes = logits.shape[1]
        k = min(5, classes)
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y.view(-1, 1))
        stats += torch.stack([hit[:, :1].sum(), hit.sum(), F.cross_entropy(logits, y, reduction="sum"),
                              torch.tensor(float(y.numel()), device=device)]).to(stats.dtype)
    all_reduce_sum(stats, info)
    model.train(was)
    c1, c5, loss, n = stats.tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * c1 / n, **({"top5": 100.0 * c5 / n} if classes > 5 else {}), "loss": loss / n,
            "count": int(n)}
