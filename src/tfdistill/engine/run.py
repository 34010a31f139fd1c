"""A run's lifecycle and records: build it, open its run directory, checkpoint, resume, log, summarise, stop.

:class:`Run` is one run of a group (:mod:`.group` drives the epochs of K >= 1 runs): it builds its parts
(:mod:`.build`), owns its run directory (checked, created or -- with ``--overwrite`` -- replaced only once the run is
built; the replaced run comes back if the new one stops before its first checkpoint), its checkpoints
(:class:`~.checkpoint.CheckpointSaver`), random streams, metrics rows, train.log and summary (:mod:`.records`).
The engine knows the :class:`~tfdistill.methods.Method` interface and nothing else about methods; data parallelism
is described in :mod:`.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import config_notes, to_dict, to_yaml
from ..errors import DivergenceError, signal_name
from ..fingerprint import Tracker
from ..interrupts import deferred
from ..methods import Method
from ..methods.base import PreStage
from ..rundir import RunDir
from ..runs import run_name
from ..tasks import Task, get_task
from . import build, records
from .checkpoint import CheckpointSaver, rng_state, set_rng_state
from .distributed import DistInfo, barrier, broadcast_object, broadcast_or_raise, broadcast_tensors
from .evaluation import evaluate
from .progress import epoch_line
from .schedule import LRSchedule
from .step import TrainStep


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


class Run:
    """One run of a group: its model, method, optimizer, schedule, GradScaler, step (:class:`~.step.TrainStep`), random
    streams (:attr:`rng`), data order, run directory (prepare / commit / rollback), checkpoints and resume, metrics
    rows and summary. The epochs are driven by :class:`~.group.Group` (K >= 1 runs; K = 1 is a plain run)."""

    def __init__(self, cfg: Any, *, settled: tuple[DistInfo, torch.device], resume: bool = False,
                 overwrite: bool = False, echo: Callable[[str], None] | None = None, data: Any = None,
                 teacher: nn.Module | None = None, accept_data_change: bool = False) -> None:
        """Built by :func:`~.trainer.build_group`, which has ``settled`` the run (:func:`~.build.settle`: its
        process, device and resolved ``engine.*`` settings) and creates its directory with :meth:`open` once every
        run of the group was built. ``data``: a prebuilt data bundle and ``teacher``: a prebuilt frozen teacher for
        ``cfg.teacher`` (both shared by the runs of a packed group); built from ``cfg`` when None.
        ``accept_data_change``: resume on data other than the run's (:class:`~tfdistill.fingerprint.Tracker`)."""
        self.cfg = cfg
        self._warn_mark = records.warnings_mark()
        self._logged_warnings: set[str] = set()
        self.info, self.device = settled
        self.echo = echo if echo is not None else (lambda s: tqdm.write(s, file=sys.stdout))
        # Progress bars on an interactive terminal; in logs and CI the per-epoch lines carry the progress.
        self.show_bars = bool(cfg.engine.progress) and sys.stdout.isatty()
        self.name = run_name(cfg)
        self.run = RunDir(Path(cfg.out_dir) / self.name)
        # Checked now, created (or, with --overwrite, replaced) only once the whole run has been built: bad input
        # found while building leaves no folder behind and never costs the old run.
        self._pending_log: list[str] | None = []
        do_resume = self._prepare_run_dir(resume, overwrite, dry=True)
        if self.info.is_main and self.run.path.is_dir():  # a second process on this run directory is refused now
            self.run.lock()
        if resume and not do_resume:
            self.log(f"note: nothing to resume in {self.run.path} (it does not exist yet): a new run starts")
        for note in config_notes(cfg):  # valid but probably unintended settings (milestones beyond epochs)
            self.log(note)
        self.started = time.time()
        self.show_bars = self.show_bars and self.info.is_main

        seed = int(cfg.seed)
        random.seed(seed)
        torch.manual_seed(seed)
        if cfg.engine.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False  # a previous run in this process may have turned it on
        self.channels_last = bool(cfg.engine.channels_last)
        # `data`: a prebuilt bundle (packed runs)
        self.data = data if data is not None else build.build_run_data(cfg, self.device, self.info, self.run.path)
        self.num_classes = num_classes = build.num_classes(cfg, self.data)
        self.task: Task = get_task(self.data.task, **self.data.task_options)
        """What the labels are: the loss on the logits, the metrics, the records' figures (:mod:`tfdistill.tasks`)."""

        self.student = build.build_student(cfg, num_classes, self.device, self.info)
        self.fingerprint = Tracker(self.run.path, data=self.data.identity, student=self.student, device=self.device,
                                   world_size=self.info.world_size, resume=do_resume,
                                   accept_data_change=accept_data_change, epoch=self.run.epochs_done(),
                                   main=self.info.is_main, agree=lambda v: broadcast_or_raise(v, self.info))
        for note in self.fingerprint.notes:  # data, initial weights; the first epoch's order follows
            self.log(note)
        self.teacher = teacher if teacher is not None else build.build_teacher(cfg, num_classes, self.device)
        if self.teacher is not None:
            self.teacher.to(memory_format=build.memory_format(cfg))

        self.method: Method
        self.method, self.dropblock = build.build_run_method(cfg, self.student, self.teacher, self.data, self.task)

        self.params = self.method.trainable_parameters("main")
        o = cfg.optim
        self.optimizer = build.build_optimizer(self.params, o)
        self.steps_per_epoch = len(self.data.train)
        if cfg.engine.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, int(cfg.engine.max_steps_per_epoch))
        self.sched = LRSchedule(self.optimizer, o.lr, epochs=int(cfg.epochs), steps_per_epoch=self.steps_per_epoch,
                                schedule=cfg.schedule)
        self.precision = cfg.engine.precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.model, self._self_synced = build.wrap_ddp(self.method, self.device, self.info)
        self.train_step = TrainStep(self.model, self.optimizer, self.scaler, device=self.device,
                                    precision=self.precision, compile=bool(cfg.engine.compile),
                                    cuda_graphs=bool(cfg.engine.cuda_graphs) and self._capturable(),
                                    distributed=self.info.enabled, log=self.log)
        if self.info.enabled:
            # Replicas are built from the same seed; from here on each rank draws its own random numbers (dropout
            # masks, CRD negatives), otherwise samples at positions r and r+1 of a global batch would share them.
            torch.manual_seed(seed * 1000003 + self.info.rank)

        self.epoch = 0  # epochs completed
        self.saved_epoch = 0  # ... and in last.pt
        self.best_top1 = -1.0
        """The best value of the task's primary metric so far (top-1 for classification; the checkpoints keep it
        under ``best_top1`` whatever the task)."""
        self.best_epoch = 0
        self.pre_done = False
        self.resumed_from = None
        self.saver = CheckpointSaver(self.run, info=self.info, device=self.device, student=self.student,
                                     method=self.method, optimizer=self.optimizer, sched=self.sched,
                                     scaler=self.scaler, save_epochs=cfg.engine.save_epochs,
                                     config_yaml=lambda: to_yaml(self.cfg), meta=self._meta)
        if do_resume:
            self._resume()
        self.rng = rng_state(self.device)
        """This run's random streams while another run of its group steps (see :meth:`own_rng`)."""
        self.tb = None
        self._opening = (do_resume, resume, overwrite)

    def open(self) -> None:
        """Create (or, with ``--overwrite``, replace) the run directory of a new run, write the notes issued while
        building to its train.log, start TensorBoard. A packed group opens its runs once all of them are built."""
        do_resume, resume, overwrite = self._opening
        if not do_resume:
            self._prepare_run_dir(resume, overwrite, dry=False)
            if self.info.is_main:
                self.run.lock()
                self.run.config.write_text(to_yaml(self.cfg))
        if self.info.is_main:
            self.fingerprint.save()
        pending, self._pending_log = self._pending_log or [], None
        if self.info.is_main:
            for line in pending:
                self.run.log_line(line)
            for msg in records.warnings_since(self._warn_mark):  # shown while this run was being built
                self.log_warning(msg)
            records.OPEN_RUNS.add(self)
        self.tb = records.open_tensorboard(bool(self.cfg.engine.tensorboard) and self.info.is_main,
                                           self.run.path / "tb")

    def _prepare_run_dir(self, resume: bool, overwrite: bool, *, dry: bool) -> bool:
        """Rank 0 checks (``dry``) or creates the run directory; every rank gets its verdict (or its error)."""
        verdict: Any = False
        if self.info.is_main:
            try:
                verdict = self.run.prepare(resume=resume, overwrite=overwrite, dry=dry)
            except Exception as exc:  # every rank raises it, rather than waiting for rank 0 forever
                verdict = exc
        return bool(broadcast_or_raise(verdict, self.info))

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict:
        return {"num_classes": self.num_classes, "model": self.cfg.model.name, "method": self.cfg.method.name,
                "data": build.data_meta(self.data)}

    def _progress(self) -> dict:
        return {"epoch": self.epoch, "best_top1": self.best_top1, "best_epoch": self.best_epoch,
                "pre_done": self.pre_done}

    def save(self, best: bool) -> None:
        """The checkpoints of the epoch just trained (:class:`~.checkpoint.CheckpointSaver`); a run it replaced
        (--overwrite) is deleted only now."""
        if self.saver.save(self._progress(), best):
            self.saved_epoch = self.epoch
            self.run.commit()

    def restore_replaced(self) -> bool:
        """The run stopped before its first checkpoint: with ``--overwrite``, the run it replaced comes back (True)."""
        if self.info.is_main and self.run.replaced is not None:
            if self.tb is not None:
                self.tb.close()
            if self.run.rollback():
                self.echo(f"note: {self.run.path} stopped before its first checkpoint; the run it was to replace "
                          f"(--overwrite) is restored")
                return True
        return False

    def _resume(self) -> None:
        progress = self.saver.restore(to_dict(self.cfg))
        self.epoch = self.saved_epoch = progress["epoch"]
        self.best_top1, self.best_epoch = progress["best_top1"], progress["best_epoch"]
        self.pre_done = progress["pre_done"]
        self.resumed_from = self.epoch
        done = [r for r in self.run.read_metrics() if r.get("epoch", 0) <= self.epoch]
        if done and isinstance(done[-1].get("time"), (int, float)):
            self.started = time.time() - float(done[-1]["time"])  # wall time counts the earlier session too
        if self.info.is_main:
            self.run.truncate_metrics(self.epoch)
            self.run.log_line(f"resumed after epoch {self.epoch}")
        barrier(self.info)  # every rank has read last.pt before rank 0 may replace it

    # ------------------------------------------------------------------ what the group loop calls
    @contextlib.contextmanager
    def own_rng(self, cuda: bool = True):
        """This run's random streams as the global ones (for one step, evaluation or checkpoint of a packed group):
        swapped in on entry, saved back on exit. ``cuda``: the CUDA generator too (not while the group replays a
        packed CUDA graph, see :class:`~.graphs.GraphRunner`)."""
        dev = self.device if cuda else None
        set_rng_state(self.rng, dev)
        try:
            yield
        finally:
            self.rng = {**self.rng, **rng_state(dev)}

    def _capturable(self) -> bool:
        if not self.method.capturable():  # host-side draws every step (Distiller.host_draws)
            self.log(f"note: engine.cuda_graphs=true: method {self.cfg.method.name!r} draws on the host every step; "
                     "the train step runs without CUDA graphs")
            return False
        return True

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()
        if self.teacher is not None:
            self.teacher.eval()
        self.method.on_epoch_start(epoch)
        if self.dropblock is not None:
            self.dropblock.set_progress(epoch / max(1, self.cfg.epochs))
        self.data.train.set_epoch(epoch)
        self.fingerprint.begin_epoch(epoch)

    def batches(self):
        """This epoch's training batches (the first main epoch's order goes into the run's fingerprint)."""
        return self.fingerprint.wrap(iter(self.data.train))

    def stage_step(self, stage: PreStage) -> TrainStep:
        """The step of a pre-stage (FitNets hint, AB, FT): :func:`~.build.build_stage_step` with this run's settings."""
        return build.build_stage_step(self.method, stage, self.cfg, self.device, self.precision, self.info, self.log)

    def begin_stage_epoch(self, e: int) -> None:
        self.method.train()
        if self.teacher is not None:
            self.teacher.eval()
        self.data.train.set_epoch(-1 - e)  # its own data order, distinct from the main epochs'

    def end_pre_stages(self) -> None:
        for p in self.method.parameters():  # no pre-stage gradient may reach the main stage
            p.grad = None
        self.pre_done = True

    def record_stage(self, stage: PreStage, e: int, train: dict) -> None:
        """A metrics row of pre-stage epoch ``e`` (0-based): ``"stage"`` names it; ``"epoch": 0`` keeps it before the
        main epochs (resume keeps it), and its loss is ``stage_loss``, so curves of the main ``loss`` skip it."""
        row = {"epoch": 0, "stage": stage.name, "stage_epoch": e + 1, "stage_epochs": stage.epochs,
               "stage_loss": train["loss"], "terms": train["terms"], "epoch_seconds": train["epoch_seconds"],
               "images_per_sec": train["images_per_sec"], "time": time.time() - self.started}
        if self.info.is_main:
            self.run.append_metrics(row)
        self.log(f"pre-stage {stage.name} {e + 1}/{stage.epochs}  loss {train['loss']:.4f}  "
                  f"{train['epoch_seconds']:.1f}s")

    def evaluates_after(self, epoch: int) -> bool:
        """Whether main epoch ``epoch`` (0-based) ends with an evaluation: every ``engine.eval_every``-th epoch, each
        of the last ``engine.eval_last`` epochs, and always the last one."""
        n, every, last = epoch + 1, max(1, int(self.cfg.engine.eval_every)), int(self.cfg.engine.eval_last or 0)
        epochs = int(self.cfg.epochs)
        return n == epochs or n % every == 0 or n > epochs - last

    def record_epoch(self, epoch: int, lr: float, train: dict, evaluated: dict, *, eta: float, who: str = "") -> None:
        """After main epoch ``epoch`` (0-based): best top-1, metrics row, TensorBoard, checkpoints, the epoch line.
        ``evaluated``: this epoch's test figures, or {} when the epoch was not evaluated -- its metrics row then
        carries no test figures (never an earlier epoch's)."""
        primary = self.task.primary_metric
        improved = bool(evaluated) and evaluated[primary] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = evaluated[primary], epoch + 1
        self.epoch = epoch + 1
        tested = {f"test_{k}": evaluated.get(k) for k in self.task.test_keys if k in evaluated}
        row = {"epoch": epoch + 1, "lr": lr, **train, **tested, f"best_{primary}": self.best_top1,
               "time": time.time() - self.started}
        with deferred():  # a SIGINT/SIGTERM waits until the row and the checkpoints of this epoch are written
            if self.info.is_main:
                self.run.append_metrics(row)
                records.tb_write(self.tb, row)
            self.fingerprint.end_epoch(self.info.is_main)
            self.save(best=improved)
        speed = f"{train['group_images_per_sec']:.0f} img/s ({train['packed']} runs)" if train.get("packed") else None
        line, terms = epoch_line(epoch + 1, int(self.cfg.epochs), lr, train, evaluated, self.best_top1,
                                 self.best_epoch, eta, who=who, speed=speed,
                                 metric=self.task.primary_metric)  # <= 100 columns (+ who)
        self.log(line)
        if terms and self.info.is_main:  # the terms that did not fit on the line
            self.run.log_line(terms)

    def finish(self, last_eval: dict, extra: dict | None = None) -> RunResult:
        rows = self.run.read_metrics() if self.info.is_main else []
        summary = {**records.summary(self, last_eval, rows), **(extra or {})}
        if self.info.is_main:
            with deferred():
                self.run.write_summary(summary)
            m = self.task.primary_metric
            self.log(f"finished: best {self.task.text({m: summary[f'best_{m}']})} (epoch {summary['best_epoch']}), "
                      f"last {summary[f'last_{m}']:.2f}%  -> {self.run.path}")
        self.close()
        barrier(self.info)
        return RunResult(self.run.path, summary)

    def finished_result(self) -> RunResult | None:
        """The result of a resumed run that had finished already (rank 0's view decides), else None."""
        if self.resumed_from is None or self.epoch < self.cfg.epochs:
            return None
        done = json.loads(self.run.summary.read_text()) if self.info.is_main and self.run.finished() else None
        done = broadcast_object(done, self.info)
        if done is None:
            return None
        self.log(f"{self.run.path} already finished; nothing to resume")
        self.close()
        return RunResult(self.run.path, done)

    def diverged(self, where: str, bad_terms: list[str]) -> DivergenceError:
        """The error that stops this run (alone): its loss became NaN/inf ``where`` (e.g. "in epoch 3")."""
        which = f" (non-finite term: {', '.join(bad_terms)})" if bad_terms else ""
        keep = (f"the last good checkpoint is {self.run.last} (after epoch {self.epoch})" if self.run.last.exists()
                else "no checkpoint was written yet")
        return DivergenceError(f"loss became NaN/inf {where}{which}; stopped, {keep}")

    def stop(self, err: BaseException) -> str | None:
        """This run stops (it diverged while its group goes on, or the group stopped): the reason goes to its
        train.log and, unless it is resumable after an interrupt, a FAILED marker (:meth:`RunDir.record_stop`); a run
        it replaced (--overwrite) comes back instead if it had no checkpoint yet. Returns the line recorded."""
        self.close()
        line = None
        if self.info.is_main and self.run.replaced is None:
            line = self.run.record_stop(err, self.saved_epoch, int(self.cfg.epochs))
        if self.restore_replaced():
            line = (f"stopped by {signal_name(err)} before the first checkpoint of {self.run.path}: the run it was to "
                    f"replace (--overwrite) is restored" if isinstance(err, KeyboardInterrupt) else
                    f"{self.run.path} stopped before its first checkpoint ({type(err).__name__}): the run it was to "
                    f"replace (--overwrite) is restored")
        return line

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.info.is_main:
            self.run.unlock()
        records.OPEN_RUNS.discard(self)

    def log_warning(self, msg: str) -> None:
        """A warning the CLI has shown: once into this run's train.log."""
        if self.info.is_main and msg not in self._logged_warnings and self._pending_log is None:
            self._logged_warnings.add(msg)
            with contextlib.suppress(OSError):
                self.run.log_line(f"warning: {msg}")

    def log(self, line: str) -> None:
        """A line for the console (``echo``) and this run's train.log (kept until the run directory opens); a
        warning the CLI has shown already goes to train.log only, once."""
        text = records.warning_text(line)
        if text is not None and text in records.SHOWN_WARNINGS:
            if self._pending_log is not None:
                return  # written when the run directory opens
            self.log_warning(text)
            return
        if self.info.is_main:
            self.echo(line)
            if getattr(self, "_pending_log", None) is not None:  # the run directory does not exist yet
                self._pending_log.append(line)  # type: ignore[union-attr]
            else:
                self.run.log_line(line)

    def evaluate(self) -> dict[str, float]:
        """The student's test figures now (:func:`~.evaluation.evaluate`)."""
        if self.info.enabled:
            # BatchNorm running statistics (student, components' modules) drift apart after DDP's broadcast at
            # the start of each step (every rank updates them from its own share of the batch): evaluate, and go
            # on from, what rank 0 checkpoints. Self-synchronised buffers (CRD's bank) are identical already.
            broadcast_tensors([b for n, b in self.method.named_buffers() if n not in self._self_synced], self.info)
        return evaluate(self.student, self.data.test, precision=self.precision, device=self.device, info=self.info,
                        task=self.task, num_classes=self.num_classes)

    @property
    def step_mode(self) -> str:
        return self.train_step.mode
