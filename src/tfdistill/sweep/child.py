"""A sweep's training subprocess.

* ``python -m tfdistill.sweep.child train CONFIG.yaml [--resume|--overwrite]``: exactly ``python -m tfdistill train``;
* ``python -m tfdistill.sweep.child pack MODE CONFIG.yaml MODE CONFIG.yaml ...`` (``MODE``: ``new``, ``resume`` or
  ``overwrite``): the runs as one packed group (:func:`~tfdistill.engine.build_group`); exit code 0 when every run
  finished, 1 when some diverged (each says why in its ``train.log``, the others ran to the end), 2 on bad input.

On Linux the process first asks the kernel to kill it when the sweep that started it dies (``PR_SET_PDEATHSIG``): a
sweep killed with SIGKILL leaves no training process behind that would race its restart for the same run directory.
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


MODES = {"new": (False, False), "resume": (True, False), "overwrite": (False, True)}


def pack(argv: list[str]) -> int:
    from tfdistill.config import load_config
    from tfdistill.engine import build_group
    from tfdistill.errors import DivergenceError, TfdError, exit_code
    from tfdistill.interrupts import graceful_stop

    if len(argv) < 2 or len(argv) % 2 or any(m not in MODES for m in argv[::2]):
        print(f"tfdistill: error: usage: pack MODE CONFIG [MODE CONFIG ...] with MODE in {', '.join(MODES)}",
              file=sys.stderr)
        return 2
    try:
        with graceful_stop():  # SIGTERM from the sweep: each run records its stop (exit 143)
            cfgs = [load_config(path) for path in argv[1::2]]
            results = build_group(cfgs, modes=[MODES[m] for m in argv[::2]]).fit()
    except KeyboardInterrupt as exc:
        print(f"tfdistill: {exc.args[0] if exc.args else 'stopped'}", file=sys.stderr)
        return exit_code(exc)
    except TfdError as exc:
        print(f"tfdistill: error: {exc}", file=sys.stderr)
        return 2
    failed = [(c.name, r) for c, r in zip(cfgs, results) if isinstance(r, DivergenceError)]
    for name, err in failed:
        print(f"tfdistill: error: {name}: {err}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    die_with_parent()
    if sys.argv[1:2] == ["pack"]:
        sys.exit(pack(sys.argv[2:]))
    from tfdistill.cli import main

    sys.exit(main(sys.argv[1:]))
