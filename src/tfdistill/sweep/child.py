"""A sweep's training subprocess: ``python -m tfdistill.sweep.child train CONFIG.yaml [--resume|--overwrite]``.

Exactly ``python -m tfdistill train ...``, except that on Linux the process first asks the kernel to kill it when
the sweep that started it dies (``PR_SET_PDEATHSIG``): a sweep killed with SIGKILL leaves no training process
behind that would race its restart for the same run directory.
"""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = os.environ.get("TFDISTILL_SWEEP_PID", "")
    if parent.isdigit() and os.getppid() != int(parent):  # the sweep died before the request took effect
        os._exit(137)


if __name__ == "__main__":
    die_with_parent()
    from tfdistill.cli import main

    sys.exit(main(sys.argv[1:]))
