"""The training loop of a group of K >= 1 independent runs (K = 1 is a plain run), packed into one process.

:func:`train` builds a :class:`Group` (:func:`build_group`): one :class:`~.loop.Run` per config -- its own model,
method, optimizer, schedule, GradScaler, random streams, data order, run directory, checkpoints and resume -- over
data built once (each run gets its own training loader over the shared device-resident tensors, ordered and augmented
by its own seed exactly as when trained alone) and one frozen teacher per distinct ``teacher`` section.
:meth:`Group.fit` then runs, in lock-step, the pre-stages of the methods that have them (FitNets hint, AB, FT) and the
epochs, each step of all runs through one :class:`~.graphs.GraphRunner`: on the CPU the runs step one after another
(each with its own global RNG state swapped in, so every run is bit-identical to its separate training); on CUDA with
graphs the K steps replay from one graph, one stream per run. After each epoch every run evaluates, writes its metrics
row and checkpoints; at the end each writes its ``summary.json``.

Runs in a group may differ in anything that keeps the batch fixed -- seed, method, loss weights, architecture,
optimizer, schedule, teacher -- but share the ``data`` and ``engine`` sections and ``epochs`` (:func:`pack_key`). A run
whose loss becomes NaN/inf stops alone (its last good checkpoint stays, the reason goes to its ``train.log``) while the
others go on. Under ``torchrun`` (DDP) a group holds one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import plural
from ..data import build_data
from ..errors import ConfigError, DivergenceError
from ..interrupts import graceful_stop
from .graphs import GraphRunner
from .distributed import all_reduce_sum, cleanup_distributed, setup_distributed
from .loop import Run, RunResult, default_run_name, note_interrupt, resolve_device
from ..methods import method_uses
from ..rundir import RunDir, device_name, flat_keys
from .auto import apply_engine_settings

__all__ = ["Group", "Trainer", "build_group", "train", "train_group", "pack_key", "seed_configs",
           "run_name_for_seed", "PACK_FREE_KEYS"]

PACK_FREE_KEYS = ("seed", "seeds", "name", "out_dir", "model", "method", "teacher", "optim", "schedule")
"""Top-level config keys in which the runs of one packed group may differ; everything else (``data``, ``engine``,
``epochs``) must be equal: the data is built once and the runs step in lock-step."""


# ----------------------------------------------------------------------------------------------- configs
def pack_key(cfg: Any) -> str:
    """Runs with equal keys can train as one packed group (see :data:`PACK_FREE_KEYS`)."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True)
    for k in PACK_FREE_KEYS:
        d.pop(k, None)
    for k in ("progress", "tensorboard"):  # presentation only
        d.get("engine", {}).pop(k, None)
    # a method may ask the data layer for another batch layout (CS-KD: a same-class partner per sample)
    d["paired_batches"] = bool(method_uses(cfg.method.name).paired_batches)
    return json.dumps(d, sort_keys=True, default=str)


def run_name_for_seed(cfg: Any, seed: int) -> str:
    """``<name>_s<seed>`` when ``cfg.name`` is set, else the single-seed default name for ``seed``."""
    return f"{cfg.name}_s{int(seed)}" if cfg.name else default_run_name(cfg, int(seed))


def seed_configs(cfg: Any) -> list[Any]:
    """One single-run config per seed of ``cfg.seeds``: ``seed`` set, ``seeds`` cleared, ``name`` per seed."""
    from omegaconf import OmegaConf

    seeds = [int(s) for s in cfg.seeds]
    if not seeds:
        raise ConfigError("seeds=[] is empty; give at least one seed, e.g. seeds=[0,1,2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} lists a seed twice")
    return [OmegaConf.merge(cfg, {"seed": s, "seeds": None, "name": run_name_for_seed(cfg, s)}) for s in seeds]


def _run_dir(cfg: Any) -> Path:
    return Path(cfg.out_dir) / (cfg.name or default_run_name(cfg))


def _teacher_key(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return json.dumps(OmegaConf.to_container(cfg.teacher, resolve=True), sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------- building
def build_group(cfgs: Sequence[Any], *, modes: Sequence[tuple[bool, bool]] | None = None, resume: bool = False,
                overwrite: bool = False, echo: Callable[[str], None] | None = None,
                on_drop: Callable[[int, DivergenceError], None] | None = None) -> "Group":
    """One :class:`~.loop.Run` per config, sharing the data and equal teachers. ``modes``: per config
    ``(resume, overwrite)`` (default: ``resume`` / ``overwrite`` for all). Every run directory is checked before any
    is created or (``--overwrite``) replaced, and only once every run was built: a refused run or bad input in one
    run costs no other run its directory."""
    from . import loop

    loop._GROUP_MARK.append(len(loop.SHOWN_WARNINGS))  # warnings shown from here on concern these runs
    try:
        return _build_group(cfgs, modes=modes, resume=resume, overwrite=overwrite, echo=echo, on_drop=on_drop)
    finally:
        loop._GROUP_MARK.pop()


def _build_group(cfgs, *, modes, resume, overwrite, echo, on_drop) -> "Group":
    cfgs = list(cfgs)
    modes = list(modes) if modes is not None else [(resume, overwrite)] * len(cfgs)
    data = None
    if len(cfgs) > 1:
        device = resolve_device(cfgs[0].engine.device)
        for c in cfgs:  # engine.* = auto resolved before the sections are compared and the data is built
            apply_engine_settings(c, device)
        keys = [pack_key(c) for c in cfgs]
        if len(set(keys)) != 1:
            a, b = json.loads(keys[0]), json.loads(next(k for k in keys if k != keys[0]))
            fa, fb = flat_keys(a), flat_keys(b)
            diff = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
            raise ConfigError(f"runs packed into one group must share the data and engine sections and epochs; "
                              f"these differ: {', '.join(diff[:6])}")
        dirs = [_run_dir(c) for c in cfgs]
        if len(set(dirs)) != len(dirs):
            raise ConfigError(f"runs packed into one group need distinct run directories: {[str(d) for d in dirs]}")
        if setup_distributed(cfgs[0].engine.device).enabled:
            raise ConfigError("a packed group of several runs needs one process; under torchrun train one run per "
                              "command (or leave seeds/--pack out)")
        for c, (res, ovr) in zip(cfgs, modes):
            RunDir(_run_dir(c)).prepare(resume=res, overwrite=ovr, dry=True)
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
            run = Run(c, resume=res, overwrite=ovr, echo=echo, data=own, teacher=teachers.get(_teacher_key(c)),
                      defer_open=True)
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
            RunDir(_run_dir(c)).unlock()
        note_interrupt(exc, f"while building {'the run' if len(cfgs) == 1 else f'{len(cfgs)} packed runs'} "
                            f"({', '.join(str(_run_dir(c)) for c in cfgs[:4])})",
                       "nothing to keep; run the same command to start" if not any(m[0] for m in modes) else
                       "nothing was changed; --resume continues")
        raise
    return Group(runs, echo=echo, on_drop=on_drop)


# ----------------------------------------------------------------------------------------------- the loop
class _Sums:
    """A run's on-device sums over an epoch (no host sync until :meth:`result`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.correct = torch.zeros((), device=device, dtype=torch.float64)
        self.bad = torch.zeros((), device=device, dtype=torch.bool)
        self.seen = 0

    @torch.no_grad()
    def add(self, loss: Tensor, logits: Tensor, terms: dict[str, Tensor], y: Tensor) -> None:
        n = y.shape[0]
        self.bad |= ~torch.isfinite(loss)
        self.correct += (logits.argmax(1) == y).sum()
        for k, v in (("loss", loss), *terms.items()):
            acc = self.sums.get(k)
            self.sums[k] = v.detach().double() * n if acc is None else acc + v.detach().double() * n
        self.seen += n

    def bad_terms(self) -> list[str]:
        return [k for k, v in self.sums.items() if k != "loss" and not math.isfinite(float(v))]

    def result(self, run: Run, seconds: float) -> dict | None:
        """The epoch's means (all-reduced over DDP ranks), or None if the loss became NaN/inf."""
        keys = list(self.sums)
        packed = torch.stack([self.sums[k] for k in keys] + [
            self.correct, torch.tensor(float(self.seen), device=self.device, dtype=torch.float64), self.bad.double()])
        all_reduce_sum(packed, run.info)
        vals = packed.tolist()
        count = max(vals[-2], 1.0)
        if vals[-1] > 0 or not all(math.isfinite(v) for v in vals[:-1]):
            self.sums = dict(zip(keys, packed))
            return None
        return {"loss": vals[0] / count, "terms": {k: v / count for k, v in zip(keys[1:], vals[1:len(keys)])},
                "train_acc": 100.0 * vals[len(keys)] / count, "epoch_seconds": seconds,
                "images_per_sec": count / seconds if seconds > 0 else float("nan")}


@dataclasses.dataclass
class _Lane:
    """One run in a team: which run, the step it trains with (main stage or a pre-stage) and its schedule."""

    i: int
    run: Run
    step: Any
    sched: Any = None


class _Team:
    """The runs that step together, with their one :class:`GraphRunner`."""

    def __init__(self, lanes: list[_Lane], packed: bool) -> None:
        self.lanes = lanes
        scopes = [(lambda cuda, r=ln.run: r.own_rng(cuda)) for ln in lanes] if packed else None
        self.runner = GraphRunner([ln.step for ln in lanes], scopes)

    def drop(self, lane: _Lane) -> None:
        k = self.lanes.index(lane)
        self.lanes.pop(k)
        self.runner.drop(k)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(ln.i for ln in self.lanes)


class Group:
    """K >= 1 runs trained in lock-step by one loop and one step runner (see the module docs)."""

    def __init__(self, runs: list[Run], *, echo: Callable[[str], None] | None = None,
                 on_drop: Callable[[int, DivergenceError], None] | None = None) -> None:
        """``on_drop(i, error)`` is called the moment run ``i`` stops because its loss diverged (the others go on)."""
        self.runs = list(runs)
        self.K = len(self.runs)
        self.packed = self.K > 1
        self.echo = echo if echo is not None else (lambda s: tqdm.write(s, file=sys.stdout))
        self.on_drop = on_drop
        self.results: dict[int, RunResult | DivergenceError] = {}
        self.device = self.runs[0].device
        self.info = self.runs[0].info
        self._main: _Team | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def names(self) -> list[str]:
        return [r.run.path.name for r in self.runs]

    def _scope(self, run: Run, team: _Team | None = None):
        if not self.packed:
            return contextlib.nullcontext()
        return run.own_rng(cuda=not (team is not None and team.runner.graphs))

    def _active(self) -> list[int]:
        return [i for i in range(self.K) if i not in self.results]

    def _drop(self, team: _Team, lane: _Lane, err: DivergenceError) -> None:
        team.drop(lane)
        if self._main is not None and self._main is not team and lane in self._main.lanes:
            self._main.drop(lane)
        self.results[lane.i] = err
        lane.run.stop(err)
        if self.packed:
            self.echo(f"note: {lane.run.run.path.name} stopped (loss NaN/inf); the other runs of its group go on")
        if self.on_drop is not None:
            self.on_drop(lane.i, err)

    # ------------------------------------------------------------------ one epoch of a team
    def _epoch(self, team: _Team, where: str, desc: str) -> dict[int, dict]:
        """One epoch of every run of ``team`` (main stage or a pre-stage): steps in lock-step, on-device sums, a
        NaN/inf check every half second (per run, a diverged run is dropped at once) and at the end."""
        lanes = list(team.lanes)
        iters = {ln.i: iter(ln.run.data.train) for ln in lanes}
        sums = {ln.i: _Sums(self.device) for ln in lanes}
        total = min(ln.run.steps_per_epoch for ln in lanes)
        first = lanes[0].run
        t0 = shown = time.time()
        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not first.show_bars,
                   file=sys.stdout)
        for step in range(total):
            batches = [next(iters[ln.i], None) for ln in team.lanes]
            if any(b is None for b in batches):
                break
            for ln in team.lanes:
                if ln.sched is not None:
                    ln.sched.apply()
            outs = team.runner.step(batches)
            for ln, (loss, logits, terms), (_, y, _) in zip(team.lanes, outs, batches):
                if ln.sched is not None:
                    ln.sched.step()
                sums[ln.i].add(loss, logits, terms, y)
            bar.update(1)
            now = time.time()
            if now - shown > 0.5 or step == total - 1:
                shown = now
                if not self.info.enabled:  # under DDP: checked collectively after the epoch
                    for ln in [ln for ln in team.lanes if bool(sums[ln.i].bad)]:
                        self._drop(team, ln, ln.run.diverged(where, sums[ln.i].bad_terms()))
                if not team.lanes:
                    break
                if len(team.lanes) == 1:
                    s = sums[team.lanes[0].i]
                    bar.set_postfix(loss=f"{s.sums['loss'].item() / max(s.seen, 1):.3f}",
                                    acc=f"{100 * s.correct.item() / max(s.seen, 1):.1f}")
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.time() - t0
        out: dict[int, dict] = {}
        for ln in list(team.lanes):
            res = sums[ln.i].result(ln.run, seconds)
            if res is None:
                self._drop(team, ln, ln.run.diverged(where, sums[ln.i].bad_terms()))
                continue
            if self.packed:
                res.update(group_images_per_sec=len(lanes) * res["images_per_sec"], packed=len(lanes))
            out[ln.i] = res
        return out

    # ------------------------------------------------------------------ fit
    def fit(self) -> list[RunResult | DivergenceError]:
        """Train the group; one entry per run, in order: its result, or the :class:`DivergenceError` that stopped it."""
        try:
            return self._fit()
        except BaseException as exc:
            lines = [line for i in self._active() if (line := self.runs[i].stop(exc))]
            if lines:  # the one line the CLI prints: why the run stopped and what now (also in each train.log)
                line = lines[0] if len(lines) == 1 else " | ".join(lines)
                if isinstance(exc, KeyboardInterrupt):
                    exc.args = (line,)
                with contextlib.suppress(AttributeError, TypeError):
                    exc.tfd_stop_line = line
            raise

    def _fit(self) -> list[RunResult | DivergenceError]:
        for i, run in enumerate(self.runs):
            done = run.finished_result()
            if done is not None:
                self.results[i] = done
        with_whom = f", packed with {self.K - 1} other run(s) ({', '.join(self.names)})" if self.packed else ""
        for i in self._active():
            run, cfg = self.runs[i], self.runs[i].cfg
            if run.resumed_from is None:
                if run.info.is_main:
                    run._log(f"run {run.run.path}: {cfg.model.name} / {cfg.method.name} on {cfg.data.name} "
                             f"({run.data.num_train} train images, {run.num_classes} classes), "
                             f"{plural(int(cfg.epochs), 'epoch')}, device {device_name(run.device)}, "
                             f"world size {run.info.world_size}{with_whom}")
                    for line in [*run.data.notes, *run.method.describe_taps()]:  # resolution decided, layers tapped
                        run._log(line)
            else:
                run._log(f"resuming {run.run.path} after epoch {run.resumed_from}/{cfg.epochs}{with_whom}")
        self._pre_stages()
        last_eval = self._epochs()
        for i in self._active():
            run = self.runs[i]
            ev = last_eval.get(i)
            if not ev:  # killed after the last checkpoint, before the summary was written
                with self._scope(run):
                    ev = run._evaluate()
            extra = {"pack": {"size": self.K, "runs": self.names, "step": self._main.runner.mode
                              if self._main is not None else "-"}} if self.packed else None
            self.results[i] = run.finish(ev, extra)
        return [self.results[i] for i in range(self.K)]

    def _pre_stages(self) -> None:
        """The methods' pre-training stages (FitNets hint, AB, FT), stage by stage, through the same step runner;
        each epoch writes a metrics row with a ``"stage"`` field."""
        stages = {i: self.runs[i].method.pre_stages() for i in self._active() if not self.runs[i].pre_done}
        for s in range(max((len(v) for v in stages.values()), default=0)):
            members = [i for i in self._active() if i in stages and len(stages[i]) > s]
            lanes = {i: _Lane(i, self.runs[i], self.runs[i].stage_step(stages[i][s])) for i in members}
            team: _Team | None = None
            for e in range(max(stages[i][s].epochs for i in members)):
                ids = tuple(i for i in self._active() if i in lanes and e < stages[i][s].epochs)
                if not ids:
                    break
                if team is None or team.ids != ids:
                    team = _Team([lanes[i] for i in ids], self.packed)
                for i in ids:
                    self.runs[i].begin_stage_epoch(e)
                name = stages[ids[0]][s].name
                res = self._epoch(team, f"in pre-stage {name!r} epoch {e + 1}", f"{name} {e + 1}")
                for i, train in res.items():
                    self.runs[i].record_stage(stages[i][s], e, train)
        for i in self._active():
            self.runs[i].end_pre_stages()

    def train_epoch(self, epoch: int, ids: Sequence[int] | None = None) -> dict[int, dict]:
        """One main epoch of the runs ``ids`` (default: all that are still training), without evaluation or
        checkpoints: ``{run index: train metrics}`` (a run that diverged is left out, its error in ``results``).
        The same team (and so the same captured packed graph) serves the next epoch if its runs are the same."""
        ids = tuple(ids) if ids is not None else tuple(self._active())
        if self._main is None or self._main.ids != ids:
            self._main = _Team([_Lane(i, self.runs[i], self.runs[i].accel, self.runs[i].sched) for i in ids],
                               self.packed)
        team = self._main
        for i in ids:
            with self._scope(self.runs[i], team):
                self.runs[i].begin_epoch(epoch)
        team.runner.new_epoch()
        epochs = int(self.runs[ids[0]].cfg.epochs)
        return self._epoch(team, f"in epoch {epoch + 1}", f"epoch {epoch + 1}/{epochs}")

    def _epochs(self) -> dict[int, dict]:
        """The main epochs. Runs resumed at different epochs catch up one epoch at a time (the laggards first)."""
        last_eval: dict[int, dict] = {}
        t_run = time.time()
        start = {i: self.runs[i].epoch for i in self._active()}
        while True:
            todo = [i for i in self._active() if self.runs[i].epoch < int(self.runs[i].cfg.epochs)]
            if not todo:
                return last_eval
            epoch = min(self.runs[i].epoch for i in todo)
            ids = tuple(i for i in todo if self.runs[i].epoch == epoch)
            lrs = {i: self.runs[i].sched.lr() for i in ids}
            trains = self.train_epoch(epoch, ids)
            team = self._main
            for i, train in trains.items():
                run = self.runs[i]
                cfg = run.cfg
                with self._scope(run, team):
                    evaluated = {}
                    if run.evaluates_after(epoch):
                        evaluated = last_eval[i] = run._evaluate()
                    done = epoch + 1 - start[i]
                    eta = (time.time() - t_run) / done * (cfg.epochs - epoch - 1)
                    run.record_epoch(epoch, lrs[i], train, evaluated, eta=eta,
                                     who=f"{run.run.path.name}  " if self.packed else "")


# ----------------------------------------------------------------------------------------------- entry points
class Trainer(Run):
    """A plain run (a group of one) with the conveniences of scripts, tests and benchmarks: :meth:`fit` (returns the
    result or raises the DivergenceError), :meth:`train_epoch` (one epoch, no evaluation or checkpoint) and
    :meth:`step` (one optimizer step)."""

    def fit(self) -> RunResult:
        res = Group([self], echo=self.echo).fit()[0]
        if isinstance(res, BaseException):
            raise res
        return res

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        group = self.__dict__.get("_group")
        if group is None:
            group = self.__dict__["_group"] = Group([self], echo=self.echo)
        res = group.train_epoch(epoch)
        if 0 in group.results:
            raise group.results[0]
        return res[0]

    def step(self, x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One optimizer step, eager or compiled (CUDA graphs are captured by the group's runner, in :meth:`fit` and
        :meth:`train_epoch`); returns (loss, logits, terms) without synchronising with the host."""
        return self.accel.step(x, y, idx)


def train_group(cfgs: Iterable[Any], *, resume: bool = False, overwrite: bool = False,
                echo: Callable[[str], None] | None = None) -> list[RunResult]:
    """Train the runs ``cfgs`` as one packed group; raises a DivergenceError naming the runs that stopped (after the
    others finished)."""
    cfgs = list(cfgs)
    out = build_group(cfgs, resume=resume, overwrite=overwrite, echo=echo).fit()
    failed = [(c, r) for c, r in zip(cfgs, out) if isinstance(r, DivergenceError)]
    if failed:
        if len(cfgs) == 1:
            raise failed[0][1]
        rest = "" if len(failed) == len(cfgs) else "; the other runs ran to the end"
        raise DivergenceError(f"{len(failed)} of {len(cfgs)} runs stopped ({', '.join(str(c.name) for c, _ in failed)}"
                              f"): {failed[0][1]}{rest}")
    return [r for r in out if isinstance(r, RunResult)]


def train(cfg: Any, *, resume: bool = False, overwrite: bool = False,
          echo: Callable[[str], None] | None = None) -> RunResult:
    """Train one run described by ``cfg`` (see :mod:`tfdistill.config`); returns its directory and summary.

    With ``cfg.seeds`` set, trains one run per seed as one packed group (see the module docs) and returns the list
    of their results, in the order of ``cfg.seeds``; under torchrun the seeds run one after another."""
    try:
        with graceful_stop(only_if_default=True):  # a script's SIGTERM/SIGINT: a graceful stop (the CLI's are already)
            return _train(cfg, resume=resume, overwrite=overwrite, echo=echo)
    finally:
        cleanup_distributed()  # only a process group that setup_distributed created (torchrun); no-op otherwise


def _train(cfg: Any, *, resume: bool, overwrite: bool, echo: Callable[[str], None] | None) -> Any:
    if getattr(cfg, "seeds", None):
        cfgs = seed_configs(cfg)
        if setup_distributed(cfg.engine.device).enabled:
            return [train_group([c], resume=resume, overwrite=overwrite, echo=echo)[0] for c in cfgs]
        return train_group(cfgs, resume=resume, overwrite=overwrite, echo=echo)
    return train_group([cfg], resume=resume, overwrite=overwrite, echo=echo)[0]
