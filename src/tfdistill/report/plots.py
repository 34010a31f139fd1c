"""Training-curve plots (matplotlib, Agg backend: works without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    e, v = zip(*pts)
    return np.asarray(e, dtype=float), np.asarray(v, dtype=float)


MARKERS_UP_TO = 30
"""Curves with at most this many epochs get a marker at every point (a 1-epoch run is a single visible dot)."""


def plot_curves(groups: dict[str, Sequence[list[dict]]], path: str | Path, *, title: str = "",
                metric: str = "top1") -> Path:
    """Test ``metric`` (the rows' ``test_<metric>``: top-1 by default) and training loss per epoch; each label maps
    to one or more runs' metrics rows.

    Several runs under one label are drawn as their mean with a +-1 std band (epochs common to all runs).
    """
    fig = curves_figure(groups, title=title, metric=metric)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_figure(groups: dict[str, Sequence[list[dict]]], *, title: str = "", metric: str = "top1") -> "plt.Figure":
    """The figure :func:`plot_curves` saves (two axes: test top-1, training loss)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, runs in groups.items():
        for ax, key in zip(axes, (f"test_{metric}", "loss")):
            series = [_series(r, key) for r in runs]
            series = [s for s in series if len(s[0])]
            if not series:
                continue
            n = min(len(s[0]) for s in series)
            epochs = series[0][0][:n]
            vals = np.stack([s[1][:n] for s in series])
            mean = vals.mean(0)
            marker = "o" if n <= MARKERS_UP_TO else None
            (line,) = ax.plot(epochs, mean, marker=marker, markersize=4,
                              label=f"{label} (n={len(series)})" if len(series) > 1 else label)
            if len(series) > 1:
                std = vals.std(0, ddof=1)
                if n == 1:
                    ax.errorbar(epochs, mean, yerr=std, fmt="none", ecolor=line.get_color(), capsize=3)
                else:
                    ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes[0].set_ylabel("test top-1 (%)" if metric == "top1" else f"test {metric}")
    axes[1].set_ylabel("training loss (all terms)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs, not 0.96 ... 1.04 around a single one
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_gains(bars: Sequence[dict], path: str | Path, *, title: str = "",
               ylabel: str = "gain over CE (top-1 %)") -> Path:
    """Grouped bar chart of gains: one group of bars per label (method), one bar per student.

    ``bars``: dicts with ``label``, ``student``, ``gain`` (None = no bar), ``se`` (error bar; None = none) and
    optionally ``paper`` (the paper's gain, drawn as a black x).
    """
    labels = list(dict.fromkeys(b["label"] for b in bars))
    students = list(dict.fromkeys(b["student"] for b in bars))
    width = 0.8 / max(1, len(students))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(labels) * max(1, len(students)) ** 0.5), 3.8))
    paper_drawn = False
    for j, student in enumerate(students):
        xs, ys, errs, px, py = [], [], [], [], []
        for i, label in enumerate(labels):
            b = next((b for b in bars if b["label"] == label and b["student"] == student), None)
            if b is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            if b.get("gain") is not None:
                xs.append(x)
                ys.append(b["gain"])
                errs.append(b["se"] if b.get("se") is not None else float("nan"))  # nan: no error bar
            if b.get("paper") is not None:
                px.append(x)
                py.append(b["paper"])
        ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=student)
        if px:
            ax.scatter(px, py, marker="x", color="black", zorder=3, label=None if paper_drawn else "paper")
            paper_drawn = True
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
