"""Offline datasets: scikit-learn's digits (the default / demo) and deterministic synthetic images (tests)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .sources import DATASETS, DatasetSource, Split, channel_stats

DIGITS_TEST = 360
"""Fixed stratified split of the 1,797 digits: 1,437 train / 360 test (independent of the run seed)."""


@DATASETS.register("digits")
def digits(cfg: Any) -> DatasetSource:
    """scikit-learn's bundled 8x8 digits, upsampled (bilinear) to 32x32, grey repeated to 3 channels, uint8.

    Mean/std are computed from the training images. The split is fixed (stratified, random_state=0).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)  # (N,1,8,8) in 0..255
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST, stratify=d.target, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    train = Split(labels=y[tr], images=x[tr].contiguous(), origin="sklearn digits (train)")
    test = Split(labels=y[te], images=x[te].contiguous(), origin="sklearn digits (test)")
    mean, std = channel_stats(train.images)  # type: ignore[arg-type]
    gen = {"source": "sklearn.datasets.load_digits", "size": 32, "test": DIGITS_TEST, "random_state": 0}
    return DatasetSource("digits", train, test, [str(i) for i in range(10)], mean, std, image_size=32, small=True,
                         identity={"generator": gen})


def _synthetic_split(n: int, num_classes: int, size: int, gen: torch.Generator, protos: torch.Tensor) -> Split:
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    base = protos[labels]  # (n,3,s,s) in [0,1]
    noise = 0.08 * torch.randn(n, 3, size, size, generator=gen)
    shift = 0.05 * torch.randn(n, 3, 1, 1, generator=gen)  # per-sample colour jitter
    img = ((base + noise + shift).clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(labels=labels, images=img.contiguous(), origin="synthetic")


@DATASETS.register("synthetic")
def synthetic(cfg: Any) -> DatasetSource:
    """Deterministic, learnable random images: every class has its own mean colour and a class-specific
    oriented stripe pattern, plus per-pixel noise and per-sample colour jitter. The data does not depend on
    the run seed. Sizes from `data.synthetic_{train,test,classes,size}`; mean/std from the train images."""
    n_train, n_test = int(cfg.synthetic_train), int(cfg.synthetic_test)
    c, s = int(cfg.synthetic_classes), int(cfg.synthetic_size)
    if c < 2 or s < 4 or n_train < 1 or n_test < 1:
        raise DataError(
            f"bad synthetic data sizes: synthetic_train={n_train}, synthetic_test={n_test}, "
            f"synthetic_classes={c} (>= 2), synthetic_size={s} (>= 4)"
        )
    gen = torch.Generator().manual_seed(1234567 + 1009 * c + s)
    colours = 0.2 + 0.6 * torch.rand(c, 3, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    angle = torch.arange(c, dtype=torch.float32) * (math.pi / c)
    freq = 2 * math.pi * (1.5 + (torch.arange(c) % 3).float()) / s
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    phase = (xx[None] * cos + yy[None] * sin) * freq[:, None, None]
    pattern = 0.15 * torch.sin(phase)  # (c,s,s)
    protos = (colours[:, :, None, None] + pattern[:, None]).clamp(0, 1)
    train = _synthetic_split(n_train, c, s, gen, protos)
    test = _synthetic_split(n_test, c, s, gen, protos)
    mean, std = channel_stats(train.images)  # type: ignore[arg-type]
    gen = {"train": n_train, "test": n_test, "classes": c, "size": s}
    return DatasetSource("synthetic", train, test, [f"class{i}" for i in range(c)], mean, std, image_size=s, small=True,
                         identity={"generator": gen})
