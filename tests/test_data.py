"""Tests of the data layer (`tfdistill.data`): datasets, both loaders, augmentations, determinism, sharding."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tfdistill.config import DataConfig
from tfdistill.data import DATASETS, DataBundle, build_data, load_source
from tfdistill.errors import ConfigError, DataError, UnknownNameError

LOADERS = ["device", "dataloader"]
ALL_AUG = ["autoaugment", "crop", "flip", "cutout"]


def cfg(**kw) -> DataConfig:
    base = dict(name="synthetic", loader="device", num_workers=0, batch_size=32, eval_batch_size=64, augment=[])
    base.update(kw)
    return DataConfig(**base)


def denorm(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.cpu() * s * 255 + m * 255).round().clamp(0, 255).to(torch.uint8)


def norm(img: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (img.float() / 255 - m) / s


def batches(loader, epoch: int = 0):
    loader.set_epoch(epoch)
    return [(x.cpu(), y.cpu(), i.cpu()) for x, y, i in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(p, q) for u, v in zip(a, b) for p, q in zip(u, v))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with the cores shared by other processes, intra-op threads mostly wait on each
    other (10-100x slower), so run this module single-threaded and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Never write decode caches into the real home during tests."""
    monkeypatch.setenv("TFDISTILL_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------------- datasets
def test_registry():
    assert set(DATASETS.names()) == {"cifar10", "cifar100", "imagefolder", "digits", "synthetic", "cifar10_seg",
                                     "cityscapes", "camvid", "voc2012", "ade20k", "segfolder"}
    with pytest.raises(UnknownNameError, match="valid: ade20k, camvid, cifar10, cifar100, cifar10_seg, cityscapes, "
                                               "digits, imagefolder, segfolder, synthetic, voc2012"):
        build_data(cfg(name="cifar11"))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_builds_shapes_dtypes(name, loader):
    b = build_data(cfg(name=name, loader=loader, augment=ALL_AUG), "cpu", seed=1)
    assert isinstance(b, DataBundle) and b.loader == loader
    n_train, n_test = (1437, 360) if name == "digits" else (512, 256)
    assert (b.num_train, b.num_test, b.num_classes, b.image_size) == (n_train, n_test, 10, 32)
    assert len(b.class_names) == 10 and len(b.mean) == len(b.std) == 3
    assert len(b.train) == n_train // 32 and b.train.batch_size == 32 and b.train.dataset_size == n_train
    assert len(b.test) == -(-n_test // 64) and b.test.dataset_size == n_test
    seen = 0
    for x, y, i in b.train:
        assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.dtype == torch.int64 and i.dtype == torch.int64 and y.shape == i.shape == (32,)
        assert 0 <= int(i.min()) and int(i.max()) < n_train and 0 <= int(y.min()) and int(y.max()) < 10
        seen += 1
    assert seen == len(b.train)
    tot = sum(int(x.shape[0]) for x, _, _ in b.test)
    assert tot == n_test


def test_digits_fixed_split():
    src = load_source(cfg(name="digits"))
    assert (len(src.train), len(src.test)) == (1437, 360)
    counts = Counter(src.test.labels.tolist())
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 2  # stratified
    assert torch.equal(load_source(cfg(name="digits")).test.images, src.test.images)  # seed independent
    assert src.train.images.dtype == torch.uint8 and src.train.images.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_normalisation(name):
    n = 1437 if name == "digits" else 512
    bs = 479 if name == "digits" else 64  # divides n: the epoch covers the whole train split
    b = build_data(cfg(name=name, batch_size=bs), "cpu")
    x = torch.cat([x for x, _, _ in b.train])
    assert x.shape[0] == n
    per_c = x.transpose(0, 1).reshape(3, -1)
    assert per_c.mean(1).abs().max() < 1e-3
    assert (per_c.std(1) - 1).abs().max() < 1e-3


@pytest.mark.parametrize("loader", LOADERS)
def test_index_points_at_stored_image(loader):
    c = cfg(loader=loader)
    src = load_source(c)
    b = build_data(c, "cpu", seed=3)
    for split, ld in ((src.train, b.train), (src.test, b.test)):
        for x, y, i in ld:
            assert torch.equal(denorm(x, b.mean, b.std), split.images[i])
            assert torch.equal(y, split.labels[i])


def test_synthetic_is_learnable():
    src = load_source(cfg())
    tr = src.train.images.float().mean((2, 3))
    te = src.test.images.float().mean((2, 3))
    centroids = torch.stack([tr[src.train.labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(te, centroids).argmin(1)
    assert (pred == src.test.labels).float().mean() > 0.8  # chance is 0.1


def test_subsets_balanced_and_fixed():
    c = cfg(name="digits", train_subset=100, test_subset=50)
    b = build_data(c, "cpu", seed=0)
    assert b.num_train == 100 and b.num_test == 50
    src = load_source(c)
    assert sorted(Counter(src.train.labels.tolist()).values()) == [10] * 10
    assert torch.equal(src.train.images, load_source(c).train.images)
    x, y, i = next(iter(build_data(c, "cpu", seed=5).train))
    assert int(i.max()) < 100  # indices are into the subset


# ----------------------------------------------------------------------------------------------- augmentations
def test_crop_matches_per_sample_reference():
    c = cfg(augment=["crop"], batch_size=64)
    src = load_source(c)
    b = build_data(c, "cpu", seed=0)
    offsets = Counter()
    for x, _, i in b.train:
        out = denorm(x, b.mean, b.std)
        assert out.shape == (64, 3, 32, 32)
        for o, idx in zip(out, i.tolist()):
            padded = F.pad(src.train.images[idx].float()[None], (4, 4, 4, 4), mode="reflect")[0]
            hits = [(dy, dx) for dy in range(9) for dx in range(9)
                    if torch.equal(padded[:, dy:dy + 32, dx:dx + 32].to(torch.uint8), o)]
            assert hits, "crop output is not a 32x32 window of the reflect-padded image"
            offsets[hits[0]] += 1
    assert len(offsets) > 40  # per-sample offsets spread over the 81 possibilities


@pytest.mark.parametrize("loader", LOADERS)
def test_flip_per_sample(loader):
    c = cfg(loader=loader, augment=["flip"], batch_size=64)
    src = load_source(c)
    b = build_data(c, "cpu", seed=0)
    flipped = 0
    total = 0
    for x, _, i in b.train:
        out = denorm(x, b.mean, b.std)
        ref = src.train.images[i]
        is_same = (out == ref).flatten(1).all(1)
        is_flip = (out == ref.flip(-1)).flatten(1).all(1)
        assert bool((is_same | is_flip).all())
        flipped += int(is_flip.sum())
        total += len(i)
        assert 0 < int(is_flip.sum()) < len(i)  # per sample, not per batch
    assert 0.35 < flipped / total < 0.65


@pytest.mark.parametrize("loader", LOADERS)
def test_cutout_square_zero_after_normalisation(loader):
    size = 8
    c = cfg(loader=loader, augment=["cutout"], cutout_size=size, batch_size=64)
    src = load_source(c)
    b = build_data(c, "cpu", seed=0)
    full = 0
    for x, _, i in b.train:
        ref = norm(src.train.images[i], b.mean, b.std)
        changed = ~torch.isclose(x, ref, atol=1e-5).all(1)  # (B,H,W)
        for k in range(x.shape[0]):
            m = changed[k]
            assert bool((x[k][:, m] == 0).all())  # the hole is exactly zero in every channel
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert len(ys) > 0
            h = int(ys.max() - ys.min() + 1)
            w = int(xs.max() - xs.min() + 1)
            assert h <= size and w <= size and len(ys) <= h * w
            full += (h, w) == (size, size)
    assert full > 100  # most holes are not clipped by the borders


def test_autoaugment_ops_match_torchvision():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.autoaugment import _apply_op

    from tfdistill.data.augment import BatchedAutoAugment, apply_aa_op

    aa = BatchedAutoAugment(32, 32)
    names = {op.name for op in aa.ops}
    assert {"Invert", "Rotate", "TranslateX", "Equalize", "Posterize", "Solarize", "ShearY"} <= names
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for op in aa.ops:
        got = apply_aa_op(x.clone(), op)
        ref = torch.stack([_apply_op(xi, op.name, op.magnitude, InterpolationMode.NEAREST, None) for xi in x])
        # v2 functional rounds where v1 truncates when blending uint8 (Color, Sharpness): at most 1 apart
        assert (got.int() - ref.int()).abs().max() <= (1 if op.name in ("Color", "Sharpness") else 0), op


def test_autoaugment_groups_apply_the_drawn_op_per_sample():
    from tfdistill.data.augment import BatchedAutoAugment, apply_aa_op

    aa = BatchedAutoAugment(32, 32)
    keys = aa.sample(40, torch.Generator().manual_seed(1))
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    order, groups = aa.plan(keys)
    got = aa.apply(x.clone(), order, groups)
    for k in range(40):
        ref = x[k:k + 1]
        for st in range(2):
            if keys[k, st] >= 0:
                ref = apply_aa_op(ref, aa.ops[int(keys[k, st])])
        assert torch.equal(got[k:k + 1], ref)
    assert len({tuple(r) for r in keys.tolist()}) > 10  # different samples draw different sub-policies


@pytest.mark.parametrize("loader", LOADERS)
def test_autoaugment_changes_some_images(loader):
    c = cfg(loader=loader, augment=["autoaugment"], batch_size=64)
    src = load_source(c)
    b = build_data(c, "cpu", seed=0)
    x, _, i = next(iter(b.train))
    changed = (denorm(x, b.mean, b.std) != src.train.images[i]).flatten(1).any(1)
    assert 0.3 < changed.float().mean() < 1.0


@pytest.mark.parametrize("loader", LOADERS)
def test_determinism_seed_epoch(loader):
    c = cfg(loader=loader, augment=ALL_AUG, batch_size=64)
    rng = torch.get_rng_state()
    a, b2 = build_data(c, "cpu", seed=7), build_data(c, "cpu", seed=7)
    e0, e0b = batches(a.train, 0), batches(b2.train, 0)
    assert same(e0, e0b)
    e1 = batches(a.train, 1)
    assert not same(e0, e1)
    assert same(batches(a.train, 0), e0)  # resuming at an epoch boundary is exact
    other = build_data(c, "cpu", seed=8)
    assert not same(batches(other.train, 0), e0)
    assert same(batches(a.train_loader_for(7), 0), e0)
    assert not same(batches(a.train_loader_for(9), 0), e0)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never touched


def test_augmentation_differs_across_epochs_for_same_sample():
    c = cfg(augment=["crop", "flip"], batch_size=64)
    b = build_data(c, "cpu", seed=0)
    outs = []
    for e in range(2):
        x, _, i = (torch.cat(t) for t in zip(*batches(b.train, e)))
        outs.append(x[torch.argsort(i)])
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("loader", LOADERS)
def test_order_each_sample_once(loader):
    c = cfg(loader=loader, batch_size=48)
    b = build_data(c, "cpu", seed=0)
    assert len(b.train) == 512 // 48
    orders = []
    for e in range(2):
        idx = torch.cat([i for _, _, i in batches(b.train, e)])
        assert len(idx) == len(b.train) * 48 and len(set(idx.tolist())) == len(idx)
        orders.append(idx)
    assert not torch.equal(orders[0], orders[1])
    test_idx = torch.cat([i for _, _, i in b.test])
    assert torch.equal(test_idx, torch.arange(256))  # fixed order, all samples


def test_channels_last():
    b = build_data(cfg(augment=["crop", "flip"]), "cpu", channels_last=True)
    x, _, _ = next(iter(b.train))
    assert x.is_contiguous(memory_format=torch.channels_last)
    x, _, _ = next(iter(b.test))
    assert x.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("loader", LOADERS)
def test_ddp_shards_union_equals_single_process(loader):
    c = cfg(loader=loader, augment=ALL_AUG, batch_size=64, eval_batch_size=60, synthetic_test=257)
    single = build_data(c, "cpu", seed=3)
    ranks = [build_data(c, "cpu", seed=3, rank=r, world_size=2) for r in range(2)]
    for e in (0, 1):
        ref = batches(single.train, e)
        parts = [batches(rb.train, e) for rb in ranks]
        assert all(len(p) == len(ref) for p in parts)
        for k, (x, y, i) in enumerate(ref):
            xs = torch.cat([parts[r][k][0] for r in range(2)])
            ys = torch.cat([parts[r][k][1] for r in range(2)])
            is_ = torch.cat([parts[r][k][2] for r in range(2)])
            assert parts[0][k][0].shape[0] == 32
            assert sorted(is_.tolist()) == sorted(i.tolist()) and len(set(is_.tolist())) == 64
            o, p = torch.argsort(i), torch.argsort(is_)
            assert torch.equal(xs[p], x[o]) and torch.equal(ys[p], y[o])
    # sharded evaluation: every test sample exactly once over the ranks, identical images
    ref = {int(j): xx for x, _, i in single.test for j, xx in zip(i, x)}
    got: dict[int, torch.Tensor] = {}
    for rb in ranks:
        assert rb.test.batch_size == 30
        for x, _, i in rb.test:
            for j, xx in zip(i.tolist(), x):
                assert j not in got
                got[j] = xx
    assert sorted(got) == list(range(257))
    assert all(torch.equal(got[j], ref[j]) for j in got)


def test_batch_not_divisible_by_world_size():
    with pytest.raises(ConfigError, match="not divisible by world_size=3"):
        build_data(cfg(batch_size=32), "cpu", rank=0, world_size=3)


def test_bad_augment_and_batch_too_big():
    with pytest.raises(DataError, match="unknown augmentation 'crap'.*valid: autoaugment, rrc, crop, flip, cutout"):
        build_data(cfg(augment=["crap"]))
    with pytest.raises(DataError, match="fewer than data.batch_size=1024"):
        build_data(cfg(batch_size=1024))


def test_rrc_on_device():
    b = build_data(cfg(augment=["rrc", "flip"]), "cpu", seed=0)
    x, _, _ = next(iter(b.train))
    assert x.shape == (32, 3, 32, 32) and torch.isfinite(x).all()
    assert same(batches(b.train, 0), batches(build_data(cfg(augment=["rrc", "flip"]), "cpu", seed=0).train, 0))


# ----------------------------------------------------------------------------------------------- CIFAR format
def _write_cifar(root: Path, name: str, per_class: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        n_cls, files, key = 10, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        folder = root / "cifar-100-python"
        n_cls, files, key = 100, ["train", "test"], b"fine_labels"
    folder.mkdir(parents=True)
    written = {}
    for f in files:
        labels = np.tile(np.arange(n_cls), per_class)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        d = {b"batch_label": f.encode(), key: labels.tolist(), b"data": data, b"filenames": [b"x.png"] * len(labels)}
        if name == "cifar100":
            d[b"coarse_labels"] = (labels // 5).tolist()
        with open(folder / f, "wb") as fh:
            pickle.dump(d, fh)
        written[f] = data
    if name == "cifar10":
        meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": 20}
        meta_file = "batches.meta"
    else:
        meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}
        meta_file = "meta"
    with open(folder / meta_file, "wb") as fh:
        pickle.dump(meta, fh)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_on_disk_format(tmp_path, name):
    written = _write_cifar(tmp_path, name)
    c = cfg(name=name, root=str(tmp_path), batch_size=10, augment=["crop", "flip"])
    b = build_data(c, "cpu")
    n_cls = 10 if name == "cifar10" else 100
    per_file = 2 * n_cls
    n_train = per_file * (5 if name == "cifar10" else 1)
    assert (b.num_classes, b.num_train, b.num_test, b.image_size) == (n_cls, n_train, per_file, 32)
    assert b.class_names[:2] == (["c0", "c1"] if name == "cifar10" else ["f0", "f1"])
    assert b.mean[0] == pytest.approx(0.4914 if name == "cifar10" else 0.5071)
    src = load_source(c)
    first = written["data_batch_1" if name == "cifar10" else "train"]
    assert torch.equal(src.train.images[:per_file], torch.from_numpy(first.reshape(-1, 3, 32, 32)))
    test_file = written["test_batch" if name == "cifar10" else "test"]
    x, y, i = next(iter(b.test))
    assert torch.equal(denorm(x, b.mean, b.std), torch.from_numpy(test_file.reshape(-1, 3, 32, 32))[i])
    assert torch.equal(y, torch.arange(n_cls).repeat(2)[i])
    x, y, i = next(iter(b.train))
    assert x.shape == (10, 3, 32, 32)


def test_cifar_missing_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found: missing .*cifar-10-batches-py.*data\.download=true"):
        build_data(cfg(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DataError, match=r"CIFAR-100 not found: missing .*cifar-100-python"):
        build_data(cfg(name="cifar100", root=str(tmp_path / "nowhere")))


def test_cifar_download_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            _write_cifar(Path(root), "cifar10", per_class=1)

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    b = build_data(cfg(name="cifar10", root=str(tmp_path), download=True, batch_size=10), "cpu")
    assert calls == [(str(tmp_path), True)] and b.num_train == 50


def test_structured_omegaconf_config():
    from omegaconf import OmegaConf

    c = OmegaConf.structured(cfg(augment=["crop", "flip"], loader="auto"))
    b = build_data(c, "cpu", seed=0)
    assert b.loader == "device" and len(b.train) == 512 // 32


# ----------------------------------------------------------------------------------------------- image folders
def _image(label: int, k: int, size: int) -> Image.Image:
    rng = np.random.default_rng(100 * label + k)
    arr = np.full((size, size, 3), 40 + 50 * label, dtype=np.uint8)
    arr = (arr + rng.integers(0, 30, arr.shape)).astype(np.uint8)
    return Image.fromarray(arr)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _write_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 6, size: int = 16,
                  test_name: str = "val", fmt: str = "PNG", test_classes=None) -> None:
    for split, cls, n in (("train", classes, per_class), (test_name, test_classes or classes, 2)):
        for ci, c in enumerate(cls):
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(n):
                img = _image(ci, k + (0 if split == "train" else 50), size)
                (d / f"{k:03d}.{fmt.lower()}").write_bytes(_encode(img, fmt))


def _write_archives(root: Path, classes=("cat", "dog", "eel"), per_class: int = 6, size: int = 16,
                    test_name: str = "test", fmt: str = "JPEG") -> dict[str, list[bytes]]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", per_class), (test_name, 2)):
        members = []
        for ci, c in enumerate(classes):
            for k in range(n):
                members.append((f"{split}/{c}/{k:03d}.jpg", _encode(_image(ci, k, size), fmt)))
        members = members[::-1]  # archive order is not sorted; the loader must sort
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        out[split] = [d for _, d in sorted(members)]
    return out


@pytest.mark.parametrize("loader", LOADERS)
def test_imagefolder_directory(tmp_path, loader):
    _write_folder(tmp_path)
    c = cfg(name="imagefolder", root=str(tmp_path), loader=loader, batch_size=6, augment=["crop", "flip"])
    b = build_data(c, "cpu", seed=0)
    assert b.loader == loader and b.class_names == ["cat", "dog", "eel"]
    assert (b.num_train, b.num_test, b.image_size, b.num_classes) == (18, 6, 16, 3)
    assert b.mean != (0.485, 0.456, 0.406)  # small folder: statistics of the training images
    src = load_source(c)
    assert torch.equal(src.train.labels, torch.arange(3).repeat_interleave(6))
    ref = torch.from_numpy(np.array(_image(1, 2, 16))).permute(2, 0, 1)
    assert torch.equal(src.train.images[8], ref)  # dog/002.png, ImageFolder order
    for x, y, i in b.test:
        assert torch.equal(denorm(x, b.mean, b.std), src.test.images[i]) and torch.equal(y, src.test.labels[i])
    x, y, i = next(iter(b.train))
    assert x.shape == (6, 3, 16, 16) and y.dtype == torch.int64


def test_imagefolder_archives_and_cache(tmp_path, monkeypatch):
    written = _write_archives(tmp_path / "ds")
    c = cfg(name="imagefolder", root=str(tmp_path / "ds"), batch_size=6)
    b = build_data(c, "cpu")
    assert b.loader == "device" and b.class_names == ["cat", "dog", "eel"] and (b.num_train, b.num_test) == (18, 6)
    src = load_source(c)
    expect = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1)
                          for d in written["train"]])
    assert (src.train.images.int() - expect.int()).abs().max() <= 1  # libjpeg vs PIL rounding
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) >= 2

    from tfdistill.data import imagefolder

    def boom(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagefolder, "decode_items", boom)
    monkeypatch.setattr(imagefolder, "_archive_members", boom)
    b2 = build_data(c, "cpu")
    assert same(batches(b2.test), batches(b.test))
    # a changed archive (size/mtime) is decoded again
    _write_archives(tmp_path / "ds2", per_class=7)
    os.replace(tmp_path / "ds2" / "train.tar.gz", tmp_path / "ds" / "train.tar.gz")
    with pytest.raises(AssertionError, match="despite the cache"):
        build_data(c, "cpu")


def test_imagefolder_archive_dataloader_workers(tmp_path):
    _write_archives(tmp_path, fmt="PNG", test_name="val")
    c = cfg(name="imagefolder", root=str(tmp_path), loader="dataloader", num_workers=2, batch_size=6,
            augment=["crop", "flip", "cutout"], cutout_size=4)
    b = build_data(c, "cpu", seed=0)
    e0 = batches(b.train, 0)
    assert len(e0) == 3 and e0[0][0].shape == (6, 3, 16, 16)
    c0 = cfg(name="imagefolder", root=str(tmp_path), loader="dataloader", num_workers=0, batch_size=6,
             augment=["crop", "flip", "cutout"], cutout_size=4)
    assert same(e0, batches(build_data(c0, "cpu", seed=0).train, 0))  # independent of the worker count
    assert sorted(torch.cat([i for _, _, i in batches(b.test)]).tolist()) == list(range(6))


def test_imagefolder_large_images_use_dataloader(tmp_path):
    _write_folder(tmp_path, size=80, per_class=2, fmt="JPEG", test_name="test")
    c = cfg(name="imagefolder", root=str(tmp_path), loader="auto", image_size=48, batch_size=3,
            augment=["rrc", "flip"])
    b = build_data(c, "cpu")
    assert b.loader == "dataloader" and b.mean == (0.485, 0.456, 0.406) and b.image_size == 48
    x, y, i = next(iter(b.train))
    assert x.shape == (3, 3, 48, 48)
    x, y, i = next(iter(b.test))
    assert x.shape[1:] == (3, 48, 48)
    bd = build_data(cfg(name="imagefolder", root=str(tmp_path), loader="device", image_size=48, batch_size=3,
                        augment=["rrc", "flip"]), "cpu")
    assert bd.loader == "device" and next(iter(bd.test))[0].shape[1:] == (3, 48, 48)


def test_imagefolder_large_archive_dataloader(tmp_path):
    from tfdistill.data.sources import Packed

    _write_archives(tmp_path, size=80, per_class=4)
    c = cfg(name="imagefolder", root=str(tmp_path), image_size=32, batch_size=4, augment=["rrc", "flip"],
            loader="auto", train_subset=8)
    src = load_source(c)
    assert isinstance(src.train.blobs, Packed) and len(src.train) == 8 and not src.small
    b = build_data(c, "cpu", seed=0)
    assert b.loader == "dataloader" and b.num_train == 8 and len(b.train) == 2
    x, y, i = next(iter(b.train))
    assert x.shape == (4, 3, 32, 32) and int(i.max()) < 8
    assert sum(x.shape[0] for x, _, _ in b.test) == 6


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=r"image folder not found: expected .*train/"):
        build_data(cfg(name="imagefolder", root=str(tmp_path)))
    _write_folder(tmp_path / "a", classes=("cat", "dog"), test_classes=("cat", "emu"))
    with pytest.raises(DataError, match=r"classes differ between train/ \(2\) and val/ \(2\): only in train/: dog; "
                                        r"only in val/: emu"):  # the split named as on disk, not "test"
        build_data(cfg(name="imagefolder", root=str(tmp_path / "a"), batch_size=4))
    (tmp_path / "b" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"image folder not found: expected .*val/ or .*test/"):
        build_data(cfg(name="imagefolder", root=str(tmp_path / "b")))


def _bad_folder(root: Path) -> list[str]:
    """A 3-class folder with three different bad files in train/: a corrupt JPEG, an empty PNG, a text file."""
    _write_folder(root)
    (root / "train" / "cat" / "900_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    (root / "train" / "dog" / "901_empty.png").write_bytes(b"")
    (root / "train" / "eel" / "902_notes.txt").write_text("not an image")
    return ["900_corrupt.jpg", "901_empty.png", "902_notes.txt"]


def test_imagefolder_reports_every_bad_file_in_one_message(tmp_path):
    names = _bad_folder(tmp_path)
    (tmp_path / "val" / "emu").mkdir()  # and an empty class folder, only in val/
    with pytest.raises(DataError) as e:
        build_data(cfg(name="imagefolder", root=str(tmp_path), batch_size=64))
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in names), msg
    assert "val/: 1 empty class folder(s) (emu)" in msg and "only in val/: emu" in msg
    assert "fewer than data.batch_size=64" in msg and "data.on_bad_file=skip" in msg
    assert msg.startswith(f"image folder {tmp_path}: 4 problem(s): ")


def test_imagefolder_on_bad_file_skip_trains_and_records_what_was_skipped(tmp_path, monkeypatch):
    from tfdistill.config import load_config
    from tfdistill.engine import train

    names = _bad_folder(tmp_path / "ds")
    with pytest.warns(UserWarning, match=r"skipped 3 bad file\(s\) \(data.on_bad_file=skip\)"):
        b = build_data(cfg(name="imagefolder", root=str(tmp_path / "ds"), batch_size=6, on_bad_file="skip"))
    assert b.num_train == 18 and b.skipped["count"] == 3
    res = train(load_config(None, ["data.name=imagefolder", f"data.root={tmp_path / 'ds'}", "data.batch_size=6",
                                   "data.on_bad_file=skip", "model.name=resnet8", "epochs=1", "engine.device=cpu",
                                   "engine.progress=false", f"out_dir={tmp_path / 'runs'}", "name=r"]),
                echo=lambda s: None)
    skipped = json.loads((res.run_dir / "summary.json").read_text())["data"]["skipped"]
    assert skipped["count"] == 3 and all(any(n in f for f in skipped["files"]) for n in names)
    assert "skipped 3 bad file(s)" in (res.run_dir / "train.log").read_text()


def test_on_bad_file_must_be_error_or_skip():
    from tfdistill.config import load_config
    from tfdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="data.on_bad_file.*valid: error, skip"):
        load_config(None, ["data.on_bad_file=ignore"])


def _odd_image(w: int, h: int) -> Image.Image:
    return Image.fromarray(np.full((h, w, 3), 128, dtype=np.uint8))


def test_imagefolder_resolution_is_the_majority_not_the_first_image(tmp_path):
    """Issue 14: one 500x300 JPEG sorted first among 16x16 images used to switch the whole dataset to 224 px and the
    DataLoader path. Now: the majority size, the device loader, a warning naming the odd file, and a header note."""
    _write_folder(tmp_path, per_class=4, size=16, fmt="PNG")
    _odd_image(500, 300).save(tmp_path / "train" / "cat" / "000_big.jpg")  # first in ImageFolder order
    c = cfg(name="imagefolder", root=str(tmp_path), loader="auto", batch_size=6)
    with pytest.warns(UserWarning, match=r"1 of 13 training images are not 16x16 .*000_big\.jpg \(500x300\)"):
        b = build_data(c, "cpu")
    assert (b.image_size, b.loader, b.num_train) == (16, "device", 13)
    assert b.notes[0] == f"imagefolder {tmp_path}: 16x16 px (data.image_size=0: the majority size (16x16) of 13 " \
                         "training images read)"
    assert any("000_big.jpg" in n for n in b.notes[1:])
    # the odd image is resized (shorter side 300 -> 16) and centre-cropped, like every off-size image
    with pytest.warns(UserWarning, match="000_big"):
        src = load_source(c)
    assert tuple(src.train.images.shape[1:]) == (3, 16, 16)
    # from the cache: same decision, same warning
    with pytest.warns(UserWarning, match="000_big"):
        b2 = build_data(c, "cpu")
    assert (b2.image_size, b2.loader) == (16, "device") and b2.notes == b.notes


def test_imagefolder_small_first_image_does_not_shrink_the_dataset(tmp_path):
    _write_folder(tmp_path, per_class=4, size=16, fmt="PNG")
    _odd_image(8, 8).save(tmp_path / "train" / "cat" / "000_tiny.png")
    with pytest.warns(UserWarning, match=r"not 16x16 .*000_tiny\.png \(8x8\)"):
        b = build_data(cfg(name="imagefolder", root=str(tmp_path), loader="auto", batch_size=6), "cpu")
    assert b.image_size == 16


def test_imagefolder_explicit_image_size_wins(tmp_path):
    _write_folder(tmp_path, per_class=4, size=16, fmt="PNG")
    b = build_data(cfg(name="imagefolder", root=str(tmp_path), loader="auto", batch_size=6, image_size=24), "cpu")
    assert b.image_size == 24 and b.loader == "device"
    assert b.notes == [f"imagefolder {tmp_path}: 24x24 px (data.image_size=24; the majority size of the training "
                       "images is 16x16)"]
    assert next(iter(b.train))[0].shape[1:] == (3, 24, 24)


def test_imagefolder_archive_majority_and_warning(tmp_path):
    """Archives: the odd member first in the archive; the majority of the members read decides."""
    written = _write_archives(tmp_path, per_class=4, size=16)
    members = [("train/cat/zzz_big.jpg", _encode(_odd_image(300, 200), "JPEG"))]
    with tarfile.open(tmp_path / "train.tar.gz", "r:gz") as tf:
        members += [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tmp_path / "train.tar.gz", "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert len(written["train"]) == 12
    with pytest.warns(UserWarning, match=r"1 of 13 training images .*train\.tar\.gz:cat/zzz_big\.jpg \(300x200\)"):
        b = build_data(cfg(name="imagefolder", root=str(tmp_path), loader="auto", batch_size=6), "cpu")
    assert (b.image_size, b.loader) == (16, "device")


def test_imagefolder_resolution_in_train_log_and_summary(tmp_path, monkeypatch):
    import json

    from tfdistill.config import load_config
    from tfdistill.engine import train

    _write_folder(tmp_path / "ds", per_class=4, size=16, fmt="PNG")
    _odd_image(500, 300).save(tmp_path / "ds" / "train" / "cat" / "000_big.jpg")
    c = load_config(None, ["data.name=imagefolder", f"data.root={tmp_path / 'ds'}", "data.batch_size=6",
                           "model.name=resnet8", "epochs=1", "engine.progress=false", "engine.device=cpu",
                           f"out_dir={tmp_path / 'runs'}", "name=r", "engine.tensorboard=false"])
    with pytest.warns(UserWarning, match="000_big"):
        res = train(c, echo=lambda s: None)
    log = (res.run_dir / "train.log").read_text()
    assert "16x16 px (data.image_size=0: the majority size (16x16)" in log and "000_big.jpg (500x300)" in log
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["data"]["image_size"] == 16 and summary["data"]["loader"] == "device"


# ----------------------------------------------------------------------------------------------- real data
def _real_cifar_jpeg() -> Path:
    env = os.environ.get("TFDISTILL_CIFAR10_JPEG")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg"


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cifar10_jpeg_decode_and_cache(tmp_path, monkeypatch, capsys):
    root = _real_cifar_jpeg()
    if not (root / "train.tar.gz").is_file():
        pytest.skip(f"{root} not found (set TFDISTILL_CIFAR10_JPEG)")
    monkeypatch.setenv("TFDISTILL_CACHE", str(tmp_path / "realcache"))
    c = cfg(name="imagefolder", root=str(root), batch_size=128, eval_batch_size=1000, augment=["crop", "flip"])
    t0 = time.perf_counter()
    b = build_data(c, "cpu")
    first = time.perf_counter() - t0
    assert (b.num_train, b.num_test, b.num_classes, b.image_size, b.loader) == (50000, 10000, 10, 32, "device")
    assert b.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert b.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=0.01)
    src_counts = Counter(torch.cat([y for _, y, _ in b.test]).tolist())
    assert all(v == 1000 for v in src_counts.values()) and len(src_counts) == 10
    t0 = time.perf_counter()
    b2 = build_data(c, "cpu")
    second = time.perf_counter() - t0
    assert same(batches(b2.test)[:2], batches(b.test)[:2])
    with capsys.disabled():
        print(f"\n[cifar10-jpeg] first build (decode + cache) {first:.2f}s, cached build {second:.2f}s")
    assert second < max(2.0, first / 3)


def test_cli_shows_a_warning_once_in_its_own_form_and_logs_it(tmp_path, capsys, monkeypatch):
    """A data warning: one `tfdistill: warning:` line on stderr (no raw UserWarning, no second copy on stdout), once in
    train.log; the unwritable-cache warning the same way."""
    from tfdistill.cli import main

    _bad_folder(tmp_path / "ds")
    cache = tmp_path / "cache-file"
    cache.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TFDISTILL_CACHE", str(cache))
    argv = ["train", "data.name=imagefolder", f"data.root={tmp_path / 'ds'}", "data.batch_size=6",
            "data.on_bad_file=skip", "model.name=resnet8", "epochs=1", "engine.device=cpu", "engine.progress=false",
            f"out_dir={tmp_path / 'runs'}", "name=r"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    warned = [ln for ln in err.splitlines() if ln.strip()]
    assert all(ln.startswith("tfdistill: warning: ") for ln in warned), err
    assert sum("skipped 3 bad file(s)" in ln for ln in warned) == 1
    assert sum("data cache" in ln for ln in warned) >= 1 and "UserWarning" not in err
    assert "warning:" not in out
    log = (tmp_path / "runs" / "r" / "train.log").read_text()
    assert log.count("skipped 3 bad file(s)") == 1 and "warning: could not write the data cache" in log
