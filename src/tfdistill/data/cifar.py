"""CIFAR-10 / CIFAR-100 from torchvision's on-disk (pickled python) format.

The pickles are read here rather than through `torchvision.datasets.CIFAR10`: torchvision verifies MD5 sums,
which small files written in the same format (tests, trimmed copies) cannot pass. torchvision is only used to
download the archive when the files are missing and `data.download=true`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .sources import DATASETS, DatasetSource, Split

_LAYOUT = {
    # name: (folder, train files, test files, meta file, label key, names key, torchvision class, pretty)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
        "CIFAR10",
        "CIFAR-10",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", "CIFAR100",
                 "CIFAR-100"),
}


def _str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as exc:  # truncated / not a pickle
        raise DataError(f"cannot read CIFAR file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(d, dict):
        raise DataError(f"cannot read CIFAR file {path}: expected a pickled dict, got {type(d).__name__}")
    return {_str(k): v for k, v in d.items()}


def _read_batches(folder: Path, files: list[str], label_key: str) -> Split:
    images, labels = [], []
    for name in files:
        path = folder / name
        d = _load_pickle(path)
        if "data" not in d or label_key not in d:
            raise DataError(f"CIFAR file {path} lacks the {'data' if 'data' not in d else label_key!r} entry")
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"CIFAR file {path}: 'data' has shape {data.shape}, expected (N, 3072)")
        lab = np.asarray(d[label_key], dtype=np.int64)
        if len(lab) != len(data):
            raise DataError(f"CIFAR file {path}: {len(data)} images but {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    imgs = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))
    return Split(labels=torch.from_numpy(np.concatenate(labels)), images=imgs, origin=str(folder))


def _download(name: str, root: Path, pretty: str, tv_class: str) -> None:
    import torchvision.datasets as tvd

    try:
        getattr(tvd, tv_class)(str(root), train=True, download=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not download {pretty} into {root}: {msg}") from None


def load_cifar(name: str, root: str | Path, download: bool) -> DatasetSource:
    folder_name, train_files, test_files, meta_file, label_key, names_key, tv_class, pretty = _LAYOUT[name]
    root = Path(root).expanduser()
    folder = root / folder_name
    needed = [*train_files, *test_files, meta_file]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download:
        _download(name, root, pretty, tv_class)
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{pretty} not found: missing {folder / missing[0]}"
            + ("" if download else "; set data.download=true to fetch it, or point data.root at the folder holding "
               f"{folder_name}/")
        )
    meta = _load_pickle(folder / meta_file)
    if names_key not in meta:
        raise DataError(f"CIFAR meta file {folder / meta_file} lacks {names_key!r}")
    class_names = [_str(c) for c in meta[names_key]]
    train = _read_batches(folder, train_files, label_key)
    test = _read_batches(folder, test_files, label_key)
    for split in (train, test):
        if len(split) and int(split.labels.max()) >= len(class_names):
            raise DataError(f"{pretty} in {folder}: label {int(split.labels.max())} >= {len(class_names)} classes")
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    identity = {"files": {f: (folder / f).stat().st_size for f in needed}}  # names and sizes of its pickles
    return DatasetSource(name, train, test, class_names, mean, std, image_size=32, small=True, identity=identity)


@DATASETS.register("cifar10")
def cifar10(cfg: Any) -> DatasetSource:
    """CIFAR-10 from `<root>/cifar-10-batches-py` (torchvision's format); standard CIFAR-10 mean/std."""
    return load_cifar("cifar10", cfg.root, bool(cfg.download))


@DATASETS.register("cifar100")
def cifar100(cfg: Any) -> DatasetSource:
    """CIFAR-100 (fine labels) from `<root>/cifar-100-python`; standard CIFAR-100 mean/std."""
    return load_cifar("cifar100", cfg.root, bool(cfg.download))
