"""What a sweep prints: progress lines with an ETA, one-line errors, and the ``--status`` table."""

from __future__ import annotations

import math
from typing import Callable, Iterable


def hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def pct(x) -> str:
    return f"{x:.2f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "?"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class Progress:
    """``[i/n]`` tags and the ``3/8 finished, 0 failed, ETA 0:12:00`` line of a running sweep."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = max(1, slots)
        self.total = 0
        self.order: dict[str, int] = {}
        self.walls: list[float] = []

    def tag(self, name: str) -> str:
        return f"[{self.order.get(name, 0):>{len(str(self.total))}}/{self.total}]"

    def add_wall(self, wall) -> None:
        if isinstance(wall, (int, float)):
            self.walls.append(float(wall))

    def line(self, finished: int, failed: int) -> str:
        left = self.total - finished - failed
        eta = None
        if self.walls and left > 0:
            eta = sum(self.walls) / len(self.walls) * math.ceil(left / max(1, min(self.slots, left)))
        return f"{finished}/{self.total} finished, {failed} failed, ETA {hms(eta if left else 0)}"


STATUS_ORDER = ("done", "failed", "running", "queued", "interrupted", "pending")


def print_status(name: str, sweep_dir, rows: Iterable[tuple[str, str, str, str]],
                 echo: Callable[[str], None] = print) -> dict[str, int]:
    """The ``--status`` table: one line per run ``(name, label, status, detail)``, then the counts."""
    rows = list(rows)
    counts: dict[str, int] = {}
    width = max((len(r[0]) for r in rows), default=0)
    lwidth = max((len(r[1]) for r in rows), default=0)
    echo(f"sweep {name}: {len(rows)} runs in {sweep_dir}")
    for run, label, status, detail in rows:
        counts[status] = counts.get(status, 0) + 1
        echo(f"  {run:<{width}}  {label:<{lwidth}}  {status:<11}" + (f"  {detail}" if detail else ""))
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    echo(f"sweep {name}: " + ", ".join(f"{counts[s]} {s}" for s in order))
    return counts
