"""Segmentation data sets on disk: Cityscapes, CamVid (SegNet's layout), Pascal VOC 2012, ADE20K and a generic
images + masks folder, read from ``data.root``.

============  ==================================================================  =====================================
name          layout under ``data.root``                                           labels
============  ==================================================================  =====================================
cityscapes    ``leftImg8bit/{train,val}/<city>/<x>_leftImg8bit.png`` +             ``labelIds`` -> the 19 train ids
              ``gtFine/{train,val}/<city>/<x>_gtFine_labelIds.png``                (cityscapesScripts), others 255
camvid        ``{train,test}/<x>.png`` + ``{trainannot,testannot}/<x>.png``        0..10 (SegNet's 11 classes), 11 -> 255
              (SegNet's CamVid: 367 train / 233 test)
voc2012       ``JPEGImages/<id>.jpg`` + ``SegmentationClass/<id>.png`` (palette    0..20 (background + 20), 255 border
              indices), splits ``ImageSets/Segmentation/{train,val}.txt``
ade20k        ``images/{training,validation}/<x>.jpg`` +                          1..150 -> 0..149, 0 ("other") -> 255
              ``annotations/{training,validation}/<x>.png``
segfolder     ``{train,val|test}/images/<x>.*`` + ``{train,val|test}/masks/<x>.png``  class indices as stored, 255
              (class names: ``classes.txt``, one a line, else ``class<k>``)       ignored
============  ==================================================================  =====================================

Images are decoded once and kept resident (the device loader): every image is resized to one size -- height
``data.image_size`` (0: the first training image's height) and the width that keeps the first training image's
aspect ratio -- images bilinearly, masks by nearest neighbour (labels never blend). Training augmentation:
``scale_crop`` (random scale ``data.scale_range`` and crop ``data.crop_size``, image and mask together) and flip.
Evaluation: whole images at the resident size, or sliding windows (``data.eval_window``, ``data.eval_stride``).
Results at a reduced resident size are not comparable with published full-resolution mIoU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .identity import folder_identity
from .sources import DATASETS, DatasetSource, Split, channel_stats

IGNORE = 255

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
"""Cityscapes ``labelIds`` -> train ids (cityscapesScripts' ``labels.py``); every other id is ignored."""
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian",
                  "bicyclist"]
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
               "tv/monitor"]
# ADE20K (SceneParsing, 150 classes): the first name of each row of the dataset's objectInfo150.csv, in its order
# (Idx 1..150; label 0, "other", is ignored)
ADE20K_CLASSES = ["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
                  "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
                  "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
                  "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base",
                  "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
                  "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
                  "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
                  "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
                  "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
                  "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
                  "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
                  "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
                  "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
                  "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal",
                  "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
                  "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
                  "bulletin board", "shower", "radiator", "glass", "clock", "flag"]


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    """Class indices as stored: a palette PNG's indices (VOC), a grey PNG's values (never a palette's colours)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise DataError(f"mask {path} is a {im.mode} image; masks hold one class index per pixel (mode L or P)")
        return np.asarray(im).astype(np.int64)


def _decode(pairs: Sequence[tuple[Path, Path]], lut: Callable[[np.ndarray], np.ndarray], size: tuple[int, int]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.empty(len(pairs), 3, *size, dtype=torch.uint8)
    masks = torch.empty(len(pairs), *size, dtype=torch.uint8)
    for i, (ip, mp) in enumerate(pairs):
        img, m = _read_image(ip), _read_mask(mp)
        if img.shape[:2] != m.shape[:2]:
            raise DataError(f"image {ip} is {img.shape[1]}x{img.shape[0]} but its mask {mp} is "
                            f"{m.shape[1]}x{m.shape[0]}")
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()
        images[i] = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0].round(
        ).clamp(0, 255).to(torch.uint8)
        y = torch.from_numpy(lut(m).astype(np.int64))[None, None].float()
        masks[i] = F.interpolate(y, size=size, mode="nearest")[0, 0].to(torch.uint8)
    return images, masks


def _source(name: str, cfg: Any, pairs: dict[str, list[tuple[Path, Path]]], lut: Callable[[np.ndarray], np.ndarray],
            classes: list[str]) -> DatasetSource:
    for split, found in pairs.items():
        if not found:
            raise DataError(f"{name}: no {split} image/mask pairs under {cfg.root} (see tfdistill.data.segfolders for "
                            f"the layout)")
    first = _read_image(pairs["train"][0][0])
    h0, w0 = first.shape[:2]
    h = int(cfg.image_size or 0) or h0
    size = (h, max(1, round(h * w0 / h0)))
    tx, ty = _decode(pairs["train"], lut, size)
    vx, vy = _decode(pairs["test"], lut, size)
    mean, std = channel_stats(tx)
    note = (f"{name}: {len(tx)} train / {len(vx)} test images at {size[0]}x{size[1]} (resized once; masks nearest), "
            f"{len(classes)} classes, {IGNORE} ignored")
    root = Path(cfg.root)
    identity = {split: folder_identity(split, ((_rel(p, root), p.stat().st_size) for pair in found for p in pair))
                for split, found in pairs.items()}  # fingerprint.json: relative names and sizes, never paths
    return DatasetSource(name, Split(labels=ty, images=tx, origin=f"{name} train"),
                         Split(labels=vy, images=vx, origin=f"{name} test"), list(classes), mean, std,
                         image_size=size[0], small=True, notes=[note], task="segmentation", identity=identity)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _root(cfg: Any) -> Path:
    root = Path(str(cfg.root)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    return root


@DATASETS.register("cityscapes")
def cityscapes(cfg: Any) -> DatasetSource:
    root = _root(cfg)
    pairs = {}
    for split, folder in (("train", "train"), ("test", "val")):
        found = []
        for ip in sorted((root / "leftImg8bit" / folder).glob("*/*_leftImg8bit.png")):
            mp = root / "gtFine" / folder / ip.parent.name / ip.name.replace("_leftImg8bit.png",
                                                                             "_gtFine_labelIds.png")
            if not mp.is_file():
                raise DataError(f"cityscapes: {ip} has no mask {mp}")
            found.append((ip, mp))
        pairs[split] = found
    lut = _lut(CITYSCAPES_TRAIN_IDS)
    return _source("cityscapes", cfg, pairs, lambda m: lut[np.clip(m, 0, 255)], CITYSCAPES_CLASSES)


def _paired_dirs(name: str, images: Path, masks: Path) -> list[tuple[Path, Path]]:
    out = []
    if not images.is_dir():
        return out
    by_stem = {p.stem: p for p in masks.glob("*.png")} if masks.is_dir() else {}
    for ip in sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")):
        if ip.stem not in by_stem:
            raise DataError(f"{name}: image {ip} has no mask {masks / (ip.stem + '.png')}")
        out.append((ip, by_stem[ip.stem]))
    return out


@DATASETS.register("camvid")
def camvid(cfg: Any) -> DatasetSource:
    root = _root(cfg)
    pairs = {"train": _paired_dirs("camvid", root / "train", root / "trainannot"),
             "test": _paired_dirs("camvid", root / "test", root / "testannot")}
    lut = _lut({k: k for k in range(11)})
    return _source("camvid", cfg, pairs, lambda m: lut[np.clip(m, 0, 255)], CAMVID_CLASSES)


@DATASETS.register("voc2012")
def voc2012(cfg: Any) -> DatasetSource:
    root = _root(cfg)
    pairs = {}
    for split, listed in (("train", "train.txt"), ("test", "val.txt")):
        lst = root / "ImageSets" / "Segmentation" / listed
        if not lst.is_file():
            raise DataError(f"voc2012: split list {lst} not found")
        ids = [s.strip() for s in lst.read_text().splitlines() if s.strip()]
        found = []
        for i in ids:
            ip, mp = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
            if not ip.is_file() or not mp.is_file():
                raise DataError(f"voc2012: {i} listed in {lst} but {ip if not ip.is_file() else mp} is missing")
            found.append((ip, mp))
        pairs[split] = found
    lut = _lut({k: k for k in range(21)})
    return _source("voc2012", cfg, pairs, lambda m: lut[np.clip(m, 0, 255)], VOC_CLASSES)


@DATASETS.register("ade20k")
def ade20k(cfg: Any) -> DatasetSource:
    root = _root(cfg)
    pairs = {split: _paired_dirs("ade20k", root / "images" / folder, root / "annotations" / folder)
             for split, folder in (("train", "training"), ("test", "validation"))}
    lut = _lut({k: k - 1 for k in range(1, 151)})
    return _source("ade20k", cfg, pairs, lambda m: lut[np.clip(m, 0, 255)], ADE20K_CLASSES)


@DATASETS.register("segfolder")
def segfolder(cfg: Any) -> DatasetSource:
    root = _root(cfg)
    test = next((root / s for s in ("val", "test") if (root / s).is_dir()), root / "val")
    pairs = {"train": _paired_dirs("segfolder", root / "train" / "images", root / "train" / "masks"),
             "test": _paired_dirs("segfolder", test / "images", test / "masks")}
    names_file = root / "classes.txt"
    if names_file.is_file():
        classes = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
    else:
        top = max((int(v) for _, mp in pairs["train"] for v in np.unique(_read_mask(mp)) if v != IGNORE), default=0)
        classes = [f"class{k}" for k in range(top + 1)]
    k = len(classes)

    def lut(m: np.ndarray) -> np.ndarray:
        bad = (m != IGNORE) & ((m < 0) | (m >= k))
        if bad.any():
            raise DataError(f"segfolder: a mask holds class {int(m[bad][0])}, but there are {k} classes "
                            f"(0..{k - 1}, {IGNORE} ignored)")
        return m.astype(np.uint8)

    return _source("segfolder", cfg, pairs, lut, classes)
