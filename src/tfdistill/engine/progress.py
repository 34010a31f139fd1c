"""The per-epoch console line: at most :data:`WIDTH` columns, optional fields only where they fit.

Fields, in order of importance: epoch, lr, loss, train / test accuracy and the best so far, epoch time, ETA (always);
then images/s and the method's loss terms (e.g. ``tfd_depth`` / ``tfd_width``) where the line has room. Every
term is in ``metrics.jsonl`` (and TensorBoard) in any case, and ``train.log`` gets the terms that did not fit on a
line of their own.
"""

from __future__ import annotations

import math
from typing import Any

WIDTH = 100


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _test_text(test: dict[str, float], best_top1: float, best_epoch: int, metric: str = "top1") -> str:
    """This epoch's test figure (the task's primary ``metric``) and the best so far; an epoch without evaluation
    shows only the best (if any)."""
    best = f"best {best_top1:.2f}%@{best_epoch}" if best_epoch > 0 else "not evaluated"
    return f"test {test[metric]:.2f}% {best}" if metric in test else f"(no eval) {best}"


def epoch_line(epoch: int, epochs: int, lr: float, train: dict[str, Any], test: dict[str, float],
               best_top1: float, best_epoch: int, eta: float, width: int = WIDTH, *, who: str = "",
               speed: str | None = None, metric: str = "top1") -> tuple[str, str | None]:
    """``(line, terms_line)``: the console/log line (at most ``width`` columns for any realistic value, plus the
    ``who`` prefix that names the run inside a packed group) and, when the method's terms did not fit in it, a line
    with them for ``train.log`` (else None). ``speed`` replaces the run's own images/s (a packed group's)."""
    width += len(who)
    core = [f"{who}epoch {epoch:>3}/{epochs}", f"lr {lr:.3g}", f"loss {train['loss']:.4f}",
            f"train {train['train_acc']:.1f}%",
            _test_text(test, best_top1, best_epoch, metric),
            f"{sec:.1f}s" if (sec := train["epoch_seconds"]) < 100 else f"{sec:.0f}s", f"ETA {_hms(eta)}"]
    terms = {k: v for k, v in (train.get("terms") or {}).items() if k != "ce"}
    if speed is None and math.isfinite(train.get("images_per_sec", float("nan"))):
        speed = f"{train['images_per_sec']:.0f} img/s"
    optional = [speed] if speed else []
    term_text = " ".join(f"{k} {v:.3g}" for k, v in terms.items())
    fits = [ln for ln in ("  ".join(core + [term_text]), " ".join(core + [term_text])) if len(ln) <= width]
    if term_text and fits:
        line, term_text = fits[0], ""
    else:
        line = "  ".join(core) if len("  ".join(core)) <= width else " ".join(core)
    for extra in optional:
        if len(line) + 2 + len(extra) <= width:
            line = f"{line}  {extra}"
    return line, (f"    terms {term_text}" if term_text else None)
