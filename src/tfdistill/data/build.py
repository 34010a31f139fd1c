"""`build_data`: DataConfig -> DataBundle (dataset from the registry, subsets, loader choice, loaders)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .augment import eval_transform, train_transform
from .base import DataBundle, Loader, check_augments
from .device_loader import DeviceData, DeviceLoader
from .identity import subset_identity
from .sources import DATASETS, DatasetSource, balanced_subset
from .torch_loader import SampleDataset, TorchLoader

LOADERS = ("auto", "device", "dataloader")


def load_source(cfg: Any) -> DatasetSource:
    """The registered dataset `cfg.name`, with `train_subset` / `test_subset` applied."""
    factory = DATASETS.get(str(cfg.name))
    src = factory(cfg)
    for key, split in (("train_subset", src.train), ("test_subset", src.test)):
        # an error, not a silent "all of it": the run would be reported with a subset size it never had
        if int(getattr(cfg, key) or 0) > len(split):
            raise ConfigError(f"data.{key}={int(getattr(cfg, key))} but {cfg.name!r} has only {len(split)} "
                              f"{key.split('_')[0]} images; use at most {len(split)}, or 0 for all")
    identity = {**src.identity, "name": src.name, "classes": list(src.class_names)}
    for key, which in (("train_subset", "train"), ("test_subset", "test")):
        k = int(getattr(cfg, key) or 0)
        if k > 0:
            split = getattr(src, which)
            idx = balanced_subset(split.labels, k)
            src = replace(src, **{which: split.subset(idx)})
            identity.setdefault("subset", {}).update(subset_identity(key, k, idx))
    return replace(src, identity=identity)


def build_data(
    cfg: Any,
    device: torch.device | str = "cpu",
    seed: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    paired: bool = False,
) -> DataBundle:
    """Build the train/test loaders for `cfg` (a `DataConfig`) on `device`.

    `cfg.batch_size` and `cfg.eval_batch_size` are global: with `world_size` ranks each rank gets positions
    `rank::world_size` of every global batch (per-rank train batch = batch_size // world_size).
    `paired`: training batches carry a same-class partner of every sample (see :data:`tfdistill.data.base.Batch`);
    a method asks for it through its components' ``Uses(paired_batches=True)``.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    world_size, rank = int(world_size), int(rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"bad distributed setup: rank={rank}, world_size={world_size}")
    bs, ebs = int(cfg.batch_size), int(cfg.eval_batch_size)
    if bs < 1 or ebs < 1:
        raise ConfigError(f"data.batch_size ({bs}) and data.eval_batch_size ({ebs}) must be >= 1")
    if bs % world_size:
        raise ConfigError(
            f"data.batch_size={bs} (global) is not divisible by world_size={world_size}; "
            f"use a multiple of {world_size}"
        )
    loader_kind = str(cfg.loader)
    if loader_kind not in LOADERS:
        raise ConfigError(f"bad value for config key 'data.loader': {loader_kind!r}; valid: {', '.join(LOADERS)}")
    augment = check_augments(list(cfg.augment or []))
    if "cutout" in augment and int(cfg.cutout_size) < 1:
        raise ConfigError(f"data.cutout_size must be >= 1 with cutout, got {cfg.cutout_size}")

    src = load_source(cfg)
    dense = src.train.labels.dim() > 1  # masks: the source sized them with their images (tfdistill.data.segfolders)
    if dense and set(augment) - {"flip", "scale_crop"}:
        raise ConfigError(f"data.augment={list(augment)}: {src.name} has masks (one label per pixel), which only "
                          f"'scale_crop' and 'flip' transform with its images; use those or []")
    if not dense and "scale_crop" in augment:
        raise ConfigError(f"data.augment: 'scale_crop' is for segmentation masks; {src.name} has one label per "
                          f"image (use crop or rrc)")
    crop_hw = [int(v) for v in (getattr(cfg, "crop_size", None) or [])]
    scales = [float(v) for v in (getattr(cfg, "scale_range", None) or [1.0, 1.0])]
    if (len(crop_hw) not in (0, 1, 2) or any(v < 1 for v in crop_hw) or len(scales) != 2
            or not 0 < scales[0] <= scales[1]):
        raise ConfigError(f"data.crop_size={crop_hw} (empty, [s] or [h, w], >= 1) / data.scale_range={scales} "
                          f"([low, high], 0 < low <= high) are not valid")
    size = int(cfg.image_size or 0) or src.image_size
    kind = loader_kind if loader_kind != "auto" else ("device" if src.small else "dataloader")
    if dense and kind != "device":
        raise ConfigError(f"data.loader={loader_kind}: {src.name} (masks) is read by the device loader only; use "
                          f"data.loader=auto or device")
    n_train, n_test = len(src.train), len(src.test)
    if n_train < bs:
        raise DataError(
            f"{src.name}: the training set has {n_train} images, fewer than data.batch_size={bs} "
            "(batches are full, drop_last); lower data.batch_size"
        )
    if n_test < 1:
        raise DataError(f"{src.name}: the test set is empty")
    common = dict(mean=src.mean, std=src.std, rank=rank, world_size=world_size, channels_last=channels_last)

    if kind == "device":
        train_split, test_split = ((src.train, src.test) if dense else
                                   (src.train.decoded(size), src.test.decoded(size)))
        train_data = DeviceData(train_split.images, train_split.labels, device)  # type: ignore[arg-type]
        test_data = DeviceData(test_split.images, test_split.labels, device)  # type: ignore[arg-type]

        def make_train(s: int) -> Loader:
            return DeviceLoader(train_data, batch_size=bs, train=True, seed=s, augment=augment,
                                cutout_size=int(cfg.cutout_size), out_size=size, paired=paired,
                                crop_size=tuple(crop_hw * 2 if len(crop_hw) == 1 else crop_hw) or None,
                                scale_range=tuple(scales), **common)

        test = DeviceLoader(test_data, batch_size=ebs, train=False, seed=seed, out_size=size, **common)
    else:
        nw = max(0, int(cfg.num_workers))
        train_ds = SampleDataset(src.train, train_transform(augment, size, src.small),
                                 int(cfg.cutout_size) if "cutout" in augment else 0)
        test_ds = SampleDataset(src.test, eval_transform(size, src.small))

        def make_train(s: int) -> Loader:
            return TorchLoader(train_ds, batch_size=bs, train=True, seed=s, device=device, augment=augment,
                               num_workers=nw, paired=paired, **common)

        test = TorchLoader(test_ds, batch_size=ebs, train=False, seed=seed, device=device, num_workers=nw, **common)

    return DataBundle(
        train=make_train(int(seed)),
        test=test,
        num_classes=src.num_classes,
        num_train=n_train,
        image_size=size,
        mean=tuple(src.mean),
        std=tuple(src.std),
        class_names=list(src.class_names),
        name=src.name,
        loader=kind,
        num_test=n_test,
        notes=list(src.notes), skipped=dict(getattr(src, "skipped", {}) or {}), identity=dict(src.identity),
        task=getattr(src, "task", "classification"),
        task_options=_eval_window(cfg) if dense else {},
        _make_train=make_train,
    )


def _eval_window(cfg: Any) -> dict:
    """Segmentation's sliding-window evaluation (``data.eval_window`` [h, w] or [s], ``data.eval_stride``), or {}."""
    win = [int(v) for v in (getattr(cfg, "eval_window", None) or [])]
    stride = [int(v) for v in (getattr(cfg, "eval_stride", None) or [])]
    if not win:
        return {}
    if len(win) not in (1, 2) or len(stride) not in (0, 1, 2) or min(win + stride) < 1:
        raise ConfigError(f"data.eval_window={win} / data.eval_stride={stride}: give [s] or [h, w] of positive sizes")
    win = win * 2 if len(win) == 1 else win
    return {"window": tuple(win), "stride": tuple(stride * 2 if len(stride) == 1 else stride) or None}
