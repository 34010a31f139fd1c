"""Running a planned sweep: skip finished runs, resume interrupted ones, record failures, survive being killed.

The sweep folder ``<out_dir>/<name>/`` holds the run directories and:

* ``sweep.yaml`` -- the resolved spec and its expansion (the report reads labels and the paper's numbers there);
* ``configs/<run>.yaml`` -- the exact validated config each run trains (``tfdistill train configs/<run>.yaml``);
* ``sweep_state.json`` -- per run: status, attempts, exit code, last error line, wall time (informational: the
  run directories are the truth -- ``summary.json`` means finished, ``last.pt`` means resumable);
* ``logs/<run>.log`` -- the output of subprocess runs (and the traceback of a failed in-process run);
* ``<run>/FAILED`` -- the last error line of a failed run (removed when the run is retried);
* ``.sweep.lock`` -- held while a sweep (or a training process it started) works on the folder.

Re-running the same command continues the sweep: a run with ``summary.json`` is skipped, one with ``last.pt`` is
resumed bit-exactly (``--resume``), one with a run directory but no checkpoint yet is restarted (``--overwrite``),
and failed runs are retried (unless ``--skip-failed``). A run whose stored config differs from the planned one is
refused up front rather than silently mixed into the results.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import OmegaConf

from ..config import to_dict, to_yaml
from ..errors import ConfigError, RunDirError
from .. import rundir
from ..rundir import FAILED_MARKER, RunDir, config_diff, write_text_atomic
from .spec import Plan, PlannedRun

STATE_FILE = "sweep_state.json"
SPEC_FILE = "sweep.yaml"
LOCK_FILE = ".sweep.lock"
SWEEP_PID_ENV = "TFDISTILL_SWEEP_PID"
DEFAULT_PACK_CUDA = 4
"""Runs per packed group when ``--pack`` is not given and the runs train on CUDA (1 on the CPU)."""


# ------------------------------------------------------------------------------------------------ small helpers
_write_atomic = write_text_atomic


def _hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _read_summary(run: PlannedRun) -> dict | None:
    try:
        return json.loads((run.run_dir / rundir.SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    """The text of ``path`` from byte ``offset`` on ("" if it is missing or shorter)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def is_finished(run: PlannedRun) -> bool:
    return rundir.is_finished(run.run_dir)


@dataclass
class StartMode:
    resume: bool = False
    overwrite: bool = False
    what: str = "new"

    @property
    def flags(self) -> list[str]:
        return ["--resume"] if self.resume else ["--overwrite"] if self.overwrite else []


def start_mode(run: PlannedRun) -> StartMode:
    """How to (re)start ``run``: resume from last.pt, restart a run dir without checkpoint, or start fresh."""
    rd = run.run_dir
    if rundir.is_resumable(rd):
        done = RunDir(rd).epochs_done()
        return StartMode(resume=True, what=f"resume after epoch {done}/{run.cfg.epochs}")
    if rd.is_dir() and any(p.name != FAILED_MARKER for p in rd.iterdir()):
        return StartMode(overwrite=True, what="restart (no checkpoint yet)")
    return StartMode()


@dataclass
class Outcome:
    status: str
    """finished | failed | interrupted"""
    returncode: int | None = None
    error: str = ""
    summary: dict | None = None
    log: str = ""


# ------------------------------------------------------------------------------------------------ executors
class Hooks:
    """What an executor reports back to the sweep (progress, state); implemented by :class:`Sweep`."""

    def started(self, run: PlannedRun, mode: StartMode) -> None: ...

    def finished(self, run: PlannedRun, outcome: Outcome) -> None: ...

    def stopping(self) -> bool:
        return False


class Executor:
    """Trains planned runs in one of ``slots`` parallel slots.

    ``run_group(runs, slot, hooks)`` trains a job: one run, or -- for an executor that ``packs`` -- up to ``pack_size``
    compatible runs (equal :meth:`group_key`) as one packed group in one process (each run writing its own run
    directory, exactly as alone). The default trains them one after the other with :meth:`run_one`.
    """

    packs = False
    slots = 1
    pack_size = 0
    """With ``packs``: at most this many runs per group (0: no limit)."""

    def group_key(self, run: PlannedRun) -> str:
        """With ``packs``: runs with the same key may train as one group (default: the engine's
        :func:`~tfdistill.engine.group.pack_key` -- same data, engine settings and epochs)."""
        from ..engine.group import pack_key

        return pack_key(run.cfg)

    def can_pack(self, run: PlannedRun) -> bool:
        """With ``packs``: whether ``run`` may join a group (else it is a job of its own)."""
        return self.packs

    def run_group(self, runs: Sequence[PlannedRun], slot: int, hooks: Hooks) -> None:
        for run in runs:
            if hooks.stopping():
                return
            (run.run_dir / FAILED_MARKER).unlink(missing_ok=True)
            mode = start_mode(run)
            hooks.started(run, mode)
            hooks.finished(run, self.run_one(run, mode, slot))

    def run_one(self, run: PlannedRun, mode: StartMode, slot: int) -> Outcome:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Stop whatever is running (the sweep is being interrupted)."""


class InProcessExecutor(Executor):
    """Runs in this process (``--jobs 1``): no start-up cost per run, the epoch lines on the console. With ``pack`` > 1
    each job of up to ``pack`` compatible runs trains as one packed group (:func:`~tfdistill.engine.build_group`); a
    run that diverges is recorded as failed the moment it stops, and the rest of its group goes on."""

    def __init__(self, echo: Callable[[str], None], pack: int = 1) -> None:
        self.echo = echo
        self.packs = int(pack) != 1
        self.pack_size = max(0, int(pack))

    def run_one(self, run: PlannedRun, mode: StartMode, slot: int) -> Outcome:
        from ..engine import train

        try:
            result = train(run.cfg, resume=mode.resume, overwrite=mode.overwrite, echo=lambda s: self.echo(f"    {s}"))
            return Outcome("finished", 0, summary=result.summary)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # any failure of one run is recorded; the sweep goes on with the next
            log = run.sweep_dir / "logs" / f"{run.name}.log"
            with open(log, "a") as fh:
                fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} in-process {mode.what}\n{traceback.format_exc()}")
            return Outcome("failed", None, error=_one_line(exc), log=str(log))
        finally:
            gc.collect()
            _empty_cuda_cache()

    def run_group(self, runs: Sequence[PlannedRun], slot: int, hooks: Hooks) -> None:
        runs = list(runs)
        if len(runs) < 2 or hooks.stopping():
            return super().run_group(runs, slot, hooks)
        from ..engine import build_group
        from ..errors import DivergenceError

        self.echo(f"packed: {len(runs)} runs in one group: {', '.join(r.name for r in runs)}")
        modes = [start_mode(r) for r in runs]
        for r, m in zip(runs, modes):
            (r.run_dir / FAILED_MARKER).unlink(missing_ok=True)
            hooks.started(r, m)
        reported: set[int] = set()

        def fail(i: int, error: str, detail: str) -> None:
            r = runs[i]
            log = r.sweep_dir / "logs" / f"{r.name}.log"
            with open(log, "a") as fh:
                fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} in-process, packed with "
                         f"{[x.name for x in runs]}\n{detail}")
            reported.add(i)
            hooks.finished(r, Outcome("failed", None, error=error, log=str(log)))

        def dropped(i: int, err: DivergenceError) -> None:  # recorded at once: an interrupt may follow
            fail(i, f"DivergenceError: {err}", f"DivergenceError: {err}\n")

        try:
            results = build_group([r.cfg for r in runs], modes=[(m.resume, m.overwrite) for m in modes],
                                  echo=lambda s: self.echo(f"    {s}"), on_drop=dropped).fit()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the group failed: its runs that had not finished are recorded as failed
            for i, r in enumerate(runs):
                if i in reported:
                    continue
                if is_finished(r):
                    hooks.finished(r, Outcome("finished", 0, summary=_read_summary(r)))
                else:
                    fail(i, _one_line(exc), traceback.format_exc())
            return
        finally:
            gc.collect()
            _empty_cuda_cache()
        for i, (r, res) in enumerate(zip(runs, results)):
            if i not in reported and not isinstance(res, DivergenceError):
                hooks.finished(r, Outcome("finished", 0, summary=res.summary))


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class SubprocessExecutor(Executor):
    """Each run in its own ``python -m tfdistill train CONFIG`` process; ``slots`` at once.

    With ``gpus``, slot ``i`` sees only GPU ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``). On CPU, each process
    gets ``cpu_count // slots`` threads unless ``OMP_NUM_THREADS`` is set. The processes hold the sweep's lock
    and, on Linux, die with the sweep (``PR_SET_PDEATHSIG``), so a killed sweep leaves no orphan writing into a run
    directory that its restart would train again.

    With ``pack`` > 1 each job of up to ``pack`` compatible runs trains as one packed group in one process
    (``python -m tfdistill.sweep.child pack ...``; its output goes to ``logs/pack_<first run>.log``): e.g. one group of
    four runs per GPU with ``--gpus 0,1 --pack 4``.
    """

    def __init__(self, slots: int, gpus: Sequence[str] | None = None, keep_fds: Sequence[int] = (),
                 pack: int = 1) -> None:
        self.slots = max(1, int(slots))
        self.gpus = [str(g) for g in gpus] if gpus else []
        self.keep_fds = tuple(keep_fds)
        self.packs = int(pack) != 1
        self.pack_size = max(0, int(pack))
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def command(self, run: PlannedRun, mode: StartMode) -> list[str]:
        return [sys.executable, "-m", "tfdistill.sweep.child", "train", str(run.config_path), *mode.flags]

    def environment(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])  # the folder holding the tfdistill package
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env[SWEEP_PID_ENV] = str(os.getpid())
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        elif self.slots > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.slots))
        return env

    def _spawn(self, cmd: list[str], slot: int, log_path: Path) -> tuple[int | None, str]:
        """Run ``cmd`` with its output appended to ``log_path``; ``(exit code, its output)``, or ``(None, "")`` when
        the sweep is stopping."""
        env = self.environment(slot)
        gpu = f" CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if self.gpus else ""
        with open(log_path, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}{gpu} {' '.join(cmd)}\n".encode())
            log.flush()
            offset = log.tell()
            with self._lock:
                if self._stopping:
                    return None, ""
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        pass_fds=self.keep_fds)
                self._procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            return rc, fh.read().decode(errors="replace")

    def _outcome(self, run: PlannedRun, rc: int | None, output: str, log_path: Path) -> Outcome:
        if rc is None:
            return Outcome("interrupted")
        if is_finished(run):
            return Outcome("finished", 0, summary=_read_summary(run), log=str(log_path))
        if self._stopping:
            return Outcome("interrupted", rc, log=str(log_path))
        error = _last_line(output) or (f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}")
        if rc == 0:
            error = f"exited 0 without writing summary.json ({error})"
        return Outcome("failed", rc, error=error, log=str(log_path))

    def run_one(self, run: PlannedRun, mode: StartMode, slot: int) -> Outcome:
        log_path = run.sweep_dir / "logs" / f"{run.name}.log"
        rc, output = self._spawn(self.command(run, mode), slot, log_path)
        return self._outcome(run, rc, output, log_path)

    def run_group(self, runs: Sequence[PlannedRun], slot: int, hooks: Hooks) -> None:
        """A packed job (several runs): one process trains them as one group; else run by run."""
        runs = list(runs)
        if len(runs) < 2 or hooks.stopping():
            return super().run_group(runs, slot, hooks)
        modes = [start_mode(r) for r in runs]
        cmd = [sys.executable, "-m", "tfdistill.sweep.child", "pack"]
        for r, m in zip(runs, modes):
            (r.run_dir / FAILED_MARKER).unlink(missing_ok=True)
            hooks.started(r, m)
            cmd += ["resume" if m.resume else "overwrite" if m.overwrite else "new", str(r.config_path)]
        log_path = runs[0].sweep_dir / "logs" / f"pack_{runs[0].name}.log"
        for r in runs:
            with open(r.sweep_dir / "logs" / f"{r.name}.log", "a") as fh:
                fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} trained as one packed group with "
                         f"{[x.name for x in runs]}: output in {log_path.name}\n")
        offsets = [_size(r.run_dir / "train.log") for r in runs]
        rc, output = self._spawn(cmd, slot, log_path)
        for r, offset in zip(runs, offsets):
            outcome = self._outcome(r, rc, output, log_path)
            if outcome.status != "finished":
                # the run's own reason, if it stopped alone (diverged) during this attempt: "failed", even when the
                # sweep is being interrupted (it would diverge again)
                new = _read_from(r.run_dir / "train.log", offset)
                own = [ln[len("error: "):] for ln in new.splitlines() if ln.startswith("error: ")]
                tag = f"tfdistill: error: {r.name}: "  # what the pack child prints for each run that stopped
                own += [ln.strip()[len(tag):] for ln in output.splitlines() if ln.strip().startswith(tag)]
                if own:
                    outcome = Outcome("failed", rc, error=own[-1], log=str(log_path))
            hooks.finished(r, outcome)

    def interrupt(self) -> None:
        with self._lock:
            self._stopping = True
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 15
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()


# ------------------------------------------------------------------------------------------------ the sweep
class _FolderLock:
    """An exclusive ``flock`` on ``<sweep>/.sweep.lock``, released when this process (and its children) end."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "_FolderLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirError(f"sweep folder {self.path.parent} is in use by another tfdistill sweep (pid {holder}) "
                              f"or by training processes it started; wait for them or stop them") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class SweepResult:
    sweep_dir: Path
    total: int
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Runs that were already finished before this invocation."""
    trained: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Sweep(Hooks):
    def __init__(self, plan: Plan, *, jobs: int = 1, gpus: Sequence[str] | None = None,
                 echo: Callable[[str], None] = print, retry_failed: bool = True,
                 executor: Executor | None = None, pack: int | None = None) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        if pack is not None and pack < 0:
            raise ConfigError(f"--pack {pack}: give the number of runs per group (1: no packing, 0: no limit)")
        self.pack = pack
        self.plan = plan
        self.gpus = [str(g).strip() for g in gpus or [] if str(g).strip()]
        if self.gpus:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ConfigError(f"--gpus {','.join(self.gpus)}: no CUDA device is available here; leave --gpus out "
                                  f"(--jobs N runs N processes on the CPU)")
            bad = [g for g in self.gpus if g.isdigit() and int(g) >= count]  # (UUIDs pass as they are)
            if bad:
                raise ConfigError(f"--gpus: {', '.join(bad)} not among this machine's GPUs "
                                  f"({', '.join(map(str, range(count)))})")
        self.jobs = jobs if not self.gpus or jobs > 1 else len(self.gpus)
        self.echo = echo
        self.retry_failed = retry_failed
        self.executor = executor
        self.dir = plan.sweep_dir
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.state: dict = {}
        self.order: dict[str, int] = {}
        self.walls: list[float] = []
        self.result = SweepResult(self.dir, 0)

    # ------------------------------------------------------------ planning
    def _ordered(self, runs: list[PlannedRun]) -> list[PlannedRun]:
        """Seed-major order: every label's first seed before any second seed (early partial results cover all)."""
        return sorted(runs, key=lambda r: (r.seed, r.index))

    def _conflicts(self, runs: list[PlannedRun]) -> list[tuple[str, str]]:
        """(run, differing keys) for runs trained (finished or resumable) with a config other than the planned one."""
        out = []
        for r in runs:
            stored = r.run_dir / rundir.CONFIG_FILE
            if stored.is_file() and (is_finished(r) or rundir.is_resumable(r.run_dir)):
                diff = config_diff(OmegaConf.to_container(OmegaConf.load(stored)), to_dict(r.cfg), auto_matches=True)
                if diff:
                    out.append((r.name, ", ".join(diff[:4])))
        return out

    def _status(self, run: PlannedRun) -> str:
        if is_finished(run):
            return "finished"
        if (run.run_dir / FAILED_MARKER).is_file():
            return "failed"
        return start_mode(run).what

    # ------------------------------------------------------------ entry points
    def dry_run(self, runs: list[PlannedRun]) -> SweepResult:
        runs = self._ordered(runs)
        plan = self.plan
        self.echo(f"sweep {plan.spec.name}: {len(runs)} of {len(plan.runs)} runs in {self.dir} "
                  f"(recipe {plan.recipe_path}); dry run, nothing is trained")
        width, lwidth = max(len(r.name) for r in runs), max(len(r.label) for r in runs)
        conflicts = dict(self._conflicts(runs))
        for i, r in enumerate(runs, 1):
            status = self._status(r)
            if status == "finished":
                self.result.skipped.append(r.name)
            if r.name in conflicts:
                status += f" (CONFIG DIFFERS: {conflicts[r.name]})"
            extra = ([f"teacher {r.teacher}"] if r.teacher else []) + list(r.variant_overrides)
            self.echo(f"[{i:>{len(str(len(runs)))}}/{len(runs)}] {r.name:<{width}}  {r.label:<{lwidth}}  {status}"
                      + (f"  [{' '.join(extra)}]" if extra else ""))
        missing = self._missing_teachers(runs)
        if missing:
            self.echo(f"note: teacher checkpoint(s) not found yet: {', '.join(missing)}")
        self.result.total = len(runs)
        self.result.dry_run = True
        return self.result

    def _missing_teachers(self, runs: list[PlannedRun]) -> list[str]:
        out = []
        for r in runs:
            ckpt = str(r.cfg.teacher.checkpoint)
            if r.teacher and not is_finished(r) and not Path(ckpt).is_file() and f"{r.teacher}: {ckpt}" not in out:
                out.append(f"{r.teacher}: {ckpt}")
        return out

    def run(self, runs: list[PlannedRun]) -> SweepResult:
        plan = self.plan
        runs = self._ordered(runs)
        self.order = {r.name: i for i, r in enumerate(runs, 1)}
        self.result.total = len(runs)
        conflicts = self._conflicts(runs)
        if conflicts:
            which = "; ".join(f"{n} ({d})" for n, d in conflicts[:3])
            raise ConfigError(f"{len(conflicts)} run(s) in {self.dir} were trained with another config: {which}; "
                              f"use another sweep name (or --out-dir), or delete them")
        missing = self._missing_teachers(runs)
        if missing:
            raise ConfigError(f"teacher checkpoint(s) not found: {', '.join(missing)} (spec key 'teachers'); train "
                              f"the teachers first (tfdistill sweep configs/reproduce/teachers.yaml) or leave the "
                              f"teacher-based runs out with --only")
        self.dir.mkdir(parents=True, exist_ok=True)
        with _FolderLock(self.dir) as lock:
            (self.dir / "configs").mkdir(exist_ok=True)
            (self.dir / "logs").mkdir(exist_ok=True)
            header = ("# Written by `tfdistill sweep`: the resolved spec and its expansion into runs.\n"
                      "# `tfdistill report` reads the labels and the paper's numbers from here.\n")
            _write_atomic(self.dir / SPEC_FILE, header + OmegaConf.to_yaml(OmegaConf.create(plan.resolved())))
            for r in plan.runs:
                text = to_yaml(r.cfg)
                if not r.config_path.is_file() or r.config_path.read_text() != text:
                    _write_atomic(r.config_path, text)
            self._load_state()
            todo = []
            for r in runs:
                if is_finished(r):
                    self.result.skipped.append(r.name)
                    self.result.finished.append(r.name)
                    self._set(r, status="finished")
                    s = _read_summary(r)
                    if s and isinstance(s.get("wall_seconds"), (int, float)):
                        self.walls.append(float(s["wall_seconds"]))
                elif not self.retry_failed and (r.run_dir / FAILED_MARKER).is_file():
                    self.result.failed.append(r.name)
                else:
                    todo.append(r)
            executor = self._executor(lock.fd, self._pack_size(todo))
            slots = min(executor.slots, max(1, len(todo)))
            mode = "in this process" if isinstance(executor, InProcessExecutor) else (
                f"{slots} process{'es' if slots > 1 else ''} at a time"
                + (f" on GPU(s) {','.join(self.gpus)}" if self.gpus else ""))
            if executor.packs:
                mode += f", packed {executor.pack_size or 'all compatible'} runs per group"
            skipped_failed = f" ({len(self.result.failed)} failed, skipped)" if self.result.failed else ""
            self.echo(f"sweep {plan.spec.name}: {len(runs)} runs in {self.dir}: {len(self.result.skipped)} finished, "
                      f"{len(todo)} to train{skipped_failed}, {mode}")
            self._save_state()
            self._execute(executor, todo)
        self._final()
        return self.result

    def _pack_size(self, runs: list[PlannedRun]) -> int:
        """``--pack`` as given, else the default: DEFAULT_PACK_CUDA runs per group where the runs train on CUDA, else
        1 (on the CPU packed runs step one after another: no faster than separate runs)."""
        if self.pack is not None:
            return self.pack
        import torch

        on_cuda = torch.cuda.is_available() and all(not str(r.cfg.engine.device).startswith(("cpu", "mps"))
                                                    for r in runs)
        return DEFAULT_PACK_CUDA if on_cuda else 1

    def _executor(self, lock_fd: int | None, pack: int) -> Executor:
        if self.executor is not None:
            return self.executor
        if self.jobs == 1 and not self.gpus:
            return InProcessExecutor(self.echo, pack=pack)
        return SubprocessExecutor(self.jobs, self.gpus, keep_fds=[lock_fd] if lock_fd is not None else [], pack=pack)

    def _execute(self, executor: Executor, todo: list[PlannedRun]) -> None:
        if executor.packs:
            groups: dict[str, list[PlannedRun]] = {}
            jobs = []
            for r in todo:
                if executor.can_pack(r):
                    groups.setdefault(executor.group_key(r), []).append(r)
                else:  # a job of its own, so parallel slots can take it
                    jobs.append([r])
            size = executor.pack_size or len(todo)
            for g in groups.values():
                jobs += [g[i:i + size] for i in range(0, len(g), size)]
        else:
            jobs = [[r] for r in todo]
        old = _on_sigterm_raise_interrupt()
        try:
            if executor.slots == 1:
                for job in jobs:
                    executor.run_group(job, 0, self)
            else:
                self._parallel(executor, jobs)
        except KeyboardInterrupt:
            self._stop.set()
            executor.interrupt()
            self.echo(f"sweep {self.plan.spec.name}: interrupted; re-run the same command to continue")
            with self._lock:  # runs stopped mid-way (an in-process run re-raises Ctrl-C before its hook)
                for st in self.state.values():
                    if st.get("status") == "running":
                        st.update(status="interrupted", ended=time.time())
                self._save_state()
            raise
        finally:
            _restore_sigterm(old)

    def _parallel(self, executor: Executor, jobs: list[list[PlannedRun]]) -> None:
        free = list(range(executor.slots))
        free_lock = threading.Lock()

        def work(job: list[PlannedRun]) -> None:
            if self._stop.is_set():
                return
            with free_lock:
                slot = free.pop(0)
            try:
                executor.run_group(job, slot, self)
            finally:
                with free_lock:
                    free.append(slot)

        pool = ThreadPoolExecutor(max_workers=executor.slots, thread_name_prefix="sweep")
        futures = {pool.submit(work, job) for job in jobs}
        try:
            while futures:
                done, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
        except BaseException:
            self._stop.set()
            for f in futures:
                f.cancel()
            executor.interrupt()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------ hooks
    def stopping(self) -> bool:
        return self._stop.is_set()

    def started(self, run: PlannedRun, mode: StartMode) -> None:
        with self._lock:
            st = self.state.setdefault(run.name, {})
            self._set(run, status="running", attempts=int(st.get("attempts", 0)) + 1, started=time.time(),
                      start=mode.what, error=None, returncode=None)
            self._save_state()
            self.echo(f"{self._tag(run)} start  {run.name}  ({mode.what})")

    def finished(self, run: PlannedRun, outcome: Outcome) -> None:
        with self._lock:
            now = time.time()
            if outcome.status == "finished":
                s = outcome.summary or {}
                wall = s.get("wall_seconds")
                if isinstance(wall, (int, float)):
                    self.walls.append(float(wall))
                self.result.finished.append(run.name)
                self.result.trained.append(run.name)
                self._set(run, status="finished", ended=now, returncode=0, wall_seconds=wall,
                          last_top1=s.get("last_top1"), best_top1=s.get("best_top1"))
                self.echo(f"{self._tag(run)} done   {run.name}  last {_pct(s.get('last_top1'))}  best "
                          f"{_pct(s.get('best_top1'))}  in {_hms(wall)}  | {self._progress()}")
            elif outcome.status == "interrupted":
                self._set(run, status="interrupted", ended=now)
            else:
                self.result.failed.append(run.name)
                run.run_dir.mkdir(parents=True, exist_ok=True)
                (run.run_dir / FAILED_MARKER).write_text(
                    f"{outcome.error}\nexit code: {outcome.returncode}\nlog: {outcome.log}\n"
                    f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                self._set(run, status="failed", ended=now, returncode=outcome.returncode, error=outcome.error,
                          log=outcome.log)
                code = f"exit {outcome.returncode}" if outcome.returncode is not None else "exception"
                self.echo(f"{self._tag(run)} FAILED {run.name}  ({code}) {outcome.error}"
                          + (f"  [log {outcome.log}]" if outcome.log else "") + f"  | {self._progress()}")
            self._save_state()

    def _tag(self, run: PlannedRun) -> str:
        n = self.result.total
        return f"[{self.order.get(run.name, 0):>{len(str(n))}}/{n}]"

    def _progress(self) -> str:
        done, failed = len(self.result.finished), len(self.result.failed)
        left = self.result.total - done - failed
        eta = None
        if self.walls and left > 0:
            slots = max(1, min(self.jobs, left))
            eta = sum(self.walls) / len(self.walls) * math.ceil(left / slots)
        return f"{done}/{self.result.total} finished, {failed} failed, ETA {_hms(eta if left else 0)}"

    # ------------------------------------------------------------ state file
    def _load_state(self) -> None:
        try:
            data = json.loads((self.dir / STATE_FILE).read_text())
            self.state = dict(data.get("runs", {}))
        except (OSError, ValueError):
            self.state = {}
        for r in self.plan.runs:
            st = self.state.setdefault(r.name, {"status": "pending", "attempts": 0})
            if is_finished(r):
                st["status"] = "finished"
            elif st.get("status") in ("running", "finished"):  # a killed sweep, or a deleted summary
                st["status"] = "interrupted"

    def _set(self, run: PlannedRun, **fields) -> None:
        self.state.setdefault(run.name, {}).update(fields)

    def _save_state(self) -> None:
        counts: dict[str, int] = {}
        for st in self.state.values():
            counts[st.get("status", "pending")] = counts.get(st.get("status", "pending"), 0) + 1
        data = {"sweep": str(self.plan.spec.name), "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                "total": len(self.plan.runs), "counts": counts,
                "runs": {r.name: self.state.get(r.name, {}) for r in self.plan.runs}}
        _write_atomic(self.dir / STATE_FILE, json.dumps(data, indent=1, default=str) + "\n")

    def _final(self) -> None:
        r = self.result
        name = self.plan.spec.name
        if r.failed:
            self.echo(f"sweep {name}: {len(r.finished)}/{r.total} finished, {len(r.failed)} FAILED: "
                      f"{', '.join(r.failed[:6])}{' ...' if len(r.failed) > 6 else ''} (errors in each run's FAILED "
                      f"file and {self.dir / STATE_FILE}); re-run the same command to retry them")
        else:
            self.echo(f"sweep {name}: {len(r.finished)}/{r.total} finished ({len(r.trained)} trained now)")
        self.echo(f"report: tfdistill report {self.dir}")


def _pct(x) -> str:
    return f"{x:.2f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "?"


def _on_sigterm_raise_interrupt():
    """Treat SIGTERM like Ctrl-C (stop children, keep the state) while the sweep runs in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    from ..interrupts import on_signal  # raises errors.Terminated (a KeyboardInterrupt): exit code 143

    try:
        return signal.signal(signal.SIGTERM, on_signal)
    except (ValueError, OSError):
        return None


def _restore_sigterm(old) -> None:
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def run_sweep(plan: Plan, *, jobs: int = 1, gpus: Sequence[str] | None = None, dry_run: bool = False,
              only: list[str] | None = None, retry_failed: bool = True, echo: Callable[[str], None] = print,
              executor: Executor | None = None, pack: int | None = None) -> SweepResult:
    """Train (or, with ``dry_run``, list) the plan's runs; see the module docs for skip/resume/failure rules.

    ``pack``: up to this many compatible runs (same data, engine settings and epochs: CE and TFD, several seeds,
    variants) train as one packed group in one process -- in this process for ``jobs=1``, else one process per group
    (``--jobs``/``--gpus`` spread the groups); 1: no packing, 0: no limit, None: :data:`DEFAULT_PACK_CUDA` on CUDA,
    1 on the CPU. ``executor`` replaces the default (in-process for ``jobs=1``, else subprocesses)."""
    sweep = Sweep(plan, jobs=jobs, gpus=gpus, echo=echo, retry_failed=retry_failed, executor=executor, pack=pack)
    runs = plan.select(only)
    return sweep.dry_run(runs) if dry_run else sweep.run(runs)
