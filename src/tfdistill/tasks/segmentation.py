"""Semantic segmentation: one label per pixel (``IGNORE`` = 255 marks pixels that count nowhere).

Loss: cross-entropy per pixel (label smoothing per pixel), averaged over the labelled pixels; logits at another
resolution than the labels are upsampled bilinearly first. Metrics, all from one confusion matrix accumulated on the
device (labelled pixels only):

* ``pixel_acc``: correctly labelled pixels / labelled pixels (%);
* ``iou``: per class, TP / (TP + FP + FN) (%); a class absent from both the prediction and the truth of the whole
  evaluation (TP + FP + FN = 0) has no IoU: ``None`` in the records;
* ``miou``: the mean of the per-class IoUs that exist (classes absent from both prediction and truth are left out
  of the mean, not counted as 0 or 100) -- the convention of mmsegmentation and of torchmetrics'
  ``MulticlassJaccardIndex`` (``average="macro"``, which skips classes without support).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .task import TASKS, Evaluator, Task

IGNORE = 255
"""The label of pixels that are neither trained on nor evaluated (Cityscapes, VOC and ADE20K use 255)."""


def fit_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``logits`` (N, C, h, w) at the labels' resolution (bilinear, as torchvision's segmentation heads do)."""
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(K, K)`` int64 counts, rows = truth, columns = prediction, over the pixels whose truth is in ``0..K-1``."""
    keep = (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def scores(cm: Tensor) -> dict[str, Any]:
    """``miou``, ``pixel_acc`` and per-class ``iou`` (%) of a confusion matrix (see the module docs)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    total = float(cm.sum())
    iou = [100.0 * t / u if u > 0 else None for t, u in zip(tp.tolist(), union.tolist())]
    present = [v for v in iou if v is not None]
    return {"miou": sum(present) / len(present) if present else math.nan,
            "pixel_acc": 100.0 * float(tp.sum()) / total if total > 0 else math.nan, "iou": iou}


class SegmentationEvaluator(Evaluator):
    """The confusion matrix, the summed per-pixel cross-entropy, labelled pixels and images, on the device."""

    def __init__(self, device: Any, num_classes: int) -> None:
        self.k = int(num_classes)
        self.stats = torch.zeros(self.k * self.k + 3, dtype=torch.float64, device=device)

    def update(self, logits: Tensor, targets: Tensor) -> None:
        logits = fit_logits(logits.float(), targets)
        cm = confusion_matrix(logits.argmax(1), targets, self.k)
        loss = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
        labelled = (targets != IGNORE).sum()
        self.stats += torch.cat([cm.flatten().double(), torch.stack([loss.double(), labelled.double()]),
                                 torch.tensor([float(targets.shape[0])], dtype=torch.float64,
                                              device=self.stats.device)])

    def state(self) -> Tensor:
        return self.stats

    def compute(self, state: Tensor) -> dict[str, Any]:
        k2 = self.k * self.k
        loss, pixels, images = state[k2:].tolist()
        return {**scores(state[:k2].view(self.k, self.k)), "loss": loss / max(pixels, 1.0), "count": int(images)}


def sliding_logits(model: Any, images: Tensor, window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Logits of ``images`` (N, 3, H, W) from windows of ``window`` = (h, w) moved by ``stride``, averaged where they
    overlap (mmsegmentation's "slide" inference); an image smaller than the window is one window of its own size."""
    n, _, h, w = images.shape
    wh, ww = min(window[0], h), min(window[1], w)
    sh, sw = max(1, stride[0]), max(1, stride[1])
    rows = list(range(0, max(h - wh, 0) + 1, sh))
    cols = list(range(0, max(w - ww, 0) + 1, sw))
    if rows[-1] + wh < h:
        rows.append(h - wh)
    if cols[-1] + ww < w:
        cols.append(w - ww)
    total: Tensor | None = None
    count = torch.zeros(1, 1, h, w, device=images.device)
    for r in rows:
        for c in cols:
            out = model(images[:, :, r : r + wh, c : c + ww]).float()
            out = F.interpolate(out, size=(wh, ww), mode="bilinear", align_corners=False) if out.shape[-2:] != (
                wh, ww) else out
            if total is None:
                total = images.new_zeros(n, out.shape[1], h, w, dtype=torch.float32)
            total[:, :, r : r + wh, c : c + ww] += out
            count[:, :, r : r + wh, c : c + ww] += 1
    assert total is not None
    return total / count


@TASKS.register("segmentation")
class Segmentation(Task):
    name = "segmentation"
    primary_metric = "miou"
    test_keys = ("miou", "pixel_acc", "iou", "loss")
    dense = True

    def __init__(self, window: tuple[int, int] | None = None, stride: tuple[int, int] | None = None) -> None:
        """``window``: evaluate by sliding windows of this (h, w) with ``stride`` (default: 2/3 of the window);
        None: whole images."""
        self.window = tuple(int(v) for v in window) if window else None
        self.stride = (tuple(int(v) for v in stride) if stride else
                       tuple(max(1, 2 * v // 3) for v in self.window) if self.window else None)

    def predict(self, model: Any, images: Tensor) -> Tensor:
        if self.window is None:
            return model(images)
        return sliding_logits(model, images, self.window, self.stride)  # type: ignore[arg-type]

    def check(self, logits: Tensor) -> str | None:
        if logits.dim() != 4:
            return (f"a segmentation model must give (N, classes, H, W) logits, this one gives "
                    f"{tuple(logits.shape)} (choose a segmentation model, e.g. deeplabv3_resnet18 or "
                    f"lraspp_mobilenet_v3_large)")
        return None

    def loss(self, logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(fit_logits(logits.float(), targets), targets, ignore_index=IGNORE,
                               label_smoothing=label_smoothing)

    def hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        labelled = targets != IGNORE
        pred = fit_logits(logits, targets).argmax(1)
        return ((pred == targets) & labelled).sum(), labelled.sum()

    def evaluator(self, device: Any, num_classes: int) -> Evaluator:
        return SegmentationEvaluator(device, num_classes)

    def summary(self, best: float, last_eval: dict) -> dict[str, Any]:
        return {"primary_metric": "miou", "best_miou": best, "last_miou": last_eval.get("miou"),
                "last_pixel_acc": last_eval.get("pixel_acc"), "last_iou": last_eval.get("iou"),
                "last_test_loss": last_eval.get("loss")}

    def text(self, evaluated: dict) -> str:
        return f"mIoU {evaluated['miou']:.2f}%"
