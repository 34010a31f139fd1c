"""``cifar10_seg``: an offline segmentation *proxy* composed at run time from the CIFAR-10 JPEG copy (``data.root``).

Each canvas (``data.proxy_canvas`` pixels square) has a smooth random background (low-resolution colour noise,
upsampled) and 1..``data.proxy_objects`` CIFAR-10 images pasted at a random size (from a quarter to five eighths of
the canvas side) and position, later ones occluding earlier ones. Every pixel is labelled with the class of the
image it shows (CIFAR class k -> label k + 1) and background pixels with class 0 (``background``): 11 classes.
Training canvases use CIFAR-10 training images only, test canvases its test images only. Everything is drawn from
``data.proxy_seed`` (not the run's seed), so every run of a protocol sees the same canvases; nothing is written to
disk and no pixel of it is ever committed.

What it exercises: the whole dense-prediction path -- per-pixel loss and label smoothing, encoder taps of dilated
segmentation networks, TFD on their maps, per-pixel KD, mIoU/pixel accuracy/per-class IoU, evaluation and records.
What it cannot stand for: real scenes. Its objects are axis-aligned squares whose label is the whole image's class
(recognition of a 32 px thumbnail, not object boundaries), there is no context between objects, no thin structures,
no class imbalance like Cityscapes' roads against poles; a gain here says TFD regularises a dense model trained
from scratch on little data, not that it moves Cityscapes or CamVid mIoU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DataError
from .sources import DATASETS, DatasetSource, Split, channel_stats

BACKGROUND = "background"
_TAG = {"train": 1, "test": 2}


@dataclass
class _FolderView:
    """The fields :func:`~.imagefolder.load_imagefolder` reads, for CIFAR-10's JPEG folder at its own 32 px."""

    root: str
    loader: str = "device"
    image_size: int = 0
    on_bad_file: str = "error"
    num_workers: int = 0
    name: str = "imagefolder"
    download: bool = False
    batch_size: int = 1
    """(the folder's own batch-size check: the proxy's canvases, not its source images, are batched)"""


def compose(images: torch.Tensor, labels: torch.Tensor, n: int, canvas: int, max_objects: int,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` canvases (uint8 (n, 3, canvas, canvas)) and their masks (uint8 (n, canvas, canvas), 0 = background,
    k + 1 = CIFAR class k) from the uint8 (N, 3, 32, 32) ``images`` with class ``labels``; all draws from ``gen``."""
    lo, hi = max(4, canvas // 4), max(5, canvas * 5 // 8)
    out = torch.empty(n, 3, canvas, canvas, dtype=torch.uint8)
    masks = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    for i in range(n):
        grid = torch.rand(3, 4, 4, generator=gen) * 255.0
        bg = F.interpolate(grid[None], size=(canvas, canvas), mode="bilinear", align_corners=False)[0]
        img = bg
        k = int(torch.randint(1, max_objects + 1, (1,), generator=gen))
        for _ in range(k):
            j = int(torch.randint(0, len(labels), (1,), generator=gen))
            s = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            y0 = int(torch.randint(0, canvas - s + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, canvas - s + 1, (1,), generator=gen))
            obj = F.interpolate(images[j : j + 1].float(), size=(s, s), mode="bilinear", align_corners=False,
                                antialias=True)[0]
            img[:, y0 : y0 + s, x0 : x0 + s] = obj
            masks[i, y0 : y0 + s, x0 : x0 + s] = int(labels[j]) + 1
        out[i] = img.round().clamp(0, 255).to(torch.uint8)
    return out, masks


@DATASETS.register("cifar10_seg")
def cifar10_seg(cfg: Any) -> DatasetSource:
    """The CIFAR-10 segmentation proxy (module docs) from the CIFAR-10 image folder / archives at ``data.root``."""
    from .imagefolder import load_imagefolder

    canvas, n_train, n_test, k = (int(cfg.proxy_canvas), int(cfg.proxy_train), int(cfg.proxy_test),
                                  int(cfg.proxy_objects))
    if canvas < 16 or n_train < 1 or n_test < 1 or k < 1:
        raise DataError(f"bad segmentation proxy sizes: proxy_canvas={canvas} (>= 16), proxy_train={n_train}, "
                        f"proxy_test={n_test} (>= 1), proxy_objects={k} (>= 1)")
    src = load_imagefolder(_FolderView(root=str(cfg.root)))
    if len(src.class_names) != 10:
        raise DataError(f"cifar10_seg composes from CIFAR-10 (10 classes); {cfg.root} has {len(src.class_names)}")
    splits = {}
    for name, split, n in (("train", src.train, n_train), ("test", src.test, n_test)):
        dec = split.decoded(32)
        gen = torch.Generator().manual_seed(int(cfg.proxy_seed) * 1000003 + _TAG[name])
        x, m = compose(dec.images, dec.labels, n, canvas, k, gen)  # type: ignore[arg-type]
        splits[name] = Split(labels=m, images=x, origin=f"cifar10_seg {name} (proxy_seed {int(cfg.proxy_seed)})")
    mean, std = channel_stats(splits["train"].images)  # type: ignore[arg-type]
    note = (f"cifar10_seg: {n_train}/{n_test} canvases of {canvas}x{canvas}, 1-{k} CIFAR-10 images each, "
            f"proxy_seed {int(cfg.proxy_seed)} (a proxy, not real scenes)")
    # the identity (fingerprint.json): the CIFAR-10 copy it composes from, and the proxy's generator settings
    identity = {**src.identity, "proxy": {"seed": int(cfg.proxy_seed), "canvas": canvas, "train": n_train,
                                          "test": n_test, "objects": k}}
    return DatasetSource("cifar10_seg", splits["train"], splits["test"], [BACKGROUND, *src.class_names], mean, std,
                         image_size=canvas, small=True, notes=[note], task="segmentation", identity=identity)
