"""Data layer: datasets, device-resident and DataLoader-based loaders.

    bundle = build_data(cfg.data, device, seed, rank=rank, world_size=world_size, channels_last=...)
    for epoch in range(epochs):
        bundle.train.set_epoch(epoch)
        for images, targets, index in bundle.train: ...

Every loader yields `(images, targets, index)` on the device: float32 normalised (N,3,H,W) images (channels_last
when asked), int64 targets and the int64 index of each sample in the (subset) split. Order and augmentation are
pure functions of (seed, epoch). `cfg.batch_size` is the global batch; rank r of `world_size` gets positions
r::world_size of each global batch. Training loaders drop the last partial batch; test loaders cover every
sample exactly once over all ranks, in index order.

Datasets (`DATASETS`): cifar10, cifar100, imagefolder, digits, synthetic; cifar10_seg (a segmentation proxy:
targets are (N,H,W) int64 masks, 255 = ignored, and the only augmentation is a flip applied to image and mask). `loader: auto` uses the device loader
for small data (CIFAR, digits, synthetic, image folders of images <= 64 px) and a torch DataLoader otherwise.
Augmentations (`data.augment`), always applied in this order: autoaugment (uint8), rrc | crop, flip,
normalisation, cutout (the hole is exactly 0 = the mean after normalisation).
"""

from . import cifar, imagefolder, segfolders, segproxy, toy  # noqa: F401  (register the datasets)
from .base import AUGMENTS, Batch, DataBundle, Loader, mix_seed
from .build import build_data, load_source
from .device_loader import DeviceLoader
from .sources import DATASETS, DatasetSource, Split
from .torch_loader import TorchLoader

__all__ = [
    "AUGMENTS",
    "Batch",
    "DATASETS",
    "DataBundle",
    "DatasetSource",
    "DeviceLoader",
    "Loader",
    "Split",
    "TorchLoader",
    "build_data",
    "load_source",
    "mix_seed",
]
