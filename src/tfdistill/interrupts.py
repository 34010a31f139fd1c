"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (``timeout``, Slurm before a preemption kill, Kubernetes,
``docker stop``) raise in the main thread -- :class:`KeyboardInterrupt` and its subclass
:class:`~tfdistill.errors.Terminated` -- so every ``except KeyboardInterrupt`` path (the engine's stop record, the
sweep's state) handles both; inside :func:`deferred` (a checkpoint being written) the stop waits until the block
ends, so ``last.pt``, ``best.pt`` and the metrics row of an epoch are written together or not at all.

The CLI installs the handlers for every command (:func:`graceful_stop`); :func:`tfdistill.engine.train` installs
them too where the process still has the default handlers (a library user's script), and restores them after.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from .errors import Terminated, signal_name

_depth = 0
_pending: int | None = None


def _raise(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def on_signal(signum: int, frame=None) -> None:
    """The handler of SIGINT and SIGTERM: raise now, or once the current :func:`deferred` block ends."""
    global _pending
    if _depth > 0:
        if _pending is None:
            _pending = signum
        return
    _raise(signum)


@contextlib.contextmanager
def deferred():
    """A block that a SIGINT/SIGTERM does not cut in two (a checkpoint write): the stop is raised when it ends."""
    global _depth, _pending
    _depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            if ok:  # an error already on its way out stops the run anyway
                _raise(signum)


@contextlib.contextmanager
def graceful_stop(only_if_default: bool = False):
    """SIGINT and SIGTERM raise (see the module docs) inside the block; the previous handlers come back after.
    ``only_if_default``: leave a signal alone whose handler someone else set. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(sig)
        if only_if_default and current not in (signal.SIG_DFL, signal.default_int_handler):
            continue
        try:
            old[sig] = signal.signal(sig, on_signal)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError, TypeError):
                pass


def note_interrupt(exc: BaseException, where: str,
                   after: str = "nothing was written; run the same command to start") -> None:
    """Give an interrupt that carries no message yet the one line the CLI prints: which signal, where, what now."""
    if isinstance(exc, KeyboardInterrupt) and not exc.args:
        exc.args = (f"stopped by {signal_name(exc)} {where}; {after}",)
