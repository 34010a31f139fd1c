"""Image folders: `<root>/train/<class>/*` + `<root>/val|test/<class>/*`, or the same trees inside
`<root>/train.tar.gz` + `<root>/val|test.tar.gz` archives (read by streaming, never extracted).

* Small folders (images at most 64 px on a side, e.g. a JPEG copy of CIFAR): both splits are decoded once into
  uint8 arrays at the native size (or `data.image_size`), in parallel worker processes, and cached in
  `$TFDISTILL_CACHE` (default `~/.cache/tfdistill`) keyed by the archive path + size + mtime (for directories:
  every file's path + size + mtime) so the next build only loads the cache. Mean/std are computed from the
  decoded training images. `loader: auto` picks the device loader.
* Large folders (ImageNet-like): files (or, for archives, the encoded bytes in memory) are decoded by
  DataLoader workers; ImageNet mean/std; default resolution 224. Forcing `loader: device` decodes everything
  at `image_size` (shorter side resized, centre crop) and caches it like a small folder.

Resolution. An explicit `data.image_size` wins. Otherwise the image size is the *majority* size of the training
images, read from the headers of up to 2,048 of them (spread over the whole folder; for an archive, its first
2,048 members), so that one odd image -- a 500x300 JPEG among 32x32 ones -- neither rescales the dataset nor moves
it to the DataLoader path. The decision is a line of the run header (`DatasetSource.notes`, logged to train.log)
and goes into summary.json's `data` entry. Small folders are decoded in full anyway: every image that is not the
majority size is counted while decoding, and a warning names how many and the first few (they are resized, shorter
side, and centre-cropped to the chosen size).

Sample order = sorted class names, then sorted paths inside each class (torchvision ImageFolder's order).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import sys
import tarfile
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from . import cache
from .sources import (
    DATASETS,
    IMAGENET_STATS,
    SMALL_MAX_BYTES,
    SMALL_MAX_SIDE,
    DatasetSource,
    Packed,
    PackedStr,
    Split,
    channel_stats,
)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
TRAIN_NAMES = ("train",)
TEST_NAMES = ("val", "test")
MAX_ARCHIVE_BYTES = 8 << 30
"""Archives of large images are held in memory encoded (decoded by DataLoader workers): at most this big."""
_CHUNK = 2048
SIZE_SAMPLE = 2048
"""At most this many image headers are read to find the majority size."""
_OFF_EXAMPLES = 5
_POOL_MIN = 4096  # decode in worker processes from this many images on

Item = Union[str, bytes]


# ----------------------------------------------------------------------------------------------- locating
def _locate(root: Path, names: Sequence[str]) -> Optional[tuple[str, Path]]:
    for n in names:
        if (root / n).is_dir():
            return "dir", root / n
    for n in names:
        for suf in ARCHIVE_SUFFIXES:
            if (root / f"{n}{suf}").is_file():
                return "tar", root / f"{n}{suf}"
    return None


def _expected(root: Path, names: Sequence[str]) -> str:
    dirs = " or ".join(f"{root / n}/" for n in names)
    return f"{dirs} (or {'/'.join(n + '.tar.gz' for n in names)})"


# ----------------------------------------------------------------------------------------------- reading
class _RawSplit:
    """Classes, labels and encoded items (paths or bytes) of one split, in ImageFolder order."""

    def __init__(self, kind: str, path: Path, classes: list[str], labels: np.ndarray, items: list[Item]):
        self.kind, self.path, self.classes, self.labels, self.items = kind, path, classes, labels, items

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        it = self.items[i]
        return it if isinstance(it, str) else f"{self.path}[{i}]"


def _scan_dir(path: Path) -> _RawSplit:
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"bad image folder {path}: {msg}") from None
    files = [p for p, _ in folder.samples]
    labels = np.asarray([t for _, t in folder.samples], dtype=np.int64)
    return _RawSplit("dir", path, list(folder.classes), labels, files)


def _archive_members(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(class, relative path, bytes) of every image member, streamed in archive order."""
    split_names = {*TRAIN_NAMES, *TEST_NAMES, path.name.split(".")[0]}
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = [p for p in PurePosixPath(m.name).parts if p not in (".", "/")]
                if parts and parts[0] in split_names and len(parts) >= 3:
                    parts = parts[1:]
                if len(parts) < 2 or not parts[-1].lower().endswith(IMG_EXTENSIONS) or parts[-1].startswith("._"):
                    continue
                f = tf.extractfile(m)
                if f is None:
                    continue
                yield parts[0], "/".join(parts[1:]), f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read archive {path}: {type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------------------------- decoding
def _to_rgb_tensor(data: bytes, name: str) -> torch.Tensor:
    try:
        from torchvision.io import ImageReadMode, decode_image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception:
        pass
    try:  # formats torchvision.io does not decode (bmp, tiff, ppm, ...)
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    except Exception as exc:
        raise DataError(f"cannot decode image {name}: {type(exc).__name__}: {exc}") from None


def _fit(img: torch.Tensor, size: int) -> torch.Tensor:
    if img.shape[-2:] == (size, size):
        return img
    from torchvision.transforms.v2 import functional as F

    img = F.resize(img, size, antialias=True)
    return F.center_crop(img, [size, size])


def _decode_chunk(items: Sequence[Item], names: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode encoded images (bytes or file paths) into uint8 (n,3,size,size); also their native (h, w)."""
    out = np.empty((len(items), 3, size, size), dtype=np.uint8)
    native = np.empty((len(items), 2), dtype=np.int64)
    datas = []
    for it in items:
        if isinstance(it, str):
            with open(it, "rb") as f:
                datas.append(f.read())
        else:
            datas.append(it)
    jpeg = [i for i, d in enumerate(datas) if d[:3] == b"\xff\xd8\xff"]
    done: dict[int, torch.Tensor] = {}
    if jpeg:
        try:  # batched libjpeg decode: several times faster than one PIL image at a time
            from torchvision.io import ImageReadMode, decode_jpeg

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                imgs = decode_jpeg([torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpeg],
                                   mode=ImageReadMode.RGB)
            done = dict(zip(jpeg, imgs))
        except Exception:
            done = {}
    for i in range(len(datas)):
        img = done.get(i)
        if img is None:
            img = _to_rgb_tensor(datas[i], names[i])
        native[i] = img.shape[-2:]
        out[i] = _fit(img, size).numpy()
    return out, native


def _pool_init() -> None:
    torch.set_num_threads(1)


def _pool_decode(args: tuple[Sequence[Item], Sequence[str], int]) -> tuple[np.ndarray, np.ndarray]:
    return _decode_chunk(*args)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def decode_items(chunks: Iterable[tuple[list[Item], list[str]]], size: int, workers: int = 0,
                 native: Optional[list[np.ndarray]] = None) -> np.ndarray:
    """Decode a stream of (items, names) chunks into one uint8 (N,3,size,size) array, in order.

    With `workers` > 0 the chunks are decoded by that many worker processes *while* the stream is being
    produced (e.g. a .tar.gz being inflated by this process), otherwise here, one chunk after the other.
    `native`, when given, receives the images' native (h, w) sizes, one int64 (n, 2) array per chunk."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if workers > 0:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init) as ex:
            futs = [ex.submit(_pool_decode, (items, names, size)) for items, names in chunks]
            parts = [f.result() for f in futs]
    else:
        parts = [_decode_chunk(items, names, size) for items, names in chunks]
    if native is not None:
        native.extend(p[1] for p in parts)
    if not parts:
        return np.empty((0, 3, size, size), dtype=np.uint8)
    return np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]


def _pool_size(n_items: int, busy_main: bool) -> int:
    """Worker processes for decoding: none for little work or one core; else one per core (one fewer when this
    process is itself busy inflating an archive), at most 16."""
    cpus = _cpus()
    if cpus < 2 or n_items < _POOL_MIN:
        return 0
    return max(1, min(16, cpus - 1 if busy_main else cpus))


def _chunks(items: Sequence[Item], names: Sequence[str]) -> Iterator[tuple[list[Item], list[str]]]:
    for s in range(0, len(items), _CHUNK):
        yield list(items[s : s + _CHUNK]), list(names[s : s + _CHUNK])


def _probe_size(item: Item, name: str) -> tuple[int, int]:
    try:
        src = item if isinstance(item, str) else io.BytesIO(item)
        with Image.open(src) as im:
            w, h = im.size
            return h, w
    except Exception as exc:
        raise DataError(f"cannot read image {name}: {type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------------------------- the source
class _SplitReader:
    """Reads one split (directory or archive) lazily, decodes with caching."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self._raw: Optional[_RawSplit] = None

    def stamp(self) -> Any:
        """What the cache key depends on: archive path+size+mtime, or every file's path+size+mtime."""
        if self.kind == "tar":
            st = self.path.stat()
            return ["tar", str(self.path.resolve()), st.st_size, st.st_mtime_ns]
        raw = self.raw()
        rows = []
        for p in raw.items:
            st = os.stat(p)
            rows.append((os.path.relpath(str(p), self.path), st.st_size, st.st_mtime_ns))
        h = cache.cache_key(*rows)
        return ["dir", str(self.path.resolve()), len(raw), h]

    def raw(self) -> _RawSplit:
        if self._raw is None:
            if self.kind == "dir":
                self._raw = _scan_dir(self.path)
            else:
                self._raw = self._read_archive()
        return self._raw

    def _read_archive(self) -> _RawSplit:
        rows = list(_archive_members(self.path))
        if not rows:
            raise DataError(f"archive {self.path} holds no images under <class>/<file> (extensions: "
                            f"{', '.join(IMG_EXTENSIONS)})")
        rows.sort(key=lambda r: (r[0], r[1]))
        classes = sorted({r[0] for r in rows})
        cidx = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([cidx[r[0]] for r in rows], dtype=np.int64)
        return _RawSplit("tar", self.path, classes, labels, [r[2] for r in rows])

    def sample_sizes(self, limit: int = SIZE_SAMPLE) -> list[tuple[int, int]]:
        """Native (h, w) of up to `limit` images, from their headers: evenly spread over a folder (or an archive
        already read), the first `limit` members of an archive not read yet (never inflating all of it)."""
        if self.kind == "tar" and self._raw is None:
            picked: list[tuple[Item, str]] = []
            for cls, rel, data in _archive_members(self.path):
                picked.append((data, f"{self.path}:{cls}/{rel}"))
                if len(picked) >= limit:
                    break
        else:
            raw = self.raw()
            step = max(1, -(-len(raw) // limit))
            picked = [(raw.items[i], raw.name(i)) for i in range(0, len(raw), step)]
        if not picked:
            what = "archive" if self.kind == "tar" else "image folder"
            raise DataError(f"{what} {self.path} holds no images under <class>/<file> (extensions: "
                            f"{', '.join(IMG_EXTENSIONS)})")
        return [_probe_size(item, name) for item, name in picked]

    def decode(self, size: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(classes, labels, uint8 images (N,3,size,size), native (h, w) sizes (N,2), names) in ImageFolder
        order. An archive not read yet is inflated here while worker processes decode the chunks already read."""
        native: list[np.ndarray] = []
        if self.kind == "dir" or self._raw is not None:
            raw = self.raw()
            names = [raw.name(i) for i in range(len(raw))]
            images = decode_items(_chunks(raw.items, names), size, _pool_size(len(raw), busy_main=False), native)
            return raw.classes, raw.labels, images, _stack_sizes(native), names
        keys: list[tuple[str, str]] = []

        def stream() -> Iterator[tuple[list[Item], list[str]]]:
            items: list[Item] = []
            names: list[str] = []
            for cls, rel, data in _archive_members(self.path):
                keys.append((cls, rel))
                items.append(data)
                names.append(f"{self.path}:{cls}/{rel}")
                if len(items) == _CHUNK:
                    yield items, names
                    items, names = [], []
            if items:
                yield items, names

        # ~1 KB per small compressed image: decide on the pool from the archive size
        est = self.path.stat().st_size // 1024
        images = decode_items(stream(), size, _pool_size(est, busy_main=True), native)
        sizes = _stack_sizes(native)
        if not keys:
            raise DataError(f"archive {self.path} holds no images under <class>/<file> (extensions: "
                            f"{', '.join(IMG_EXTENSIONS)})")
        order = sorted(range(len(keys)), key=keys.__getitem__)
        classes = sorted({k[0] for k in keys})
        cidx = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([cidx[keys[i][0]] for i in order], dtype=np.int64)
        if order != list(range(len(order))):
            images, sizes = images[np.asarray(order)], sizes[np.asarray(order)]
        names = [f"{self.path}:{keys[i][0]}/{keys[i][1]}" for i in order]
        return classes, labels, images, sizes, names


def _stack_sizes(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def majority_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The most common (h, w) (the first seen among equally common ones)."""
    return Counter(tuple(int(v) for v in hw) for hw in sizes).most_common(1)[0][0]  # type: ignore[return-value]


def _off_size(sizes: np.ndarray, names: list[str], major: tuple[int, int]) -> dict[str, Any]:
    """How many images are not `major` (h, w), and the first few (name, h, w)."""
    off = np.flatnonzero((sizes[:, 0] != major[0]) | (sizes[:, 1] != major[1])) if len(sizes) else np.zeros(0, int)
    return {"count": int(off.size), "total": int(len(sizes)),
            "examples": [[names[i], int(sizes[i, 0]), int(sizes[i, 1])] for i in off[:_OFF_EXAMPLES].tolist()]}


def off_size_message(split: str, off: dict[str, Any], major: tuple[int, int], size: int) -> str:
    ex = ", ".join(f"{n} ({w}x{h})" for n, h, w in off["examples"])
    more = f", ... ({off['count'] - len(off['examples'])} more)" if off["count"] > len(off["examples"]) else ""
    return (f"imagefolder: {off['count']} of {off['total']} {split} images are not {major[1]}x{major[0]} (the "
            f"majority size); they were resized (shorter side) and centre-cropped to {size}x{size}: {ex}{more}")


def _decoded_split(reader: _SplitReader, size: int, image_size_cfg: int, small: bool, stats: bool,
                   major: tuple[int, int]) -> tuple[Split, list[str], dict[str, Any]]:
    """The decoded split, from the cache when it is there (else decoded and cached). Its meta's ``off_size``
    counts the images whose native size is not `major`."""
    key = cache.cache_key(reader.stamp(), image_size_cfg, size, small, stats, "sizes", list(major))
    hit = cache.load("imagefolder", key)
    if hit is not None:
        meta = hit["meta"]
        split = Split(labels=hit["labels"], images=hit["images"], origin=str(reader.path))
        return split, list(meta["classes"]), meta
    t0 = time.perf_counter()
    classes, labels_np, images_np, native, names = reader.decode(size)
    images, labels = torch.from_numpy(images_np), torch.from_numpy(labels_np)
    meta: dict[str, Any] = {"classes": classes, "size": size, "small": small, "source": str(reader.path),
                            "decode_s": round(time.perf_counter() - t0, 3),
                            "off_size": _off_size(native, names, major)}
    if stats:
        meta["mean"], meta["std"] = channel_stats(images)
    cache.save("imagefolder", key, {"images": images, "labels": labels}, meta)
    return Split(labels=labels, images=images, origin=str(reader.path)), list(classes), meta


def load_imagefolder(cfg: Any) -> DatasetSource:
    root = Path(str(cfg.root)).expanduser()
    tr = _locate(root, TRAIN_NAMES)
    te = _locate(root, TEST_NAMES)
    if tr is None or te is None:
        what = _expected(root, TRAIN_NAMES) if tr is None else _expected(root, TEST_NAMES)
        raise DataError(f"image folder not found: expected {what}")
    train_r, test_r = _SplitReader(*tr), _SplitReader(*te)
    want = int(cfg.image_size or 0)
    loader = str(cfg.loader)

    # Decide small vs large from the training split: cached decision first (archives), else probe one image.
    index_key = cache.cache_key(train_r.stamp(), want) if train_r.kind == "tar" else None
    idx = cache.load("imagefolder-index", index_key) if index_key else None
    if idx is not None and "major" in idx["meta"] and (idx["meta"]["small"] or loader == "device"):
        small, size = bool(idx["meta"]["small"]), int(idx["meta"]["size"])
        major, sampled = tuple(idx["meta"]["major"]), int(idx["meta"]["sampled"])
    else:
        sizes = train_r.sample_sizes()
        major, sampled = majority_size(sizes), len(sizes)
        native = max(major)
        # the image count is known up front for directories only; archives of small images count as small
        count = len(train_r.raw()) if train_r.kind == "dir" else 0
        small = native <= SMALL_MAX_SIDE and count * 3 * native * native <= SMALL_MAX_BYTES
        size = want or (native if small else 224)
        if index_key and (small or loader == "device"):
            cache.save("imagefolder-index", index_key, {},
                       {"small": small, "size": size, "major": list(major), "sampled": sampled})
    mh, mw = major
    if want:
        why = f"data.image_size={want}; the majority size of the training images is {mw}x{mh}"
    elif small:
        why = f"data.image_size=0: the majority size ({mw}x{mh}) of {sampled} training images read"
    else:
        why = (f"data.image_size=0 and the majority size ({mw}x{mh}, of {sampled} training images read) is over "
               f"{SMALL_MAX_SIDE} px: the ImageNet default; images are resized and centre-cropped")
    notes = [f"imagefolder {root}: {size}x{size} px ({why})"]

    if small or loader == "device":
        train, classes, meta = _decoded_split(train_r, size, want, small, stats=small, major=major)
        test, test_classes, test_meta = _decoded_split(test_r, size, want, small, stats=False, major=major)
        _check_classes(classes, test_classes, train_r.path, test_r.path)
        if small:
            mean, std = tuple(meta["mean"]), tuple(meta["std"])
        else:
            mean, std = IMAGENET_STATS
        for split, m in (("training", meta), ("test", test_meta)):
            off = m.get("off_size") or {}
            if off.get("count") and small:  # large images are resized anyway: sizes differing is normal there
                msg = off_size_message(split, off, major, size)
                warnings.warn(msg, stacklevel=3)
                notes.append(f"warning: {msg}")
        return DatasetSource("imagefolder", train, test, classes, mean, std, image_size=size, small=small,
                             notes=notes)

    # large + dataloader: encoded splits, decoded by workers; decodable on demand (e.g. for a subset on device)
    for r in (train_r, test_r):
        if r.kind == "tar" and r.path.stat().st_size > MAX_ARCHIVE_BYTES:
            raise DataError(
                f"archive {r.path} is too large to hold in memory ({r.path.stat().st_size / 2**30:.1f} GiB) and "
                f"its images are large: extract it to {r.path.parent / r.path.name.split('.')[0]}/ instead"
            )
    raw_tr, raw_te = train_r.raw(), test_r.raw()
    _check_classes(raw_tr.classes, raw_te.classes, train_r.path, test_r.path)
    splits = []
    for reader, raw in ((train_r, raw_tr), (test_r, raw_te)):
        items = raw.items
        split = Split(
            labels=torch.from_numpy(raw.labels),
            files=PackedStr(items) if raw.kind == "dir" else None,  # type: ignore[arg-type]
            blobs=Packed(items) if raw.kind == "tar" else None,  # type: ignore[arg-type]
            origin=str(reader.path),
            decoder=_encoded_decoder,
        )
        splits.append(split)
    mean, std = IMAGENET_STATS
    return DatasetSource("imagefolder", splits[0], splits[1], raw_tr.classes, mean, std, image_size=size,
                         small=False, notes=notes)


def _encoded_decoder(split: Split, size: int) -> Split:
    from dataclasses import replace

    items: list[Item] = list(split.files if split.files is not None else split.blobs or [])  # type: ignore
    names = [it if isinstance(it, str) else f"{split.origin}[{i}]" for i, it in enumerate(items)]
    images = torch.from_numpy(decode_items(_chunks(items, names), size, _pool_size(len(items), busy_main=False)))
    return replace(split, images=images, files=None, blobs=None)


def _check_classes(train: list[str], test: list[str], train_path: Path, test_path: Path) -> None:
    if train != test:
        only_tr = sorted(set(train) - set(test))
        only_te = sorted(set(test) - set(train))
        raise DataError(
            f"image folder classes differ between {train_path} ({len(train)}) and {test_path} ({len(test)}): "
            f"only in train: {only_tr[:5]}{'...' if len(only_tr) > 5 else ''}; "
            f"only in test: {only_te[:5]}{'...' if len(only_te) > 5 else ''}"
        )


@DATASETS.register("imagefolder")
def imagefolder(cfg: Any) -> DatasetSource:
    """An image folder / pair of archives under `data.root` (see the module docstring)."""
    return load_imagefolder(cfg)

