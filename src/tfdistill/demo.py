"""``tfdistill demo``: CE vs TFD on scikit-learn's bundled digits, offline, in under two minutes on 2 CPU cores."""

from __future__ import annotations

import time
from pathlib import Path

from .config import load_config
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
        print(f"\n== {method}: {cfg.model.name} on {cfg.data.name}, {cfg.epochs} epochs ==")
        results[method] = train(cfg).summary
    curves = plot_curves({m: [RunDir(base / m).read_metrics()] for m in results}, base / "curves.png",
                         title=f"tfdistill demo: {cfg.model.name} on digits, CE vs TFD (seed {cfg.seed})")
    lines = [
        "| method | best top-1 (epoch) | last top-1 | time |",
        "|---|---|---|---|",
        *(f"| {m} | {s['best_top1']:.2f}% ({s['best_epoch']}) | {s['last_top1']:.2f}% | {s['wall_seconds']:.0f}s |"
          for m, s in results.items()),
    ]
    note = ("One seed on a tiny dataset: a difference here is not evidence either way; use `tfdistill sweep` "
            "for mean +- std over seeds.")
    (base / "results.md").write_text("\n".join(lines) + "\n\n" + note + "\n")
    print("\n" + "\n".join(lines))
    print(f"\n{note}\ncurves: {curves}\nruns:   {base}")
    return {"dir": base, "results": results, "curves": curves}
