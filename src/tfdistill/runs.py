"""The rules about runs, each in one place: a run's name and folder, the seeds expansion, which runs may be packed
into one group, how a run folder (re)starts, and when a stored run may be resumed or extended.

:mod:`tfdistill.rundir` is the run folder's contract (file names, markers, locks, atomic writes, the config diff);
this module holds the decisions the engine, the sweep and the CLI take from it. It imports neither of them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .rundir import FAILED_MARKER, RESUME_FREE_KEYS, RunDir, config_diff, flat_keys, is_finished, is_resumable

__all__ = ["run_name", "run_path", "grid_run_name", "seed_configs", "PACK_FREE_KEYS", "pack_key", "StartMode",
           "START_MODES", "start_mode", "run_status", "EXTENDABLE_SCHEDULES", "resume_changes", "extension_problem"]


# ----------------------------------------------------------------------------------------------- names
def run_name(cfg: Any, seed: int | None = None) -> str:
    """The folder name of the run of ``cfg`` under ``cfg.out_dir``.

    Without ``seed``: ``cfg.name``, or ``<data>_<model>_<method>_s<seed>`` when it is empty. With ``seed`` (one run
    of ``cfg.seeds``): ``<name>_s<seed>``, or the default name for that seed."""
    if seed is None:
        return str(cfg.name) if cfg.name else _default_name(cfg, int(cfg.seed))
    return f"{cfg.name}_s{int(seed)}" if cfg.name else _default_name(cfg, int(seed))


def _default_name(cfg: Any, seed: int) -> str:
    return f"{cfg.data.name}_{cfg.model.name}_{str(cfg.method.name).replace('+', '-')}_s{seed}"


def run_path(cfg: Any, seed: int | None = None) -> Path:
    """``<out_dir>/<run_name>``: the run directory of ``cfg`` (of its run for ``seed``)."""
    return Path(cfg.out_dir) / run_name(cfg, seed)


def grid_run_name(model: str, method: str, variant: str, seed: int) -> str:
    """The name of a sweep grid's run: ``<model>_<method>[_<variant>]_s<seed>``, characters outside
    ``[A-Za-z0-9_.=-]`` replaced by ``-``."""
    parts = [model, method] + ([variant] if variant else []) + [f"s{seed}"]
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", "_".join(parts))


def seed_configs(cfg: Any) -> list[Any]:
    """One single-run config per seed of ``cfg.seeds``: ``seed`` set, ``seeds`` cleared, ``name`` per seed."""
    from omegaconf import OmegaConf

    seeds = [int(s) for s in cfg.seeds]
    if not seeds:
        raise ConfigError("seeds=[] is empty; give at least one seed, e.g. seeds=[0,1,2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} lists a seed twice")
    return [OmegaConf.merge(cfg, {"seed": s, "seeds": None, "name": run_name(cfg, s)}) for s in seeds]


# ----------------------------------------------------------------------------------------------- packing
PACK_FREE_KEYS = ("seed", "seeds", "name", "out_dir", "model", "method", "teacher", "optim", "schedule")
"""Top-level config keys in which the runs of one packed group may differ; everything else (``data``, ``engine``,
``epochs``) must be equal: the data is built once and the runs step in lock-step."""


def pack_key(cfg: Any) -> str:
    """Runs with equal keys can train as one packed group (see :data:`PACK_FREE_KEYS`)."""
    from omegaconf import OmegaConf

    from .methods import method_uses

    d = OmegaConf.to_container(cfg, resolve=True)
    for k in PACK_FREE_KEYS:
        d.pop(k, None)
    for k in ("progress", "tensorboard"):  # presentation only
        d.get("engine", {}).pop(k, None)
    # a method may ask the data layer for another batch layout (CS-KD: a same-class partner per sample)
    d["paired_batches"] = bool(method_uses(cfg.method.name).paired_batches)
    return json.dumps(d, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------- (re)starting
@dataclass
class StartMode:
    """How a run folder is (re)started: ``--resume`` from its last.pt, ``--overwrite`` of a folder that has no
    checkpoint yet, or new; ``what`` says it in words."""

    resume: bool = False
    overwrite: bool = False
    what: str = "new"

    @property
    def flags(self) -> list[str]:
        return ["--resume"] if self.resume else ["--overwrite"] if self.overwrite else []

    @property
    def name(self) -> str:
        """``new``, ``resume`` or ``overwrite`` (the mode of the hidden ``tfdistill _child`` command)."""
        return "resume" if self.resume else "overwrite" if self.overwrite else "new"


START_MODES = {"new": StartMode(), "resume": StartMode(resume=True), "overwrite": StartMode(overwrite=True)}


def start_mode(path: str | Path, epochs: int) -> StartMode:
    """How to (re)start the run in ``path`` (of ``epochs`` epochs): resume from last.pt, restart a folder without a
    checkpoint, or start fresh."""
    path = Path(path)
    if is_resumable(path):
        return StartMode(resume=True, what=f"resume after epoch {RunDir(path).epochs_done()}/{epochs}")
    if path.is_dir() and any(p.name != FAILED_MARKER for p in path.iterdir()):
        return StartMode(overwrite=True, what="restart (no checkpoint yet)")
    return StartMode()


def run_status(path: str | Path, epochs: int) -> str:
    """``finished``, ``failed``, or how the run would start (``new``, ``resume after epoch 3/240``, ``restart ...``)."""
    if is_finished(path):
        return "finished"
    if (Path(path) / FAILED_MARKER).is_file():
        return "failed"
    return start_mode(path, epochs).what


# ----------------------------------------------------------------------------------------------- resuming
EXTENDABLE_SCHEDULES = ("multistep", "constant")
"""Schedules whose learning rate over the epochs trained does not depend on ``epochs``: a run with one of them may
be extended (``epochs`` larger on resume)."""


_DEFAULTS: dict[str, Any] = {}


def schema_defaults() -> dict[str, Any]:
    """Every dotted key of the current config schema with its default value (``method.*`` holds only the name: a
    method's own parameters default per method)."""
    if not _DEFAULTS:
        from omegaconf import OmegaConf

        from .config import Config

        _DEFAULTS.update(flat_keys(OmegaConf.to_container(OmegaConf.structured(Config))))
    return _DEFAULTS


def keys_added_since(stored: dict, new: dict) -> set[str]:
    """Keys that ``new`` holds at their default and the (nested) config ``stored`` lacks: ``stored`` was written
    before those keys existed, and its run was trained as their default says (new keys default to the behaviour
    they replace; tests/test_golden_classification.py holds classification to that)."""
    fs, defaults = flat_keys(stored), schema_defaults()
    return {k for k, v in flat_keys(new).items() if k not in fs and k in defaults and v == defaults[k]}


def resume_changes(stored: dict, new: dict, *, planned: bool = False) -> list[str]:
    """Keys in which ``new`` differs from ``stored`` that forbid resuming: anything outside
    :data:`~tfdistill.rundir.RESUME_FREE_KEYS`, except an allowed extension (see :func:`extension_problem`).
    ``planned``: ``new`` is a command's config before the engine resolved its ``engine.* = auto`` settings, which
    then match any stored value (the engine compares the resolved values when it resumes). A key the stored config
    lacks (a run written before the key existed) matches when ``new`` holds its default: such a run was trained as
    the default says."""
    from omegaconf import OmegaConf

    from .config import PATH_KEYS

    stored = OmegaConf.to_container(OmegaConf.create(stored))  # a copy; paths of runs from before they were
    for key in PATH_KEYS:                                      # stored absolute: relative to this folder
        section, leaf = key.split(".")
        value = str((stored.get(section) or {}).get(leaf) or "")
        if value and not value.startswith("torchvision:"):
            stored[section][leaf] = os.path.abspath(os.path.expanduser(value))
    added = keys_added_since(stored, new)
    diff = config_diff(stored, new, ignore=RESUME_FREE_KEYS | added, auto_matches=planned)
    if "epochs" in diff and extension_problem(stored, new) is None:
        done = int(stored["epochs"])
        old_ms = [m for m in stored["schedule"].get("milestones") or [] if m <= done]
        new_ms = [m for m in new["schedule"].get("milestones") or [] if m <= done]
        diff = [k for k in diff if k != "epochs" and not (k == "schedule.milestones" and old_ms == new_ms)]
    return diff


def extension_problem(stored: dict, new: dict) -> str | None:
    """Why the run stored with ``stored`` cannot be extended to ``new['epochs']`` epochs, or None if it can."""
    old, epochs = int(stored["epochs"]), int(new["epochs"])
    sched = str(stored["schedule"]["name"])
    if epochs < old:
        return (f"epochs={epochs} is fewer than the run's {old}; a run is only ever extended (its best.pt/last.pt "
                f"are there to evaluate at any point)")
    if sched not in EXTENDABLE_SCHEDULES:
        return (f"its {sched} schedule is a function of epochs (the lr of epochs already trained would change), so "
                f"it cannot be extended from {old} to {epochs} epochs; train a new run with epochs={epochs}, or "
                f"fine-tune from its weights with model.init_checkpoint=<run>/last.pt")
    if float(stored["model"].get("dropblock_prob") or 0) > 0:
        return (f"its DropBlock ramp is a fraction of epochs, so it cannot be extended from {old} to {epochs} "
                f"epochs; train a new run with epochs={epochs}")
    return None
