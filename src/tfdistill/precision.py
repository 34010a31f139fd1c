"""Numeric precision helpers shared by every layer: the float32 upcast of losses and the one autocast helper."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

__all__ = ["f32", "autocast"]


def f32(t: Tensor) -> Tensor:
    """Upcast half-precision tensors to float32 (float64 stays float64, e.g. for gradcheck)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def autocast(precision: str, device: torch.device, cache: bool | None = None):
    """The autocast context of ``precision``: ``fp32`` leaves the surrounding one as it is (no context), ``bf16`` /
    ``fp16`` autocast to that dtype (``cache``: autocast's weight cache; None: torch's default), ``off`` switches
    autocast off inside (the float32 island of a loss under the engine's bf16/fp16 step)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if cache is None:
        return torch.autocast(device_type=device.type, dtype=dtype)
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)
