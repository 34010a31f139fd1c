"""Shared pieces of the data layer: the `Loader` interface, `DataBundle`, seeding and normalisation helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(images float32 (N,3,H,W) normalised, targets int64 (N,), index int64 (N,)), all on the loader's device.

A *paired* training loader (``build_data(..., paired=True)``, requested by a method whose components declare
``Uses(paired_batches=True)``, e.g. CS-KD) yields images ``(2N, 3, H, W)``: the N samples of the batch, then, in
the same order, one partner of the same class for each (drawn uniformly among its class's samples, itself
included), augmented independently; targets and index are those of the first N. Order, partners and all
augmentation draws are pure functions of (seed, epoch)."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR_AUGMENTS = ("autoaugment", "crop", "flip", "cutout")
IMAGENET_AUGMENTS = ("rrc",)
AUGMENTS = ("autoaugment", "rrc", "crop", "flip", "cutout", "scale_crop")
"""Valid `data.augment` names, in the (fixed) order they are applied: autoaugment on uint8, then the geometric
ones, then normalisation, then cutout (so the hole is exactly zero). ``scale_crop`` is for masks (segmentation) only:
a random scale (``data.scale_range``) and crop (``data.crop_size``) of image and mask together, before the flip."""

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A well-mixed non-negative 63-bit seed that is a pure function of the integer `parts`."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


# Stream tags: every random quantity of an epoch has its own generator so adding one augmentation does not
# shift the others (e.g. the order with and without cutout is identical).
TAG_ORDER, TAG_CROP, TAG_FLIP, TAG_CUTOUT, TAG_AA, TAG_RRC, TAG_SAMPLE = range(1, 8)
TAG_PAIR = 8
TAG_SCALE_CROP = 9
"""The random scale and crop offsets of segmentation samples (``scale_crop``)."""
"""The draw of every sample's same-class partner (paired batches)."""
TAG_PAIR_AUG = 0x50A1
"""Added to an augmentation tag for the partners' own augmentation draws."""


class ClassPartners:
    """Draws, for given samples, a partner of the same class uniformly among that class's samples (itself
    included, as CS-KD's ``PairBatchSampler`` does), from uniforms ``u`` in [0, 1): no Python loop over samples."""

    def __init__(self, labels: torch.Tensor) -> None:
        labels = labels.to(torch.long)
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1 if labels.numel() else 1)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        self.labels = labels

    def to(self, device: torch.device) -> "ClassPartners":
        for k in ("order", "counts", "starts", "labels"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def draw(self, index: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Partner indices for the samples ``index`` (one uniform of ``u`` each)."""
        y = self.labels[index]
        c = self.counts[y]
        k = torch.minimum((u * c).to(torch.long), c - 1)
        return self.order[self.starts[y] + k]


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on `device` (falls back to a CPU one for devices without generator support)."""
    try:
        g = torch.Generator(device=device)
    except (RuntimeError, TypeError):
        g = torch.Generator()
    g.manual_seed(seed)
    return g


def check_augments(augment: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(str(a) for a in augment)
    for a in names:
        if a not in AUGMENTS:
            raise DataError(f"unknown augmentation {a!r} in data.augment; valid: {', '.join(AUGMENTS)}")
    if "rrc" in names and "crop" in names:
        raise DataError("data.augment has both 'rrc' and 'crop'; use one of them (rrc for ImageNet, crop for CIFAR)")
    return tuple(a for a in AUGMENTS if a in names)  # canonical order


class Normalizer:
    """uint8/float 0..255 images -> float32 normalised, as one fused multiply-add on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        m = torch.tensor(mean, dtype=torch.float32)
        s = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * s)).view(1, -1, 1, 1).to(device)
        self.shift = (-m / s).view(1, -1, 1, 1).to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        return torch.addcmul(self.shift, x, self.scale)


def apply_cutout(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero a per-sample box in a normalised batch (in place). boxes: int (N,4) = y1, y2, x1, x2 (half-open);
    an empty box (y1 == y2) leaves the sample untouched."""
    n, _, h, w = x.shape
    if n == 0:
        return x
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    b = boxes.to(device=x.device, dtype=torch.long)
    inside = (ys >= b[:, 0, None, None]) & (ys < b[:, 1, None, None]) & (xs >= b[:, 2, None, None]) & (
        xs < b[:, 3, None, None]
    )
    return x.masked_fill_(inside.unsqueeze(1), 0.0)


def cutout_boxes(cy: torch.Tensor, cx: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """DeVries & Taylor cutout: centre anywhere in the image, box of side `size` clipped at the borders."""
    half = size // 2
    y1 = (cy - half).clamp(0, h)
    y2 = (cy + size - half).clamp(0, h)
    x1 = (cx - half).clamp(0, w)
    x2 = (cx + size - half).clamp(0, w)
    return torch.stack([y1, y2, x1, x2], dim=-1)


class Loader:
    """Iterable over `(images, targets, index)` batches on a device; see `tfdistill.data`.

    Attributes: `batch_size` (per rank), `dataset_size` (samples in the whole split), `device`, `seed`,
    `epoch`, `rank`, `world_size`, `train` (shuffled + augmented + drop_last) and `augment`.
    """

    batch_size: int
    dataset_size: int
    device: torch.device
    seed: int
    epoch: int
    rank: int
    world_size: int
    train: bool
    augment: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _init_common(self, *, dataset_size: int, device: torch.device, batch_size: int, train: bool, seed: int,
                     mean: tuple[float, ...], std: tuple[float, ...], augment: tuple[str, ...], rank: int,
                     world_size: int, channels_last: bool) -> None:
        """The state every loader shares: sharding of the global batch, seed/epoch, augmentation, normalisation."""
        self.device = device
        self.dataset_size = int(dataset_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.rank, self.world_size = int(rank), int(world_size)
        self._gbs = int(batch_size)
        self.batch_size = self._gbs // self.world_size if self.train else -(-self._gbs // self.world_size)
        self.augment = tuple(augment) if self.train else ()
        self.mean, self.std = tuple(mean), tuple(std)
        self.channels_last = channels_last
        self._norm = Normalizer(self.mean, self.std, device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _num_batches(self) -> int:
        """Train: full global batches only. Eval: every global batch, the last (short) one only on the ranks
        that get at least one of its samples."""
        n, g, r = self.dataset_size, self._gbs, self.rank  # type: ignore[attr-defined]
        if self.train:
            return n // g
        full, rest = divmod(n, g)
        return full + (1 if rest > r else 0)


@dataclass
class DataBundle:
    """What `build_data` returns: the train/test loaders plus the dataset facts a run needs."""

    train: Loader
    test: Loader
    num_classes: int
    num_train: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    name: str = ""
    loader: str = "device"
    """Which loader was built: "device" (resident uint8 tensors) or "dataloader" (torch DataLoader + workers)."""
    num_test: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    """Bad files of the data set left out (``data.on_bad_file=skip``): count and first names."""
    """Lines for the run header: how the dataset was read (e.g. an image folder's decided resolution, off-size
    images)."""
    task: str = "classification"
    """What the labels are (the source's ``task``, see :mod:`tfdistill.tasks`)."""
    task_options: dict = field(default_factory=dict)
    """The task's evaluation options the data decides (segmentation: ``window``/``stride`` of sliding windows)."""
    identity: dict = field(default_factory=dict)
    """The data's identity (:mod:`tfdistill.data.identity`): name, class names, files, subset; fingerprint.json."""
    _make_train: Callable[[int], Loader] | None = field(default=None, repr=False, compare=False)

    def describe(self) -> dict:
        """What summary.json records of the data: resolution as decided, loader, sizes, the header notes."""
        return {"name": self.name, "image_size": int(self.image_size), "loader": self.loader,
                "num_train": int(self.num_train), "num_test": int(self.num_test), "notes": list(self.notes),
                **({"skipped": dict(self.skipped)} if self.skipped else {})}

    def train_loader_for(self, seed: int) -> Loader:
        """Another training loader over the same resident data, with its own seed (order + augmentation)."""
        if self._make_train is None:  # pragma: no cover - always set by build_data
            raise RuntimeError("this DataBundle was not made by build_data")
        return self._make_train(int(seed))
