"""Errors a user can cause (the CLI prints them as one line and exits non-zero), the exit codes -- their one home --
and how to tell torch.compile's own errors from others.

Exit codes of every ``tfdistill`` command (docs/faults.md has the fault matrix behind them):

====  =================================================================================================
0     success
1     a run failed while training (loss NaN/inf; a sweep with failed runs); an unexpected internal error
2     bad input: usage, config, names, a data set problem (missing, unreadable or bad files, too few images), run
      directory (exists, in use, not a run), checkpoint -- every :class:`TfdError` but a divergence
4     the output location cannot be written: read-only, full (ENOSPC), vanished, no permission
130   stopped by SIGINT (Ctrl-C); 143: stopped by SIGTERM (timeout, Slurm, Kubernetes, docker stop);
      both graceful: the stop reason is the last line of train.log, the last finished epoch is resumable
141   the output pipe was closed (``... | head``); nothing is reported
====  =================================================================================================
"""

from __future__ import annotations

import errno
import signal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_IO = 4
EXIT_SIGINT = 128 + int(signal.SIGINT)    # 130
EXIT_SIGTERM = 128 + int(signal.SIGTERM)  # 143
EXIT_PIPE = 128 + 13                      # 141 (SIGPIPE)


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by :mod:`tfdistill.interrupts`: handled everywhere like Ctrl-C (a graceful
    stop), told apart only in the stop reason and the exit code (143 instead of 130)."""


def signal_name(exc: BaseException) -> str:
    """``"SIGTERM"`` or ``"SIGINT"`` for an interrupt (:class:`Terminated` or :class:`KeyboardInterrupt`)."""
    return "SIGTERM" if isinstance(exc, Terminated) else "SIGINT (Ctrl-C)"


def exit_code(exc: BaseException) -> int:
    """The documented exit code (module docs) of a command that stopped with ``exc``."""
    if isinstance(exc, Terminated):
        return EXIT_SIGTERM
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT
    if isinstance(exc, DivergenceError):
        return EXIT_FAILED
    if isinstance(exc, TfdError):
        return EXIT_BAD_INPUT
    if isinstance(exc, BrokenPipeError):
        return EXIT_PIPE
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return EXIT_IO
    return EXIT_FAILED


WRITE_ERRNOS = frozenset(getattr(errno, n) for n in
                         ("EROFS", "ENOSPC", "EDQUOT", "EACCES", "EPERM", "ENOENT", "EIO", "ENOTDIR", "EFBIG")
                         if hasattr(errno, n))
"""OSErrors that mean "cannot write there" (read-only, full, vanished, no permission): exit code 4."""


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from torch.compile's machinery (dynamo, inductor, AOTAutograd, FX): code that compiles
    opportunistically falls back to eager on these, and on nothing else."""
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx"))
