"""A run's records besides its checkpoints: the warnings shown once, its TensorBoard scalars and ``summary.json``.

Warnings: the CLI shows each warning once in its own form (:func:`record_warning`); the engine writes it into the
``train.log`` of every run it concerns (the runs open now, and the runs of a group being built, which get it when
they open) and does not echo it again.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import torch

from .._version import __version__
from ..rundir import device_name, flat_keys, git_commit

SHOWN_WARNINGS: list[str] = []
"""Warnings the CLI has shown in its own form (once each) in this process: the engine writes them to the train.log of
the runs they concern and does not echo them again (a library user sees Python's warnings and the log lines)."""
OPEN_RUNS: "weakref.WeakSet[Any]" = weakref.WeakSet()
"""The runs whose train.log takes a warning now (each has ``log_warning(msg)``)."""
_GROUP_MARK: list[int] = []
"""Where in SHOWN_WARNINGS the group being built began (its data is built before its runs)."""


def record_warning(msg: str) -> None:
    """The CLI has shown warning ``msg``: into the train.log of every run open now (later runs being built get it
    when they open)."""
    if msg in SHOWN_WARNINGS:
        return
    SHOWN_WARNINGS.append(msg)
    for run in list(OPEN_RUNS):
        run.log_warning(msg)


def warning_text(line: str) -> str | None:
    """The warning in a log line (``warning: ...`` / ``note: ...``), or None."""
    for prefix in ("warning: ", "note: "):
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


def warnings_mark() -> int:
    """Where the warnings that concern a run being built now begin (see :func:`building_group`)."""
    return _GROUP_MARK[-1] if _GROUP_MARK else len(SHOWN_WARNINGS)


def warnings_since(mark: int) -> list[str]:
    return SHOWN_WARNINGS[mark:]


class building_group:
    """While a group is built (its data first, then its runs), the warnings shown concern all of its runs."""

    def __enter__(self) -> "building_group":
        _GROUP_MARK.append(len(SHOWN_WARNINGS))
        return self

    def __exit__(self, *exc) -> None:
        _GROUP_MARK.pop()


def open_tensorboard(enabled: bool, path) -> Any:
    """A TensorBoard SummaryWriter in ``path`` (None when disabled or tensorboard is not installed)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(path))


def tb_write(tb: Any, row: dict) -> None:
    """A metrics row's numbers as TensorBoard scalars at step ``row["epoch"]``."""
    if tb is None:
        return
    step = row["epoch"]
    for k, v in flat_keys(row).items():
        if k != "epoch" and isinstance(v, (int, float)) and v is not None:
            tb.add_scalar(k.replace(".", "/"), v, step)


def _figures(run: Any, last_eval: dict) -> dict:
    """The task's figures (:meth:`tfdistill.tasks.Task.summary`) with ``best_epoch`` after ``best_<primary>``."""
    figures, out = run.task.summary(run.best_top1, last_eval), {}
    for k, v in figures.items():
        out[k] = v
        if k == f"best_{run.task.primary_metric}":
            out["best_epoch"] = run.best_epoch
    return out


def summary(run: Any, last_eval: dict, rows: list[dict]) -> dict:
    """``summary.json`` of ``run`` (a :class:`~.run.Run`): its figures and provenance. ``rows``: its metrics rows."""
    speeds = [r["images_per_sec"] for r in rows
              if "stage" not in r and isinstance(r.get("images_per_sec"), (int, float))]
    cfg = run.cfg
    return {
        "status": "finished",
        "name": run.name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "data": run.data.describe(),  # the resolution as decided (data.image_size=0: by the dataset)
        "seed": int(cfg.seed),
        "epochs": int(cfg.epochs),
        **_figures(run, last_eval),  # best_top1, best_epoch, last_top1, ... (the task's, tfdistill.tasks)
        "params": sum(p.numel() for p in run.student.parameters()),
        "wall_seconds": time.time() - run.started,
        "images_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "device": device_name(run.device),
        "world_size": run.info.world_size,
        "precision": run.precision,
        "channels_last": bool(cfg.engine.channels_last),
        "cuda_graphs": bool(cfg.engine.cuda_graphs),
        "step_mode": run.step_mode,
        "torch": str(torch.__version__),
        "tfdistill": __version__,
        "git_commit": git_commit(),
        "resumed_from_epoch": run.resumed_from,
        "method_info": run.method.describe(),
    }
