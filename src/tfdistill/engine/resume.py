"""Resuming and extending runs: ``tfdistill train --resume RUN_DIR|RUN_DIR/last.pt [key=value ...]``.

A run directory holds everything needed to continue it: ``config.yaml`` (the resolved config) and ``last.pt``.
So ``--resume`` takes the run directory (or its ``last.pt``) and nothing else; the command need not be retyped.
The retyped form (``tfdistill train RECIPE key=value ... --resume``) keeps working. Either way ``--resume`` never
starts fresh work: with nothing to resume it is an error.

Overrides given with ``--resume`` may only touch the keys that do not change the computation
(:data:`~tfdistill.rundir.RESUME_FREE_KEYS`, e.g. ``engine.device``, ``data.root``), plus one explicit change:

**Extending a run** (``epochs`` larger than stored). Allowed when the learning rate of the epochs already trained
does not depend on ``epochs``: the ``multistep`` and ``constant`` schedules (milestones are absolute epochs, so the
extra epochs continue at the learning rate in force after the last milestone; milestones beyond the trained epochs
may be added or moved, e.g. ``schedule.milestones=[150,180,210,270]``), and no DropBlock (its ramp is a fraction of
``epochs``). A ``cosine`` schedule is refused: its whole curve is a function of ``epochs``, so a cosine run over 240
epochs is not the first 240 epochs of a 300-epoch run; the message names the alternatives (a new run, or
``model.init_checkpoint=RUN/last.pt`` to fine-tune from its weights). An extended run's previous ``summary.json`` is
kept as ``summary.e<old epochs>.json`` (so sweeps and reports see the run as unfinished until the new end), its
``config.yaml`` is rewritten with the new ``epochs`` and ``train.log`` records the extension.

**The data** are checked against the run's ``fingerprint.json`` (:mod:`tfdistill.fingerprint`): a copy of the run and
of its data moved to another folder (or machine) resumes with ``data.root=<the copy>``; other data -- other images
under the same class names, another subset -- are refused with the difference in one line and nothing changed, unless
``--accept-data-change`` (``train(..., accept_data_change=True)``), which continues and records the change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from ..errors import CheckpointError, ConfigError, RunDirError
from ..rundir import FAILED_MARKER, RESUME_FREE_KEYS, RunDir, flat_keys
from ..runs import extension_problem, resume_changes, run_path, seed_configs

def run_dir_of(target: str | Path) -> RunDir:
    """The run directory named by ``--resume TARGET`` (the directory itself or its ``last.pt``), checked to hold
    something to resume."""
    p = Path(target)
    if p.suffix == ".pt" or p.is_file():
        if p.name != "last.pt":
            raise CheckpointError(f"cannot resume from {p}: only a run's last.pt holds the optimizer state; pass "
                                  f"the run directory ({p.parent}) or its last.pt")
        p = p.parent
    if not p.exists():
        raise RunDirError(f"nothing to resume: {p} does not exist")
    if not p.is_dir():
        raise RunDirError(f"nothing to resume: {p} is not a run directory")
    rd = RunDir(p)
    if not rd.config.is_file():
        raise RunDirError(f"nothing to resume: {p} is not a tfdistill run directory (no config.yaml)")
    if not rd.last.is_file():
        rd.check_not_in_use()  # another process in the run's first epoch: "in use", not "nothing to resume"
        raise RunDirError(f"nothing to resume in {p}: it has no last.pt (it stopped before its first checkpoint; "
                          f"see {rd.log.name}); start it again with `tfdistill train {rd.config} --overwrite`")
    return rd


def looks_like_run_target(value: str) -> bool:
    """Whether ``--resume VALUE`` names a run (directory or checkpoint) rather than a recipe or an override."""
    if "=" in value:
        return False
    p = Path(value)
    if p.is_dir() or p.suffix == ".pt":
        return True
    if p.suffix in (".yaml", ".yml"):
        return False
    from ..recipes import resolve_recipe

    return not resolve_recipe(value).is_file()


def _describe(changes: list[str], stored: dict, new: dict) -> str:

    fa, fb = flat_keys(stored), flat_keys(new)
    return ", ".join(f"{k} ({fa.get(k)!r} -> {fb.get(k)!r})" for k in changes[:8])


def check_resume(rd: RunDir, cfg: Any) -> int | None:
    """Refuse (with the diff) ``cfg`` for resuming ``rd`` unless only resume-free keys changed or the run is
    extended. Returns the stored epochs when ``cfg`` extends the run, else None."""
    from ..config import load_config, to_dict

    stored = to_dict(load_config(rd.config))
    new = to_dict(cfg)
    changes = resume_changes(stored, new, planned=True)
    if changes:
        why = ""
        if "epochs" in changes:
            why = f"; {extension_problem(stored, new)}"
        free = ", ".join(sorted(RESUME_FREE_KEYS - {"name", "out_dir"}))
        raise ConfigError(f"cannot resume {rd.path} with {_describe(changes, stored, new)}{why}. On resume only "
                          f"these may change: {free}, and epochs (larger, multistep/constant schedules: extends "
                          f"the run); for other changes start a new run (name=...)")
    return int(stored["epochs"]) if int(new["epochs"]) > int(stored["epochs"]) else None


def resume_config(target: str | Path, overrides: list[str]) -> Any:
    """The config to resume the run ``target`` (a run directory or its last.pt) with: its stored ``config.yaml``
    plus ``overrides`` (resume-free keys, or a larger ``epochs``), placed where the run directory is now."""
    from ..config import load_config

    rd = run_dir_of(target)
    for o in overrides:
        if o.split("=", 1)[0].strip() in ("name", "out_dir", "seeds"):
            raise ConfigError(f"{o!r} cannot be given with --resume {target}: the run continues in {rd.path}")
    cfg = load_config(rd.config, overrides)
    cfg.out_dir = str(rd.path.resolve().parent)
    cfg.name = rd.path.resolve().name
    return cfg


def prepare_resume(cfg: Any, dry: bool = False, accept_data_change: bool = False) -> list[RunDir]:
    """Check that every run of ``cfg`` (one, or one per seed of ``cfg.seeds``) has something to resume and that
    ``cfg`` may resume it; unless ``dry``, mark an extension (module docs) -- once its data are checked against its
    fingerprint (the run checks them again when it is built; an extension is marked only on the right data, or
    with ``accept_data_change``). Returns the run directories."""
    cfgs = seed_configs(cfg) if getattr(cfg, "seeds", None) else [cfg]  # one run directory per seed
    dirs = []
    for c in cfgs:
        rd = RunDir(run_path(c))
        if not rd.last.is_file():
            if not rd.path.exists():
                if len(cfgs) > 1:  # a run of a group stopped before its first checkpoint (its folder removed)
                    continue       # starts again beside the others; one of them at least must be there
                raise RunDirError(f"nothing to resume: {rd.path} does not exist (drop --resume to start it)")
            run_dir_of(rd.path)  # raises the reason
        dirs.append((rd, c))
    if not dirs:
        raise RunDirError(f"nothing to resume: none of {', '.join(str(Path(c.out_dir) / c.name) for c in cfgs[:4])} "
                          f"exists (drop --resume to start them)")
    extended = [(rd, c, check_resume(rd, c)) for rd, c in dirs]
    if not dry and int(os.environ.get("RANK", "0")) == 0:
        if any(old is not None for _, _, old in extended):
            from ..data import load_source
            from ..fingerprint import check_data

            for rd, c, old in extended:
                if old is not None:
                    check_data(rd.path, load_source(c.data).identity, accept_data_change)
        for rd, c, old in extended:
            (rd.path / FAILED_MARKER).unlink(missing_ok=True)  # it is being continued: no longer stopped for good
            if old is not None:
                mark_extension(rd, c, old)
    return [rd for rd, _, _ in extended]


def mark_extension(rd: RunDir, cfg: Any, old: int) -> None:
    from ..config import to_yaml

    if rd.summary.is_file():
        os.replace(rd.summary, rd.path / f"summary.e{old}.json")
    rd.write_text_atomic(rd.config, to_yaml(cfg))
    sched = cfg.schedule
    lr_note = ("constant lr" if sched.name == "constant" else
               f"multistep milestones {list(sched.milestones)}")
    rd.log_line(f"extending {rd.path} from {old} to {int(cfg.epochs)} epochs ({lr_note}; epochs {old + 1}.."
                f"{int(cfg.epochs)} continue from last.pt)")
