"""The training loop of a group of K >= 1 independent runs (K = 1 is a plain run), packed into one process.

A :class:`Group` (built by :func:`~.trainer.build_group`) holds one :class:`~.run.Run` per config -- its own model,
method, optimizer, schedule, GradScaler, random streams, data order, run directory, checkpoints and resume -- over
data built once (each run gets its own training loader over the shared device-resident tensors, ordered and augmented
by its own seed exactly as when trained alone) and one frozen teacher per distinct ``teacher`` section.
:meth:`Group.fit` runs, in lock-step, the pre-stages of the methods that have them (FitNets hint, AB, FT) and the
epochs, each step of all runs through one :class:`~.graphs.GraphRunner`: on the CPU the runs step one after another
(each with its own global RNG state swapped in, so every run is bit-identical to its separate training); on CUDA with
graphs the K steps replay from one graph, one stream per run. After each epoch every run evaluates, writes its metrics
row and checkpoints; at the end each writes its ``summary.json``.

Runs in a group may differ in anything that keeps the batch fixed -- seed, method, loss weights, architecture,
optimizer, schedule, teacher -- but share the ``data`` and ``engine`` sections and ``epochs``
(:func:`tfdistill.runs.pack_key`). A run whose loss becomes NaN/inf stops alone (its last good checkpoint stays, the
reason goes to its ``train.log``) while the others go on. Under ``torchrun`` (DDP) a group holds one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import plural
from ..errors import DivergenceError
from ..rundir import device_name
from .graphs import GraphRunner
from .distributed import all_reduce_sum
from .run import Run, RunResult

__all__ = ["Group"]


# ----------------------------------------------------------------------------------------------- the loop
class _Sums:
    """A run's on-device sums over an epoch (no host sync until :meth:`result`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.correct = torch.zeros((), device=device, dtype=torch.float64)
        self.predicted = torch.zeros((), device=device, dtype=torch.float64)  # what train_acc divides by
        self.bad = torch.zeros((), device=device, dtype=torch.bool)
        self.seen = 0

    @torch.no_grad()
    def add(self, loss: Tensor, logits: Tensor, terms: dict[str, Tensor], y: Tensor, task: Any) -> None:
        n = y.shape[0]
        self.bad |= ~torch.isfinite(loss)
        hits, made = task.hits(logits, y)  # the task's training accuracy: per image, per pixel
        self.correct += hits
        self.predicted += made
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
            self.correct, self.predicted, torch.tensor(float(self.seen), device=self.device, dtype=torch.float64),
            self.bad.double()])
        all_reduce_sum(packed, run.info)
        vals = packed.tolist()
        count = max(vals[-2], 1.0)
        if vals[-1] > 0 or not all(math.isfinite(v) for v in vals[:-1]):
            self.sums = dict(zip(keys, packed))
            return None
        return {"loss": vals[0] / count, "terms": {k: v / count for k, v in zip(keys[1:], vals[1:len(keys)])},
                "train_acc": 100.0 * vals[len(keys)] / max(vals[len(keys) + 1], 1.0), "epoch_seconds": seconds,
                "images_per_sec": count / seconds if seconds > 0 else float("nan")}


@dataclasses.dataclass
class _Lane:
    """One run in a team: which run, the step it trains with (main stage or a pre-stage) and its schedule."""

    i: int
    run: Run
    step: Any
    sched: Any = None


class _Team:
    """The runs that step together, with their one :class:`~.graphs.GraphRunner`."""

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

    @property
    def step_mode(self) -> str:
        """How the main epochs step (the :class:`~.graphs.GraphRunner`'s mode, e.g. ``packed_cuda_graph``); ``-``
        before the first main epoch."""
        return self._main.runner.mode if self._main is not None else "-"

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
        iters = {ln.i: ln.run.batches() for ln in lanes}
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
                sums[ln.i].add(loss, logits, terms, y, ln.run.task)
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
                                    acc=f"{100 * s.correct.item() / max(s.predicted.item(), 1):.1f}")
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
                    run.log(f"run {run.run.path}: {cfg.model.name} / {cfg.method.name} on {cfg.data.name} "
                             f"({run.data.num_train} train images, {run.num_classes} classes), "
                             f"{plural(int(cfg.epochs), 'epoch')}, device {device_name(run.device)}, "
                             f"world size {run.info.world_size}{with_whom}")
                    for line in [*run.data.notes, *run.method.describe_taps()]:  # resolution decided, layers tapped
                        run.log(line)
            else:
                run.log(f"resuming {run.run.path} after epoch {run.resumed_from}/{cfg.epochs}{with_whom}")
        self._pre_stages()
        last_eval = self._epochs()
        for i in self._active():
            run = self.runs[i]
            ev = last_eval.get(i)
            if not ev:  # killed after the last checkpoint, before the summary was written
                with self._scope(run):
                    ev = run.evaluate()
            extra = {"pack": {"size": self.K, "runs": self.names, "step": self.step_mode}} if self.packed else None
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
            self._main = _Team([_Lane(i, self.runs[i], self.runs[i].train_step, self.runs[i].sched) for i in ids],
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
                        evaluated = last_eval[i] = run.evaluate()
                    done = epoch + 1 - start[i]
                    eta = (time.time() - t_run) / done * (cfg.epochs - epoch - 1)
                    run.record_epoch(epoch, lrs[i], train, evaluated, eta=eta,
                                     who=f"{run.run.path.name}  " if self.packed else "")
