"""Training-curve plots (matplotlib, Agg backend: works without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    e, v = zip(*pts)
    return np.asarray(e, dtype=float), np.asarray(v, dtype=float)


def plot_curves(groups: dict[str, Sequence[list[dict]]], path: str | Path, *, title: str = "") -> Path:
    """Test top-1 and training loss per epoch; each label maps to one or more runs' metrics rows.

    Several runs under one label are drawn as their mean with a +-1 std band (epochs common to all runs).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, runs in groups.items():
        for ax, key in zip(axes, ("test_top1", "loss")):
            series = [_series(r, key) for r in runs]
            series = [s for s in series if len(s[0])]
            if not series:
                continue
            n = min(len(s[0]) for s in series)
            epochs = series[0][0][:n]
            vals = np.stack([s[1][:n] for s in series])
            mean = vals.mean(0)
            (line,) = ax.plot(epochs, mean, label=f"{label} (n={len(series)})" if len(series) > 1 else label)
            if len(series) > 1:
                std = vals.std(0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes[0].set_ylabel("test top-1 (%)")
    axes[1].set_ylabel("training loss (all terms)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
