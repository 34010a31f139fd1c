"""A sweep's training subprocess.

* ``python -m tfdistill.sweep.child train CONFIG.yaml [--resume|--overwrite]``: exactly ``python -m tfdistill train``;
* ``python -m tfdistill.sweep.child batch MODE CONFIG.yaml MODE CONFIG.yaml ...`` (``MODE``: ``new``, ``resume`` or
  ``overwrite``): the runs as one batched model (:class:`~tfdistill.engine.multiseed.MultiSeedTrainer`); exit code 0
  when every run finished, 1 when some diverged (each says why in its ``train.log``), 2 on bad input.

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


def batch(argv: list[str]) -> int:
    from tfdistill.config import load_config
    from tfdistill.engine.auto import apply_engine_settings
    from tfdistill.engine.loop import resolve_device
    from tfdistill.engine.multiseed import MultiSeedTrainer
    from tfdistill.errors import DivergenceError, TfdError

    if len(argv) < 2 or len(argv) % 2 or any(m not in MODES for m in argv[::2]):
        print(f"tfdistill: error: usage: batch MODE CONFIG [MODE CONFIG ...] with MODE in {', '.join(MODES)}",
              file=sys.stderr)
        return 2
    try:
        cfgs = [load_config(path) for path in argv[1::2]]
        for c in cfgs:  # engine.* = auto resolved for this process's device before the group is built
            apply_engine_settings(c, resolve_device(c.engine.device))
        results = MultiSeedTrainer(cfgs, modes=[MODES[m] for m in argv[::2]]).fit()
    except TfdError as exc:
        print(f"tfdistill: error: {exc}", file=sys.stderr)
        return 2
    failed = [(c.name, r) for c, r in zip(cfgs, results) if isinstance(r, DivergenceError)]
    for name, err in failed:
        print(f"tfdistill: error: {name}: {err}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    die_with_parent()
    if sys.argv[1:2] == ["batch"]:
        sys.exit(batch(sys.argv[2:]))
    from tfdistill.cli import main

    sys.exit(main(sys.argv[1:]))
