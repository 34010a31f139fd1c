"""``tfdistill demo``: CE vs TFD on scikit-learn's bundled digits, offline, under a minute on 2 idle CPU cores.

Its numbers are one seed and one machine's: CPU math libraries (oneDNN, MKL/OpenBLAS) choose their kernels by the
processor's instruction set and the thread count, so the same seed rounds differently on another machine and the
two trainings drift apart (on a 360-image test set one image is 0.28 points). Pinning the thread count or
``torch.use_deterministic_algorithms`` makes a run repeatable on one machine (it already is on the CPU) but not
equal across processors, so the demo does neither and says so instead.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .config import load_config, plural
from .engine import train
from .rundir import RunDir


def run_demo(out_dir: str | Path = "runs", epochs: int | None = None, model: str | None = None,
             extra: list[str] | None = None) -> dict:
    """Train the demo recipe (``configs/demo.yaml``) with ``ce`` and with ``tfd``; print a table, write a PNG.

    Each call writes a new folder ``<out_dir>/demo-<timestamp>/`` (never overwriting anything) holding the two run
    directories, ``curves.png`` and ``results.md``.
    """
    from .report.plots import plot_curves

    base = Path(out_dir) / time.strftime("demo-%Y%m%d-%H%M%S")
    n = 1
    while base.exists():
        n += 1
        base = base.with_name(f"{base.name.split('+')[0]}+{n}")
    results = {}
    with _threads_for_this_machine() as why:
        if why:
            print(why)
        for method in ("ce", "tfd"):
            results[method] = _train_one(method, base, epochs, model, extra)
    s = results["tfd"]
    curves = plot_curves({m: [RunDir(base / m).read_metrics()] for m in results}, base / "curves.png",
                         title=f"tfdistill demo: {s['model']} on digits, CE vs TFD (seed {s['seed']})")
    lines = [
        "| method | best top-1 (epoch) | last top-1 | time |",
        "|---|---|---|---|",
        *(f"| {m} | {s['best_top1']:.2f}% ({s['best_epoch']}) | {s['last_top1']:.2f}% | {s['wall_seconds']:.0f}s |"
          for m, s in results.items()),
    ]
    note = ("One seed on a tiny dataset: a difference between the two rows is not evidence for or against TFD; "
            "use `tfdistill sweep` for mean +- std over seeds. The numbers also differ from machine to machine "
            "(CPU math libraries pick different kernels, so floating-point sums round differently).")
    (base / "results.md").write_text("\n".join(lines) + "\n\n" + note + "\n")
    print("\n" + "\n".join(lines))
    print(f"\n{note}\ncurves: {curves}\nruns:   {base}")
    return {"dir": base, "results": results, "curves": curves}


def _train_one(method: str, base: Path, epochs: int | None, model: str | None, extra: list[str] | None) -> dict:
    overrides = [f"method.name={method}", f"out_dir={base}", f"name={method}", *(extra or [])]
    if epochs is not None:
        overrides.append(f"epochs={epochs}")
    if model:
        overrides.append(f"model.name={model}")
    cfg = load_config("demo", overrides)
    print(f"\n== {method}: {cfg.model.name} on {cfg.data.name}, {plural(int(cfg.epochs), 'epoch')} ==")
    return train(cfg).summary


def demo_threads(cores: int | None = None, load: float | None = None, current: int | None = None) -> int:
    """Intra-op threads for the demo's tiny model: the cores that are not busy already (1-minute load average), at
    least 1, at most torch's current setting. On a shared machine every thread of a step waits for the slowest
    one, so a thread on a busy core costs far more than it gives (measured 2026-12-02 on 2 cores at load 7:
    3 demo epochs took 216 s with 2 threads, 22-39 s with 1)."""
    import torch

    cores = cores if cores is not None else (os.cpu_count() or 1)
    current = current if current is not None else torch.get_num_threads()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average (Windows): keep torch's setting
            return current
    return max(1, min(current, int(cores - load + 0.5)))


@contextlib.contextmanager
def _threads_for_this_machine():
    """torch's threads for the demo (:func:`demo_threads`), restored after; OMP_NUM_THREADS, when set, wins. Yields
    the line that says so (None when nothing changes)."""
    import torch

    before = torch.get_num_threads()
    n = before if os.environ.get("OMP_NUM_THREADS") else demo_threads(current=before)
    if n == before:
        yield None
        return
    torch.set_num_threads(n)
    try:
        yield (f"demo: {n} of {before} threads (1-minute load average {os.getloadavg()[0]:.1f} on "
               f"{os.cpu_count()} cores: threads on busy cores would wait; OMP_NUM_THREADS=N to choose)")
    finally:
        torch.set_num_threads(before)
