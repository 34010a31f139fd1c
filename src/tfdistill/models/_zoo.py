"""The model registry (kept apart from ``__init__`` so family modules can import it)."""

from __future__ import annotations

from ..registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register
