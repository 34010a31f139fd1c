"""Executors: how a sweep's jobs (one run, or a packed group of compatible runs) are trained -- in this process,
or as local subprocesses (``tfdistill _child``), one per slot (a GPU, or a share of the CPU cores).

A cluster executor (Slurm, through submitit) lives in :mod:`.slurm`; all of them report to the sweep through
:class:`Hooks` and leave the run directories as the record of what was trained.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..rundir import FAILED_MARKER
from .console import last_line, one_line
from ..runs import START_MODES, StartMode
from .folder import append_log, is_finished, read_summary, start_mode
from .spec import PlannedRun

SWEEP_PID_ENV = "TFDISTILL_SWEEP_PID"


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


@dataclass
class Outcome:
    status: str
    """finished | failed | interrupted"""
    returncode: int | None = None
    error: str = ""
    summary: dict | None = None
    log: str = ""


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
        :func:`~tfdistill.runs.pack_key` -- same data, engine settings and epochs)."""
        from ..runs import pack_key

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
            log = append_log(run, f"in-process {mode.what}\n{traceback.format_exc()}")
            return Outcome("failed", None, error=one_line(exc), log=str(log))
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
            log = append_log(r, f"in-process, packed with {[x.name for x in runs]}\n{detail}")
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
                    hooks.finished(r, Outcome("finished", 0, summary=read_summary(r)))
                else:
                    fail(i, one_line(exc), traceback.format_exc())
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
    (``python -m tfdistill _child ...``; its output goes to ``logs/pack_<first run>.log``): e.g. one group of
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

    def command(self, runs: Sequence[PlannedRun], modes: Sequence[StartMode]) -> list[str]:
        """``python -m tfdistill _child --modes M1,M2 CONFIG1 CONFIG2``: the hidden command of :func:`train_child`."""
        return [sys.executable, "-m", "tfdistill", "_child", "--modes", ",".join(m.name for m in modes),
                *[str(r.config_path) for r in runs]]

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
            return Outcome("finished", 0, summary=read_summary(run), log=str(log_path))
        if self._stopping:
            return Outcome("interrupted", rc, log=str(log_path))
        error = last_line(output) or (f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}")
        if rc == 0:
            error = f"exited 0 without writing summary.json ({error})"
        return Outcome("failed", rc, error=error, log=str(log_path))

    def run_one(self, run: PlannedRun, mode: StartMode, slot: int) -> Outcome:
        log_path = run.sweep_dir / "logs" / f"{run.name}.log"
        rc, output = self._spawn(self.command([run], [mode]), slot, log_path)
        return self._outcome(run, rc, output, log_path)

    def run_group(self, runs: Sequence[PlannedRun], slot: int, hooks: Hooks) -> None:
        """A packed job (several runs): one process trains them as one group; else run by run."""
        runs = list(runs)
        if len(runs) < 2 or hooks.stopping():
            return super().run_group(runs, slot, hooks)
        modes = [start_mode(r) for r in runs]
        for r, m in zip(runs, modes):
            (r.run_dir / FAILED_MARKER).unlink(missing_ok=True)
            hooks.started(r, m)
        cmd = self.command(runs, modes)
        log_path = runs[0].sweep_dir / "logs" / f"pack_{runs[0].name}.log"
        for r in runs:
            append_log(r, f"trained as one packed group with {[x.name for x in runs]}: output in {log_path.name}\n")
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


# ------------------------------------------------------------------------------------------------ the child process
def die_with_parent() -> None:
    """On Linux, ask the kernel to kill this process when the sweep that started it dies (``PR_SET_PDEATHSIG``): a
    sweep killed with SIGKILL leaves no training process behind that would race its restart for a run directory."""
    if not sys.platform.startswith("linux") or not os.environ.get(SWEEP_PID_ENV, "").isdigit():
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(os.environ[SWEEP_PID_ENV]):  # the sweep died before the request took effect
        os._exit(137)


def train_child(configs: Sequence[str], modes: Sequence[str], echo: Callable[[str], None] | None = None) -> int:
    """The hidden ``tfdistill _child --modes M,... CONFIG ...`` (a sweep's training subprocess): one run exactly as
    ``tfdistill train CONFIG [--resume|--overwrite]``, or several as one packed group
    (:func:`~tfdistill.engine.build_group`). Exit code 0 when every run finished, 1 when some diverged (each says
    why in its ``train.log``, the others ran to the end); bad input raises (the CLI's one line, exit 2)."""
    from ..config import load_config
    from ..engine import build_group, train
    from ..errors import ConfigError, DivergenceError

    bad = [m for m in modes if m not in START_MODES]
    if bad or len(modes) != len(configs) or not configs:
        raise ConfigError(f"_child: --modes {','.join(modes)} needs one mode per config ({len(configs)} given), "
                          f"each one of {', '.join(START_MODES)}")
    die_with_parent()
    if len(configs) == 1:
        cfg, mode = load_config(configs[0]), START_MODES[modes[0]]
        if mode.resume:
            from ..engine.resume import prepare_resume

            prepare_resume(cfg, dry=False)
        train(cfg, resume=mode.resume, overwrite=mode.overwrite, echo=echo)
        return 0
    cfgs = [load_config(path) for path in configs]
    starts = [START_MODES[m] for m in modes]
    results = build_group(cfgs, modes=[(s.resume, s.overwrite) for s in starts], echo=echo).fit()
    failed = [(c.name, r) for c, r in zip(cfgs, results) if isinstance(r, DivergenceError)]
    for name, err in failed:
        print(f"tfdistill: error: {name}: {err}", file=sys.stderr)
    return 1 if failed else 0
