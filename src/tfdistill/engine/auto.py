"""``engine.precision`` / ``engine.channels_last`` / ``engine.cuda_graphs`` = ``auto``: resolved here, once.

Fast by default on a GPU: ``auto`` means bf16 autocast, channels_last and CUDA graphs where the device is CUDA
(bf16 where the GPU supports it, else fp32; graphs where the step is capturable: not under DDP and not with fp16,
whose GradScaler synchronises with the host every step), and fp32, contiguous, eager everywhere else (CPU, MPS).
Explicit values (``fp32 | bf16 | fp16``, ``true | false``) are kept as given. The engine writes the resolved values
into the run's ``config.yaml`` and ``summary.json``, so a run directory always says what was computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError

AUTO = "auto"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EngineSettings:
    precision: str
    channels_last: bool
    cuda_graphs: bool


def _bf16_supported(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation
        return bool(torch.cuda.is_bf16_supported())


def as_switch(value: Any, key: str) -> Optional[bool]:
    """``true``/``false``/``auto`` (YAML booleans or the strings) -> True/False/None; anything else: ConfigError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"bad value for config key {key!r}: {value!r}; valid: auto, true, false")


def resolve_engine_settings(precision: Any, channels_last: Any, cuda_graphs: Any, device: torch.device | str, *,
                            distributed: bool = False,
                            bf16_supported: Callable[[torch.device], bool] = _bf16_supported) -> EngineSettings:
    """The one place ``auto`` is decided (a pure function of the device; ``bf16_supported`` is injectable so the
    CUDA branch can be tested without a GPU)."""
    device = torch.device(device)
    prec = str(precision)
    if prec not in PRECISIONS:
        raise ConfigError(f"bad value for config key 'engine.precision': {prec!r}; valid: {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if prec == AUTO:
        prec = "bf16" if cuda and bf16_supported(device) else "fp32"
    cl = as_switch(channels_last, "engine.channels_last")
    if cl is None:
        cl = cuda
    graphs = as_switch(cuda_graphs, "engine.cuda_graphs")
    if graphs is None:
        graphs = cuda and not distributed and prec != "fp16"
    return EngineSettings(prec, cl, graphs)


def apply_engine_settings(cfg: Any, device: torch.device | str, *, distributed: bool = False) -> EngineSettings:
    """Resolve ``cfg.engine``'s ``auto`` values for ``device`` and write the result back into ``cfg`` (so the run's
    config.yaml and checkpoints record what was computed). Idempotent."""
    e = cfg.engine
    s = resolve_engine_settings(e.precision, e.channels_last, e.cuda_graphs, device, distributed=distributed)
    e.precision, e.channels_last, e.cuda_graphs = s.precision, s.channels_last, s.cuda_graphs
    return s
