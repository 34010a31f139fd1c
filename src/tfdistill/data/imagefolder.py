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
import re
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
from .identity import archive_identity, folder_identity
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
BAD_KEPT = 50
"""Bad files named in a cache entry (and so in a message); the count is always exact."""
PROBLEMS_SHOWN = 10
"""Problems listed in one message; the rest are counted."""
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
        self.problems: list[str] = []
        """What is wrong with the split as a whole (no classes, empty classes)."""
        self.non_images: list[str] = []
        """Files in the class folders that are not images (a bad file each, see data.on_bad_file)."""

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        it = self.items[i]
        return it if isinstance(it, str) else f"{self.path}[{i}]"


def _scan_dir(path: Path) -> _RawSplit:
    """torchvision ImageFolder's order (sorted classes, sorted walk inside each, symlinks followed), without its
    first-problem exception: empty classes and non-image files are collected on the split (``problems``,
    ``non_images``)."""
    try:
        classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    except OSError as exc:
        raise DataError(f"bad image folder {path}: {type(exc).__name__}: {exc}") from None
    files: list[str] = []
    labels: list[int] = []
    empty, non_images = [], []
    for i, c in enumerate(classes):
        n = 0
        for root, _, names in sorted(os.walk(path / c, followlinks=True)):
            for name in sorted(names):
                f = os.path.join(root, name)
                if name.lower().endswith(IMG_EXTENSIONS):
                    files.append(f)
                    labels.append(i)
                    n += 1
                elif not name.startswith("."):
                    non_images.append(f)
        if n == 0:
            empty.append(c)
    raw = _RawSplit("dir", path, classes, np.asarray(labels, dtype=np.int64), files)
    raw.problems = ([f"no class folders in {path}/ (expected {path}/<class>/<image>)"] if not classes else []) + \
        ([f"{path.name}/: {len(empty)} empty class folder(s) ({_first(empty)})"] if empty else [])
    raw.non_images = [f"{f} (not an image file)" for f in non_images]
    return raw


def _first(names: Sequence[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f", ... {len(names) - k} more" if len(names) > k else "")


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


def _decode_chunk(items: Sequence[Item], names: Sequence[str], size: int
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode encoded images (bytes or file paths) into uint8 (n,3,size,size); also their native (h, w), and the
    files that could not be read or decoded: (index, "name (why)"), their rows left zero."""
    out = np.zeros((len(items), 3, size, size), dtype=np.uint8)
    native = np.zeros((len(items), 2), dtype=np.int64)
    datas: list[bytes] = []
    bad: list[tuple[int, str]] = []
    for i, it in enumerate(items):
        if isinstance(it, str):
            try:
                with open(it, "rb") as f:
                    datas.append(f.read())
            except OSError as exc:
                datas.append(b"")
                bad.append((i, f"{names[i]} (unreadable: {type(exc).__name__}: {exc.strerror or exc})"))
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
    unreadable = {i for i, _ in bad}
    for i in range(len(datas)):
        if i in unreadable:
            continue
        img = done.get(i)
        if img is None:
            try:
                img = _to_rgb_tensor(datas[i], names[i])
            except DataError as exc:
                why = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc).split(": ", 2)[-1])
                bad.append((i, f"{names[i]} (corrupt: {why[:120]})"))
                continue
        native[i] = img.shape[-2:]
        out[i] = _fit(img, size).numpy()
    return out, native, sorted(bad)


def _pool_init() -> None:
    torch.set_num_threads(1)


def _pool_decode(args: tuple[Sequence[Item], Sequence[str], int]) -> tuple[np.ndarray, np.ndarray, list]:
    return _decode_chunk(*args)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def decode_items(chunks: Iterable[tuple[list[Item], list[str]]], size: int, workers: int = 0,
                 native: Optional[list[np.ndarray]] = None, bad: Optional[list[tuple[int, str]]] = None
                 ) -> np.ndarray:
    """Decode a stream of (items, names) chunks into one uint8 (N,3,size,size) array, in order.

    With `workers` > 0 the chunks are decoded by that many worker processes *while* the stream is being
    produced (e.g. a .tar.gz being inflated by this process), otherwise here, one chunk after the other.
    `native`, when given, receives the images' native (h, w) sizes, one int64 (n, 2) array per chunk; `bad`, when
    given, the files that could not be decoded, ``(index, "name (why)")`` (else the first one is a DataError)."""
    parts: list[tuple[np.ndarray, np.ndarray, list]] = []
    if workers > 0:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init) as ex:
            futs = [ex.submit(_pool_decode, (items, names, size)) for items, names in chunks]
            parts = [f.result() for f in futs]
    else:
        parts = [_decode_chunk(items, names, size) for items, names in chunks]
    if native is not None:
        native.extend(p[1] for p in parts)
    offset = 0
    for p in parts:
        found = [(offset + i, why) for i, why in p[2]]
        if found and bad is None:
            raise DataError(f"cannot decode image {found[0][1]}")
        if bad is not None:
            bad.extend(found)
        offset += len(p[0])
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


def _probe_size(item: Item, name: str) -> Optional[tuple[int, int]]:
    """(h, w) from the image's header, or None when it cannot be read (the decode reports it)."""
    try:
        src = item if isinstance(item, str) else io.BytesIO(item)
        with Image.open(src) as im:
            w, h = im.size
            return h, w
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------- the source
class _SplitReader:
    """Reads one split (directory or archive) lazily, decodes with caching."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self._raw: Optional[_RawSplit] = None
        self._rows: Optional[list[tuple[str, int, int]]] = None
        self.bad_headers: list[str] = []

    def stamp(self) -> Any:
        """What the cache key depends on: archive path+size+mtime, or every file's path+size+mtime."""
        if self.kind == "tar":
            st = self.path.stat()
            return ["tar", str(self.path.resolve()), st.st_size, st.st_mtime_ns]
        raw = self.raw()
        h = cache.cache_key(*self._file_rows())
        return ["dir", str(self.path.resolve()), len(raw), h]

    def _file_rows(self) -> list[tuple[str, int, int]]:
        """(path relative to the split folder, size, mtime_ns) of every image file (stat once)."""
        if self._rows is None:
            rows = []
            for p in self.raw().items:
                st = os.stat(p)
                rows.append((os.path.relpath(str(p), self.path), st.st_size, st.st_mtime_ns))
            self._rows = rows
        return self._rows

    def identity(self) -> dict:
        """What this split is, from what moves with it (:mod:`.identity`): a folder's relative file names and sizes
        (per class), an archive's name and size; never its absolute path or modification times."""
        if self.kind == "tar":
            return archive_identity(self.path.name, self.path.stat().st_size)
        return folder_identity(self.path.name, ((rel, size) for rel, size, _ in self._file_rows()))

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
        sizes = [_probe_size(item, name) for item, name in picked]
        self.bad_headers = [f"{name} (not a readable image)" for (item, name), hw in zip(picked, sizes) if hw is None]
        good = [hw for hw in sizes if hw is not None]
        if not good:
            raise DataError(f"none of the {len(picked)} images read in {self.path} is a readable image: "
                            f"{_first(self.bad_headers, 3)}")
        return good

    def decode(self, size: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, list[str], list]:
        """(classes, labels, uint8 images (N,3,size,size), native (h, w) sizes (N,2), names, bad files as
        ``(index, "name (why)")``) in ImageFolder order. An archive not read yet is inflated here while worker
        processes decode the chunks already read."""
        native: list[np.ndarray] = []
        bad: list[tuple[int, str]] = []
        if self.kind == "dir" or self._raw is not None:
            raw = self.raw()
            names = [raw.name(i) for i in range(len(raw))]
            images = decode_items(_chunks(raw.items, names), size, _pool_size(len(raw), busy_main=False), native,
                                  bad)
            return raw.classes, raw.labels, images, _stack_sizes(native), names, bad
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
        images = decode_items(stream(), size, _pool_size(est, busy_main=True), native, bad)
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
        where = {old: new for new, old in enumerate(order)}
        return classes, labels, images, sizes, names, sorted((where[i], why) for i, why in bad)


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
    classes, labels_np, images_np, native, names, bad = reader.decode(size)
    if bad:  # left out of the arrays; the caller reports them (data.on_bad_file=error) or skips them
        keep = np.ones(len(names), dtype=bool)
        keep[[i for i, _ in bad]] = False
        images_np, labels_np, native = images_np[keep], labels_np[keep], native[keep]
        names = [n for n, k in zip(names, keep) if k]
    images, labels = torch.from_numpy(np.ascontiguousarray(images_np)), torch.from_numpy(labels_np)
    meta: dict[str, Any] = {"classes": classes, "size": size, "small": small, "source": str(reader.path),
                            "decode_s": round(time.perf_counter() - t0, 3),
                            "off_size": _off_size(native, names, major),
                            "bad": {"count": len(bad), "files": [why for _, why in bad[:BAD_KEPT]]}}
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
        problems = [*_scan_problems(train_r), *_scan_problems(test_r)]
        train, classes, meta = _decoded_split(train_r, size, want, small, stats=small, major=major)
        test, test_classes, test_meta = _decoded_split(test_r, size, want, small, stats=False, major=major)
        problems += _class_problems(classes, test_classes, train_r.path, test_r.path)
        bad = [*_bad_files(train_r, meta), *_bad_files(test_r, test_meta)]
        count = sum(int((m.get("bad") or {}).get("count", 0)) for m in (meta, test_meta)) + \
            len(bad) - sum(len((m.get("bad") or {}).get("files", [])) for m in (meta, test_meta))
        if len(train) < int(cfg.batch_size):
            problems.append(f"the training set has {len(train)} usable images, fewer than data.batch_size="
                            f"{int(cfg.batch_size)} (batches are full): lower data.batch_size")
        skipped = _settle(root, cfg, problems, bad, count, notes)
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
                             notes=notes, skipped=skipped, identity=_identity(train_r, test_r))

    # large + dataloader: encoded splits, decoded by workers; decodable on demand (e.g. for a subset on device)
    for r in (train_r, test_r):
        if r.kind == "tar" and r.path.stat().st_size > MAX_ARCHIVE_BYTES:
            raise DataError(
                f"archive {r.path} is too large to hold in memory ({r.path.stat().st_size / 2**30:.1f} GiB) and "
                f"its images are large: extract it to {r.path.parent / r.path.name.split('.')[0]}/ instead"
            )
    raw_tr, raw_te = train_r.raw(), test_r.raw()
    problems = [*_scan_problems(train_r), *_scan_problems(test_r),
                *_class_problems(raw_tr.classes, raw_te.classes, train_r.path, test_r.path)]
    bad = [*raw_tr.non_images, *raw_te.non_images, *train_r.bad_headers]  # (others: found by the loader workers)
    if len(raw_tr) < int(cfg.batch_size):
        problems.append(f"the training set has {len(raw_tr)} images, fewer than data.batch_size="
                        f"{int(cfg.batch_size)} (batches are full): lower data.batch_size")
    skipped = _settle(root, cfg, problems, bad, len(bad), notes)
    if skipped:  # header-unreadable files are dropped from the encoded lists
        drop = {b.rsplit(" (", 1)[0] for b in train_r.bad_headers}
        keep = [i for i, it in enumerate(raw_tr.items) if not (isinstance(it, str) and it in drop)]
        raw_tr.items, raw_tr.labels = [raw_tr.items[i] for i in keep], raw_tr.labels[keep]
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
                         small=False, notes=notes, skipped=skipped, identity=_identity(train_r, test_r))


def _identity(train: _SplitReader, test: _SplitReader) -> dict:
    return {"train": train.identity(), "test": test.identity()}


def _encoded_decoder(split: Split, size: int) -> Split:
    from dataclasses import replace

    items: list[Item] = list(split.files if split.files is not None else split.blobs or [])  # type: ignore
    names = [it if isinstance(it, str) else f"{split.origin}[{i}]" for i, it in enumerate(items)]
    images = torch.from_numpy(decode_items(_chunks(items, names), size, _pool_size(len(items), busy_main=False)))
    return replace(split, images=images, files=None, blobs=None)


def _class_problems(train: list[str], test: list[str], train_path: Path, test_path: Path) -> list[str]:
    """The class mismatch between the splits, each named as on disk (``train/`` and ``val/`` or ``test/``)."""
    if train == test:
        return []
    only_tr = sorted(set(train) - set(test))
    only_te = sorted(set(test) - set(train))
    a, b = _split_name(train_path), _split_name(test_path)
    return [f"classes differ between {a} ({len(train)}) and {b} ({len(test)}): only in {a}: "
            f"{_first(only_tr) or '-'}; only in {b}: {_first(only_te) or '-'}"]


def _split_name(path: Path) -> str:
    return path.name + ("/" if path.is_dir() else "")


def _scan_problems(reader: _SplitReader) -> list[str]:
    return list(reader.raw().problems) if reader.kind == "dir" else []


def _bad_files(reader: _SplitReader, meta: dict) -> list[str]:
    """A split's bad files: non-image files in its class folders, files that would not decode."""
    non_images = reader.raw().non_images if reader.kind == "dir" else []
    return [*non_images, *((meta.get("bad") or {}).get("files") or [])]


def _settle(root: Path, cfg: Any, problems: list[str], bad: list[str], bad_count: int, notes: list[str]) -> dict:
    """Every problem of the folder in one DataError; or, with ``data.on_bad_file=skip`` and only bad files, one
    warning (count, first names) and the record for summary.json."""
    mode = str(getattr(cfg, "on_bad_file", "error") or "error")
    if mode == "skip" and not problems:
        if not bad_count:
            return {}
        msg = f"image folder {root}: skipped {bad_count} bad file(s) (data.on_bad_file=skip): {_first(bad, 3)}"
        warnings.warn(msg, stacklevel=4)
        notes.append(f"warning: {msg}")
        return {"count": bad_count, "files": bad[:BAD_KEPT]}
    every = [*problems] + ([f"{bad_count} bad file(s): {_first(bad, PROBLEMS_SHOWN)}"] if bad_count and
                           mode == "error" else [])
    if not every:
        return {}
    shown = "; ".join(every[:PROBLEMS_SHOWN]) + (f"; ... {len(every) - PROBLEMS_SHOWN} more"
                                                  if len(every) > PROBLEMS_SHOWN else "")
    hint = (" (data.on_bad_file=skip leaves bad files out and trains on the rest)" if bad_count and mode == "error"
            else "")
    raise DataError(f"image folder {root}: {len(every)} problem(s): {shown}{hint}")


@DATASETS.register("imagefolder")
def imagefolder(cfg: Any) -> DatasetSource:
    """An image folder / pair of archives under `data.root` (see the module docstring)."""
    return load_imagefolder(cfg)

