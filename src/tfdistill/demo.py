"""``tfdistill demo``: CE vs TFD on scikit-learn's bundled digits, offline, in a few minutes on 2 CPU cores.

Its numbers are one seed and one machine's: CPU math libraries (oneDNN, MKL/OpenBLAS) choose their kernels by the
processor's instruction set and the thread count, so the same seed rounds differently on another machine and the
two trainings drift apart (on a 360-image test set one image is 0.28 points). Pinning the thread count or
``torch.use_deterministic_algorithms`` makes a run repeatable on one machine (it already is on the CPU) but not
equal across processors, so the demo does neither and says so instead.
"""

from __future__ import annotations

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
    for method in ("ce", "tfd"):
        overrides = [f"method.name={method}", f"out_dir={base}", f"name={method}", *(extra or [])]
        if epochs is not None:
            overrides.append(f"epochs={epochs}")
        if model:
            overrides.append(f"model.name={model}")
        cfg = load_config("demo", overrides)
        print(f"\n== {method}: {cfg.model.name} on {cfg.data.name}, {plural(int(cfg.epochs), 'epoch')} ==")
        results[method] = train(cfg).summary
    curves = plot_curves({m: [RunDir(base / m).read_metrics()] for m in results}, base / "curves.png",
                         title=f"tfdistill demo: {cfg.model.name} on digits, CE vs TFD (seed {cfg.seed})")
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
