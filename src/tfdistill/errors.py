"""Errors a user can cause (the CLI prints them as one line and exits non-zero), and how to tell torch.compile's own
errors from others."""

from __future__ import annotations


class TfdError(Exception):
    """Base class of every error caused by user input (config, data, checkpoint, names)."""


class ConfigError(TfdError, ValueError):
    """A config value, key, override or YAML file is invalid."""


class UnknownNameError(TfdError, ValueError):
    """A name (model, method, dataset, ...) is not registered; the message lists the valid ones."""


class DataError(TfdError, ValueError):
    """A dataset is missing, unreadable or in the wrong format."""


class CheckpointError(TfdError, ValueError):
    """A checkpoint is missing, corrupt or does not match the run it is loaded into."""


class RunDirError(TfdError, ValueError):
    """A run directory would be overwritten, or is not a run directory."""


class DivergenceError(TfdError, RuntimeError):
    """The loss became NaN or infinite."""


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from torch.compile's machinery (dynamo, inductor, AOTAutograd, FX): code that compiles
    opportunistically falls back to eager on these, and on nothing else."""
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx"))
