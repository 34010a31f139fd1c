"""What every ``torch.compile`` call site of tfdistill shares (the TFD region, the engine's compiled step)."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator

RECOMPILE_LIMIT = 64
"""Cache entries allowed per compiled code object (dynamo's default is 8)."""


@contextlib.contextmanager
def room_for_recompiles(limit: int = RECOMPILE_LIMIT) -> Iterator[None]:
    """More cache entries per code object than dynamo's default 8 while inside: one process builds many compiled
    runs on the same code (a packed group of K runs, a sweep's runs one after another, each TFD configuration and
    map shape), each one entry. Past the limit dynamo would silently run the rest eagerly."""
    import torch._dynamo.config as dynamo_config

    key = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    with dynamo_config.patch(**{key: max(int(getattr(dynamo_config, key)), int(limit))}):
        yield


def with_room_for_recompiles(fn: Callable[..., Any], limit: int = RECOMPILE_LIMIT) -> Callable[..., Any]:
    """``fn`` (a ``torch.compile``d callable) called inside :func:`room_for_recompiles`."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with room_for_recompiles(limit):
            return fn(*args, **kwargs)

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def options_from_env(name: str) -> dict | None:
    """The compiler options in environment variable ``name`` (a JSON object, e.g.
    ``'{"coordinate_descent_tuning": true}'``), or None when it is unset or empty; anything else: ValueError naming
    the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be a JSON object of compiler options, e.g. "
                         f"'{{\"coordinate_descent_tuning\": true}}'; got {text!r} ({exc.msg})") from None
    if not isinstance(opts, dict):
        raise ValueError(f"{name} must be a JSON object of compiler options, e.g. "
                         f"'{{\"coordinate_descent_tuning\": true}}'; got {text!r}")
    return opts
