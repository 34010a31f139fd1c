"""Dataset sources: what a registered dataset factory returns, before any loader is built.

A split is either *decoded* (a uint8 (N,3,H,W) CPU tensor, all samples the same size) or *encoded* (a list of
image files or of encoded image bytes, decoded one at a time by DataLoader workers). The device loader needs
a decoded split; `Split.decoded(size)` turns an encoded one into a decoded one (image folders that are to be
held on the device are decoded, and cached on disk, by the source itself: see `imagefolder`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..registry import Registry
from .base import IMAGENET_MEAN, IMAGENET_STD

SMALL_MAX_SIDE = 64
"""Image folders whose images are at most this many pixels on a side count as small (CIFAR/Tiny-ImageNet-like)."""
SMALL_MAX_BYTES = 4 << 30
"""... and whose decoded uint8 training split fits in this many bytes."""


class Packed(Sequence):
    """Many byte strings in one numpy buffer + offsets. Unlike a list of Python objects, forked DataLoader
    workers reading it do not touch refcounts, so the pages stay shared (no copy-on-write blow-up)."""

    def __init__(self, items: Iterable[bytes]) -> None:
        items = list(items)
        self.offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in items], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(items), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _one(self, i: int) -> Any:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._one(int(i))


class PackedStr(Packed):
    """`Packed` for strings (e.g. millions of image paths)."""

    def __init__(self, items: Iterable[str]) -> None:
        super().__init__(s.encode("utf-8", "surrogateescape") for s in items)

    def _one(self, i: int) -> Any:
        return super()._one(i).decode("utf-8", "surrogateescape")


@dataclass
class Split:
    labels: torch.Tensor
    """int64 (N,) on the CPU."""
    images: Optional[torch.Tensor] = None
    """uint8 (N,3,H,W) on the CPU when decoded."""
    files: Optional[Sequence[str]] = None
    """Image file paths (encoded split, e.g. an image folder on disk)."""
    blobs: Optional[Sequence[bytes]] = None
    """Encoded image bytes (encoded split read from an archive)."""
    origin: str = ""
    """Where the split came from (for messages)."""
    decoder: Optional[Callable[["Split", int], "Split"]] = field(default=None, repr=False)
    """Turns this encoded split into a decoded one at a given square size (set by the source; may cache)."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def is_decoded(self) -> bool:
        return self.images is not None

    def load(self, i: int) -> torch.Tensor | Image.Image:
        """One sample for a DataLoader worker: a uint8 (3,H,W) tensor (decoded split) or an RGB PIL image."""
        if self.images is not None:
            return self.images[i]
        if self.files is not None:
            from torchvision.datasets.folder import default_loader  # what torchvision's ImageFolder uses

            return default_loader(self.files[i])
        assert self.blobs is not None
        with Image.open(io.BytesIO(self.blobs[i])) as im:
            return im.convert("RGB")

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Split":
        idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return replace(
            self,
            labels=self.labels[idx_t].clone(),
            images=None if self.images is None else self.images[idx_t].clone(),
            files=None if self.files is None else PackedStr(self.files[i] for i in idx_t.tolist()),
            blobs=None if self.blobs is None else Packed(self.blobs[i] for i in idx_t.tolist()),
        )

    def decoded(self, size: int) -> "Split":
        """This split as uint8 (N,3,size,size) (images of another size are resized: shorter side to `size`,
        then centre crop)."""
        if self.images is not None:
            if tuple(self.images.shape[-2:]) == (size, size):
                return self
            return replace(self, images=resize_square(self.images, size))
        if self.decoder is None:  # pragma: no cover - every encoded source sets one
            raise RuntimeError(f"split {self.origin} cannot be decoded")
        return self.decoder(self, size)


@dataclass
class DatasetSource:
    name: str
    train: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    """Resolution the loaders produce."""
    small: bool = True
    """CIFAR-like: `auto` picks the device loader, evaluation uses the images as they are (no resize/crop),
    `crop` works on the native resolution. Large (ImageNet-like): dataloader, Resize + CenterCrop eval."""
    stats: Optional[Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]] = field(default=None, repr=False)
    """Lazily computed (mean, std) when `mean`/`std` are empty (small image folders: from the train images)."""
    notes: list[str] = field(default_factory=list)
    """Lines for the run header (how the resolution was decided, off-size images)."""
    skipped: dict = field(default_factory=dict)
    """Bad files left out (``data.on_bad_file=skip``): ``{"count": N, "files": [first names...]}``; summary.json."""
    task: str = "classification"
    """What the labels are (:mod:`tfdistill.tasks`): ``classification`` (one per image) or ``segmentation``
    (``Split.labels`` (N, H, W) uint8 masks, one class per pixel, 255 = ignored)."""
    identity: dict = field(default_factory=dict)
    """What the data is, from what moves with it (:mod:`tfdistill.data.identity`): recorded in the run's
    fingerprint.json and checked when the run is resumed."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASETS: Registry[Callable[..., DatasetSource]] = Registry("dataset")
"""name -> factory(cfg: DataConfig) -> DatasetSource."""


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N,3,H,W) -> uint8 (N,3,size,size): shorter side to `size` (antialiased bilinear), centre crop."""
    from torchvision.transforms.v2 import functional as F

    out = []
    for chunk in images.split(1024):
        chunk = F.resize(chunk, size, antialias=True)
        out.append(F.center_crop(chunk, [size, size]))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 (N,C,H,W) images scaled to [0, 1] (exact, from
    per-channel 256-bin histograms)."""
    x = images.numpy() if images.device.type == "cpu" else images.cpu().numpy()
    vals = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = np.zeros(256, dtype=np.float64)
        for s in range(0, x.shape[0], 8192):
            hist += np.bincount(x[s : s + 8192, c].ravel(), minlength=256)
        n = hist.sum()
        m = (hist * vals).sum() / n
        var = max((hist * vals * vals).sum() / n - m * m, 1e-12)
        means.append(round(float(m) / 255.0, 6))
        stds.append(max(round(float(np.sqrt(var)) / 255.0, 6), 1e-6))
    return tuple(means), tuple(stds)


def balanced_subset(labels: torch.Tensor, k: int, seed: int = 20240601) -> np.ndarray:
    """`k` indices, class-balanced (round robin over classes in random order within each class), chosen with a
    fixed seed so every run (and every seed of a multi-seed run) sees the same subset; sorted ascending."""
    y = labels.numpy()
    n = len(y)
    if k <= 0 or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    rank = np.empty(n, dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[members[rng.permutation(len(members))]] = np.arange(len(members))
    # round r takes the r-th pick of every class (class order fixed), so the first k are as balanced as possible
    order = np.lexsort((y, rank))
    return np.sort(order[:k])


IMAGENET_STATS = (IMAGENET_MEAN, IMAGENET_STD)
