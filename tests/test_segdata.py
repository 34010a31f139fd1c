"""Segmentation data sets on disk (#30): tiny files in each on-disk layout, made in tmp_path, read as the formats
say -- pairs matched, labels mapped (Cityscapes labelIds -> train ids, CamVid void, VOC border, ADE20K "other"),
one resize with masks by nearest neighbour, bad input refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tfdistill.config import load_config
from tfdistill.data import DATASETS, build_data
from tfdistill.errors import DataError

H, W = 6, 8


def _img(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def _mask(path, values, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(values, dtype=np.uint8).reshape(H, W)
    im = Image.fromarray(arr, mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([c for k in range(256) for c in (k, 255 - k, (7 * k) % 256)])
        im = Image.fromarray(arr, mode="P")
        im.putpalette([c for k in range(256) for c in (k, 255 - k, (7 * k) % 256)])
    im.save(path)


def _load(name, root, *extra):
    cfg = load_config(None, [f"data.name={name}", f"data.root={root}", *extra])
    return DATASETS.get(name)(cfg.data)


def _pattern(vals):
    return np.resize(np.asarray(vals), H * W)


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    for split, city, n in (("train", "aachen", 2), ("val", "lindau", 1)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            _img(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", i)
            _mask(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _pattern([7, 26, 0, 33, 4]))
    src = _load("cityscapes", tmp_path)
    assert src.task == "segmentation" and len(src.class_names) == 19 and src.class_names[13] == "car"
    assert src.train.images.shape == (2, 3, H, W) and src.test.labels.shape == (1, H, W)
    assert src.train.labels.flatten()[:5].tolist() == [0, 13, 255, 18, 255]  # road, car, unlabeled, bicycle, ignored
    own = np.array(Image.open(tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"))
    assert torch.equal(src.train.images[0], torch.from_numpy(own).permute(2, 0, 1))  # at its own size: untouched
    (tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="has no mask"):
        _load("cityscapes", tmp_path)


def test_camvid_segnet_layout_void_is_ignored(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for i in range(n):
            _img(tmp_path / split / f"0001TP_{i:06d}.png", i)
            _mask(tmp_path / f"{split}annot" / f"0001TP_{i:06d}.png", _pattern([0, 10, 11, 3]))
    src = _load("camvid", tmp_path)
    assert len(src.class_names) == 11 and src.class_names[3] == "road"
    assert src.train.labels.flatten()[:4].tolist() == [0, 10, 255, 3]
    assert len(src.train.images) == 2 and len(src.test.images) == 1


def test_voc2012_reads_palette_indices_and_split_lists(tmp_path):
    ids = {"train": ["2007_000032", "2007_000033"], "val": ["2007_000039"]}
    for split, names in ids.items():
        for i, n in enumerate(names):
            _img(tmp_path / "JPEGImages" / f"{n}.jpg", i)
            _mask(tmp_path / "SegmentationClass" / f"{n}.png", _pattern([0, 15, 255, 20]), palette=True)
        lst = tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("\n".join(names) + "\n")
    assert Image.open(tmp_path / "SegmentationClass" / "2007_000032.png").mode == "P"
    src = _load("voc2012", tmp_path)
    assert len(src.class_names) == 21 and src.class_names[15] == "person"
    assert src.train.labels.flatten()[:4].tolist() == [0, 15, 255, 20]  # indices, not palette colours
    assert len(src.test.labels) == 1


def test_ade20k_shifts_classes_and_ignores_other(tmp_path):
    for split, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            _img(tmp_path / "images" / split / f"ADE_{split}_{i:08d}.jpg", i)
            _mask(tmp_path / "annotations" / split / f"ADE_{split}_{i:08d}.png", _pattern([0, 1, 150, 13]))
    src = _load("ade20k", tmp_path)
    assert len(src.class_names) == 150 and len(set(src.class_names)) == 150
    assert src.train.labels.flatten()[:4].tolist() == [255, 0, 149, 12]
    # names by the dataset's objectInfo150.csv (Idx: first name): 1 wall, 13 person, 45 chest of drawers,
    # 90 television receiver, 150 flag -- mask value 13 is train id 12, "person"
    names = src.class_names
    assert (names[0], names[12], names[44], names[89], names[149]) == (
        "wall", "person", "chest of drawers", "television receiver", "flag")


def test_generic_folder_resizes_once_with_nearest_masks_and_trains(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            _img(tmp_path / split / "images" / f"im{i}.png", i)
            _mask(tmp_path / split / "masks" / f"im{i}.png", _pattern([0, 1, 2, 255]))
    (tmp_path / "classes.txt").write_text("bg\nthing\nstuff\n")
    src = _load("segfolder", tmp_path, "data.image_size=12")
    assert src.class_names == ["bg", "thing", "stuff"]
    assert src.train.images.shape == (4, 3, 12, 16)  # height 12, the aspect of the first image (6x8)
    assert set(src.train.labels.unique().tolist()) <= {0, 1, 2, 255}  # nearest: no blended labels
    cfg = load_config(None, ["data.name=segfolder", f"data.root={tmp_path}", "data.batch_size=2",
                             "data.augment=[flip]", "data.image_size=12"])
    bundle = build_data(cfg.data, "cpu", seed=0)
    x, y, _ = next(iter(bundle.train))
    assert x.shape == (2, 3, 12, 16) and y.shape == (2, 12, 16) and y.dtype == torch.long
    assert bundle.task == "segmentation" and bundle.num_classes == 3
    _mask(tmp_path / "train" / "masks" / "im0.png", _pattern([0, 7]))
    with pytest.raises(DataError, match="holds class 7, but there are 3 classes"):
        _load("segfolder", tmp_path)


def test_a_colour_mask_is_refused(tmp_path):
    for split in ("train", "val"):
        _img(tmp_path / split / "images" / "a.png", 0)
        _img(tmp_path / split / "masks" / "a.png", 1)  # an RGB picture where a mask should be
    with pytest.raises(DataError, match="one class index per pixel"):
        _load("segfolder", tmp_path)


def test_scale_crop_moves_image_and_mask_together():
    from tfdistill.data.device_loader import scale_crop

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (2, 8, 10), generator=g)
    x = (y * 40).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()  # the image spells its mask
    same = scale_crop(x, y, torch.ones(2), torch.zeros(2, 2), (8, 10))
    assert torch.equal(same[0], x) and torch.equal(same[1], y)  # scale 1, full crop: unchanged
    xs, ys = scale_crop(x, y, torch.full((2,), 2.0), torch.tensor([[0.5, 1.0], [0.0, 0.0]]), (6, 6))
    up = y.repeat_interleave(2, 1).repeat_interleave(2, 2)  # nearest x2
    top, left = int(0.5 * (16 - 6)), int(1.0 * (20 - 6))
    assert torch.equal(ys[0], up[0, top : top + 6, left : left + 6]) and torch.equal(ys[1], up[1, :6, :6])
    assert set(ys.unique().tolist()) <= set(range(5))  # labels never blend
    xs, ys = scale_crop(x, y, torch.full((2,), 0.5), torch.zeros(2, 2), (6, 8))  # 4x5 scaled, padded to 6x8
    assert (ys[:, 4:, :] == 255).all() and (ys[:, :, 5:] == 255).all() and (xs[:, :, 4:, :] == 0).all()
    assert (ys[:, :4, :5] != 255).all()


def test_the_loader_scales_and_crops_masks_with_their_images(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            _img(tmp_path / split / "images" / f"im{i}.png", i)
            _mask(tmp_path / split / "masks" / f"im{i}.png", _pattern([0, 1, 2, 255]))
    over = ["data.name=segfolder", f"data.root={tmp_path}", "data.batch_size=4", "data.augment=[scale_crop,flip]",
            "data.crop_size=[4,5]", "data.scale_range=[0.75,1.5]"]
    a = build_data(load_config(None, over).data, "cpu", seed=0)
    b = build_data(load_config(None, over).data, "cpu", seed=0)
    (xa, ya, _), (xb, yb, _) = next(iter(a.train)), next(iter(b.train))
    assert xa.shape == (4, 3, 4, 5) and ya.shape == (4, 4, 5)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # a function of (seed, epoch)
    a.train.set_epoch(1)
    assert not torch.equal(next(iter(a.train))[1], ya)
    xt, yt, _ = next(iter(a.test))
    assert yt.shape == (2, H, W)  # evaluation: whole images at their resident size
    with pytest.raises(Exception, match="scale_crop' is for segmentation masks"):
        build_data(load_config(None, ["data.name=synthetic", "data.augment=[scale_crop]"]).data, "cpu")
