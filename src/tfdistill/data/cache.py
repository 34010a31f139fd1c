"""On-disk cache of decoded image arrays (`$TFDISTILL_CACHE`, default `~/.cache/tfdistill`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

CACHE_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("TFDISTILL_CACHE") or "~/.cache/tfdistill").expanduser()


def cache_key(*parts: Any) -> str:
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:20]


def cache_file(prefix: str, key: str) -> Path:
    return cache_dir() / f"{prefix}-{key}.pt"


def load(prefix: str, key: str) -> Optional[dict[str, Any]]:
    """The cached entry or None. Tensors are memory-mapped (shared page cache across processes/ranks)."""
    path = cache_file(prefix, key)
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        entry["meta"] = json.loads(entry["meta"])
        return entry
    except Exception as exc:  # corrupt / partial / old format: ignore and rebuild
        warnings.warn(f"ignoring unreadable data cache {path}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


def save(prefix: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Optional[Path]:
    """Write atomically (temp file + rename); a failure (read-only home, full disk) is a warning, not an error."""
    path = cache_file(prefix, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({**tensors, "meta": json.dumps(meta)}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
    except OSError as exc:
        warnings.warn(f"could not write the data cache {path}: {exc}", stacklevel=2)
        return None
