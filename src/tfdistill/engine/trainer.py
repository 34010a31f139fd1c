"""The one way to train: :func:`train` -- a config (one run), a config with ``seeds`` (one run per seed) or a list of
configs, trained as one packed group of K >= 1 runs (:class:`~.group.Group`).

:func:`build_group` is the step under it, for callers that drive a group themselves: the sweep's executors (a start
mode per run, a callback when a run diverges), the dry run, the benchmarks and tests (``group.fit()``, or
``group.train_epoch(e)`` and ``group.runs[i].train_step.step(x, y, idx)`` step by step). Building checks every run
directory before any is created or replaced, builds the data once and one frozen teacher per distinct ``teacher``
section, then each :class:`~.run.Run`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

from ..data import build_data
from ..errors import ConfigError, DivergenceError
from ..interrupts import graceful_stop, note_interrupt
from ..methods import method_uses
from ..rundir import RunDir, flat_keys
from ..runs import pack_key, run_path, seed_configs
from . import records
from .build import settle
from .distributed import cleanup_distributed, setup_distributed
from .group import Group
from .run import Run, RunResult

__all__ = ["train", "build_group"]


def train(cfg: Any, *, resume: bool = False, overwrite: bool = False,
          echo: Callable[[str], None] | None = None, accept_data_change: bool = False) -> Any:
    """Train, and return the result(s): a :class:`~.run.RunResult` (run directory and summary) per run.

    ``cfg``: one config (see :mod:`tfdistill.config`) -> its result; a config with ``seeds`` -> one run per seed as
    one packed group, their results in the order of ``seeds`` (under torchrun the seeds run one after another); a
    list of configs -> one packed group (they must share the ``data`` and ``engine`` sections and ``epochs``, see
    :func:`tfdistill.runs.pack_key`), their results in order. ``resume``: continue each run from its last.pt;
    ``overwrite``: replace existing run directories; ``accept_data_change``: resume on data other than those recorded
    in the run's fingerprint.json (refused otherwise). A run whose loss becomes NaN/inf stops alone; once the others
    have finished, a :class:`~tfdistill.errors.DivergenceError` names the runs that stopped."""
    try:
        with graceful_stop(only_if_default=True):  # a script's SIGTERM/SIGINT: a graceful stop (the CLI's are already)
            if isinstance(cfg, (list, tuple)):
                return _train_group(list(cfg), resume=resume, overwrite=overwrite, echo=echo,
                                    accept_data_change=accept_data_change)
            if getattr(cfg, "seeds", None):
                cfgs = seed_configs(cfg)
                if setup_distributed(cfg.engine.device).enabled:
                    return [_train_group([c], resume=resume, overwrite=overwrite, echo=echo,
                                    accept_data_change=accept_data_change)[0] for c in cfgs]
                return _train_group(cfgs, resume=resume, overwrite=overwrite, echo=echo,
                                    accept_data_change=accept_data_change)
            return _train_group([cfg], resume=resume, overwrite=overwrite, echo=echo,
                                    accept_data_change=accept_data_change)[0]
    finally:
        cleanup_distributed()  # only a process group that setup_distributed created (torchrun); no-op otherwise


def _train_group(cfgs: list[Any], *, resume: bool, overwrite: bool, echo: Callable[[str], None] | None,
                 accept_data_change: bool = False) -> list[RunResult]:
    out = build_group(cfgs, resume=resume, overwrite=overwrite, echo=echo,
                      accept_data_change=accept_data_change).fit()
    failed = [(c, r) for c, r in zip(cfgs, out) if isinstance(r, DivergenceError)]
    if failed:
        if len(cfgs) == 1:
            raise failed[0][1]
        rest = "" if len(failed) == len(cfgs) else "; the other runs ran to the end"
        raise DivergenceError(f"{len(failed)} of {len(cfgs)} runs stopped ({', '.join(str(c.name) for c, _ in failed)}"
                              f"): {failed[0][1]}{rest}")
    return [r for r in out if isinstance(r, RunResult)]


def _teacher_key(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return json.dumps(OmegaConf.to_container(cfg.teacher, resolve=True), sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------- building
def build_group(cfgs: Sequence[Any], *, modes: Sequence[tuple[bool, bool]] | None = None, resume: bool = False,
                overwrite: bool = False, echo: Callable[[str], None] | None = None,
                on_drop: Callable[[int, DivergenceError], None] | None = None,
                accept_data_change: bool = False) -> "Group":
    """One :class:`~.run.Run` per config, sharing the data and equal teachers. ``modes``: per config
    ``(resume, overwrite)`` (default: ``resume`` / ``overwrite`` for all). Every run directory is checked before any
    is created or (``--overwrite``) replaced, and only once every run was built: a refused run or bad input in one
    run costs no other run its directory. ``accept_data_change``: see :func:`train`."""
    with records.building_group():  # warnings shown from here on concern these runs
        return _build_group(cfgs, modes=modes, resume=resume, overwrite=overwrite, echo=echo, on_drop=on_drop,
                            accept=accept_data_change)


def _build_group(cfgs, *, modes, resume, overwrite, echo, on_drop, accept=False) -> "Group":
    cfgs = list(cfgs)
    modes = list(modes) if modes is not None else [(resume, overwrite)] * len(cfgs)
    data = None
    # each run's process, device and engine.* = auto resolved once, before the sections are compared and anything
    # is built (config.yaml, checkpoints and summary.json record the resolved values)
    settled = [settle(c) for c in cfgs]
    if len(cfgs) > 1:
        info, device = settled[0]
        keys = [pack_key(c) for c in cfgs]
        if len(set(keys)) != 1:
            a, b = json.loads(keys[0]), json.loads(next(k for k in keys if k != keys[0]))
            fa, fb = flat_keys(a), flat_keys(b)
            diff = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
            raise ConfigError(f"runs packed into one group must share the data and engine sections and epochs; "
                              f"these differ: {', '.join(diff[:6])}")
        dirs = [run_path(c) for c in cfgs]
        if len(set(dirs)) != len(dirs):
            raise ConfigError(f"runs packed into one group need distinct run directories: {[str(d) for d in dirs]}")
        if info.enabled:
            raise ConfigError("a packed group of several runs needs one process; under torchrun train one run per "
                              "command (or leave seeds/--pack out)")
        for c, (res, ovr) in zip(cfgs, modes):
            RunDir(run_path(c)).prepare(resume=res, overwrite=ovr, dry=True)
        first = cfgs[0]
        try:
            data = build_data(first.data, device, seed=int(first.seed), channels_last=bool(first.engine.channels_last),
                              paired=method_uses(first.method.name).paired_batches)
        except KeyboardInterrupt as exc:
            note_interrupt(exc, f"while building the data set {first.data.name!r} for {len(cfgs)} packed runs")
            raise
    runs: list[Run] = []
    teachers: dict[str, Any] = {}
    try:
        for i, (c, (res, ovr)) in enumerate(zip(cfgs, modes)):
            own = None if data is None else data if i == 0 else dataclasses.replace(
                data, train=data.train_loader_for(int(c.seed)))
            run = Run(c, settled=settled[i], resume=res, overwrite=ovr, echo=echo, data=own,
                      teacher=teachers.get(_teacher_key(c)), accept_data_change=accept)
            if run.teacher is not None:
                teachers.setdefault(_teacher_key(c), run.teacher)  # one frozen teacher per distinct teacher section
            runs.append(run)
        for run in runs:  # every run was built: bad input in any of them leaves no folder behind and costs no run
            run.open()
    except BaseException as exc:
        for run in runs:
            run.close()
            run.restore_replaced()
        for c in cfgs:  # a run that failed while being built held its directory already
            RunDir(run_path(c)).unlock()
        note_interrupt(exc, f"while building {'the run' if len(cfgs) == 1 else f'{len(cfgs)} packed runs'} "
                            f"({', '.join(str(run_path(c)) for c in cfgs[:4])})",
                       "nothing to keep; run the same command to start" if not any(m[0] for m in modes) else
                       "nothing was changed; --resume continues")
        raise
    return Group(runs, echo=echo, on_drop=on_drop)
