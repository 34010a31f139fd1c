"""The data's identity: what a run's ``fingerprint.json`` records of its data set (:mod:`tfdistill.fingerprint`).

Made only from what moves with the data -- file names relative to the split folder and their sizes, class names,
an archive's name and size, a generator's settings, the subset chosen -- never absolute paths or modification
times: a copy of the same data in another folder (or on another machine) has the same identity; other images
under the same class names do not. Cheap: file lists and sizes are hashed, never pixels.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Sequence

DIGEST_CHARS = 16
"""Hex characters kept of a SHA-256 digest (64 bits: collisions are not a concern for telling data apart)."""


def digest(obj: Any) -> str:
    """A short SHA-256 of ``obj``'s canonical JSON text (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:DIGEST_CHARS]


def folder_identity(split: str, rows: Iterable[tuple[str, int]]) -> dict:
    """A split folder from its ``(path relative to the split folder, size in bytes)`` rows: file count, total bytes
    and, per class folder (the first path component), the digest of its sorted rows (so a difference can be named
    by class)."""
    per_class: dict[str, list] = {}
    total = count = 0
    for rel, size in rows:
        rel = rel.replace("\\", "/")
        per_class.setdefault(rel.split("/", 1)[0], []).append([rel, int(size)])
        total += int(size)
        count += 1
    return {"kind": "folder", "split": split, "files": count, "bytes": total,
            "classes": {c: digest(sorted(v)) for c, v in sorted(per_class.items())}}


def archive_identity(name: str, size: int) -> dict:
    """A split archive (``train.tar.gz``): its file name and size in bytes."""
    return {"kind": "archive", "split": name, "bytes": int(size)}


def subset_identity(key: str, k: int, indices: Sequence[int]) -> dict:
    """``data.<key>`` = ``k`` and the digest of the indices it chose."""
    return {key: int(k), f"{key}_indices": digest([int(i) for i in indices])}
