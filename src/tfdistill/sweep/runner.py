"""Orchestrating a planned sweep: skip finished runs, resume interrupted ones, record failures, survive being killed.

Re-running the same command continues the sweep: a run with ``summary.json`` is skipped, one with ``last.pt`` is
resumed bit-exactly (``--resume``), one with a run directory but no checkpoint yet is restarted (``--overwrite``),
and failed runs are retried (unless ``--skip-failed``). A run whose stored config differs from the planned one is
refused up front rather than silently mixed into the results. With a submitting executor (``--executor slurm``)
runs already in a queued or running job are not submitted again. The folder's files are described in
:mod:`.folder`, the executors in :mod:`.executors` and :mod:`.slurm`, ``--status`` in :mod:`.console`.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError
from ..rundir import FAILED_MARKER
from .console import Progress, hms, pct
from .executors import Executor, Hooks, InProcessExecutor, Outcome, SubprocessExecutor
from .folder import (SPEC_FILE, STATE_FILE, FolderLock, StartMode, SweepState, conflicts, is_failed, is_finished,
                     latest_job_of, missing_teachers, read_jobs, read_summary, record_jobs, run_status, write_plan)
from .spec import Plan, PlannedRun, seed_major

__all__ = ["Sweep", "SweepResult", "run_sweep", "SPEC_FILE", "STATE_FILE", "StartMode",
           "DEFAULT_PACK_CUDA"]

DEFAULT_PACK_CUDA = 4
"""Runs per packed group when ``--pack`` is not given and the runs train on CUDA (1 on the CPU)."""


@dataclass
class SweepResult:
    sweep_dir: Path
    total: int
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Runs that were already finished before this invocation."""
    trained: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    """Runs handed to cluster jobs by this invocation (``--executor slurm``)."""
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Sweep(Hooks):
    def __init__(self, plan: Plan, *, jobs: int = 1, gpus: Sequence[str] | None = None,
                 echo: Callable[[str], None] = print, retry_failed: bool = True,
                 executor=None, pack: int | None = None) -> None:
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
        self.state = SweepState(plan)
        self.progress = Progress(self.jobs)
        self.result = SweepResult(self.dir, 0)

    # ------------------------------------------------------------ entry points
    def dry_run(self, runs: list[PlannedRun]) -> SweepResult:
        runs = seed_major(runs)
        plan = self.plan
        self.echo(f"sweep {plan.spec.name}: {len(runs)} of {len(plan.runs)} runs in {self.dir} "
                  f"(recipe {plan.recipe_path}); dry run, nothing is trained")
        width, lwidth = max(len(r.name) for r in runs), max(len(r.label) for r in runs)
        differ = dict(conflicts(runs))
        for i, r in enumerate(runs, 1):
            status = run_status(r)
            if status == "finished":
                self.result.skipped.append(r.name)
            if r.name in differ:
                status += f" (CONFIG DIFFERS: {differ[r.name]})"
            extra = ([f"teacher {r.teacher}"] if r.teacher else []) + list(r.variant_overrides)
            self.echo(f"[{i:>{len(str(len(runs)))}}/{len(runs)}] {r.name:<{width}}  {r.label:<{lwidth}}  {status}"
                      + (f"  [{' '.join(extra)}]" if extra else ""))
        missing = missing_teachers(runs)
        if missing:
            self.echo(f"note: teacher checkpoint(s) not found yet: {', '.join(missing)}")
        self.result.total = len(runs)
        self.result.dry_run = True
        return self.result

    def run(self, runs: list[PlannedRun]) -> SweepResult:
        plan = self.plan
        runs = seed_major(runs)
        self.progress.order = {r.name: i for i, r in enumerate(runs, 1)}
        self.result.total = self.progress.total = len(runs)
        differ = conflicts(runs)
        if differ:
            which = "; ".join(f"{n} ({d})" for n, d in differ[:3])
            raise ConfigError(f"{len(differ)} run(s) in {self.dir} were trained with another config: {which}; "
                              f"use another sweep name (or --out-dir), or delete them")
        missing = missing_teachers(runs)
        if missing:
            raise ConfigError(f"teacher checkpoint(s) not found: {', '.join(missing)} (spec key 'teachers'); train "
                              f"the teachers first (tfdistill sweep configs/reproduce/teachers.yaml) or leave the "
                              f"teacher-based runs out with --only")
        self.dir.mkdir(parents=True, exist_ok=True)
        with FolderLock(self.dir) as lock:
            write_plan(plan)
            self.state.load()
            todo = []
            for r in runs:
                if is_finished(r):
                    self.result.skipped.append(r.name)
                    self.result.finished.append(r.name)
                    self.state.set(r, status="finished")
                    self.progress.add_wall((read_summary(r) or {}).get("wall_seconds"))
                elif not self.retry_failed and is_failed(r):
                    self.result.failed.append(r.name)
                else:
                    todo.append(r)
            executor = self._executor(lock.fd, self._pack_size(todo))
            if getattr(executor, "submits", False):
                self._submit(executor, todo)
            else:
                self._announce(executor, runs, todo)
                self.state.save()
                self._execute(executor, todo)
        if not getattr(executor, "submits", False):
            self._final()
        return self.result

    def _announce(self, executor: Executor, runs: list[PlannedRun], todo: list[PlannedRun]) -> None:
        slots = min(executor.slots, max(1, len(todo)))
        mode = "in this process" if isinstance(executor, InProcessExecutor) else (
            f"{slots} process{'es' if slots > 1 else ''} at a time"
            + (f" on GPU(s) {','.join(self.gpus)}" if self.gpus else ""))
        if executor.packs:
            mode += f", packed {executor.pack_size or 'all compatible'} runs per group"
        skipped_failed = f" ({len(self.result.failed)} failed, skipped)" if self.result.failed else ""
        self.echo(f"sweep {self.plan.spec.name}: {len(runs)} runs in {self.dir}: {len(self.result.skipped)} "
                  f"finished, {len(todo)} to train{skipped_failed}, {mode}")

    def _pack_size(self, runs: list[PlannedRun]) -> int:
        """``--pack`` as given, else the default: DEFAULT_PACK_CUDA runs per group where the runs train on CUDA, else
        1 (on the CPU packed runs step one after another: no faster than separate runs). A cluster executor's runs
        train on CUDA when its jobs get GPUs."""
        if self.pack is not None:
            return self.pack
        on_cpu = any(str(r.cfg.engine.device).startswith(("cpu", "mps")) for r in runs)
        options = getattr(self.executor, "options", None)
        if options is not None:
            return DEFAULT_PACK_CUDA if int(options.gpus_per_job) > 0 and not on_cpu else 1
        import torch

        return DEFAULT_PACK_CUDA if torch.cuda.is_available() and not on_cpu else 1

    def _executor(self, lock_fd: int | None, pack: int):
        if self.executor is not None:
            if getattr(self.executor, "submits", False):
                self.executor.packs, self.executor.pack_size = pack != 1, max(0, pack)
            return self.executor
        if self.jobs == 1 and not self.gpus:
            return InProcessExecutor(self.echo, pack=pack)
        return SubprocessExecutor(self.jobs, self.gpus, keep_fds=[lock_fd] if lock_fd is not None else [], pack=pack)

    def _jobs(self, executor, todo: list[PlannedRun]) -> list[list[PlannedRun]]:
        """The jobs: one run each, or (an executor that packs) groups of compatible runs, at most pack_size each."""
        if not executor.packs:
            return [[r] for r in todo]
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
        return jobs

    # ------------------------------------------------------------ cluster jobs
    def _submit(self, executor, todo: list[PlannedRun]) -> None:
        """Submit the runs not finished and not held by a queued or running job; record the jobs."""
        from .slurm import is_active, job_states

        records = read_jobs(self.dir)
        held = {}
        if records:
            states = job_states(records)
            for name, job in latest_job_of(records).items():
                if is_active(job, states.get(job["id"], "UNKNOWN")):
                    held[name] = f"{job['id']} ({states.get(job['id'], 'UNKNOWN').lower()})"
        fresh = [r for r in todo if r.name not in held]
        jobs = self._jobs(executor, fresh)
        self.echo(f"sweep {self.plan.spec.name}: {self.result.total} runs in {self.dir}: "
                  f"{len(self.result.skipped)} finished, {len(todo) - len(fresh)} in queued or running jobs, "
                  f"{len(fresh)} to submit as {len(jobs)} job(s): {executor.describe()}")
        for name in [r.name for r in todo if r.name in held][:6]:
            self.echo(f"  {name}: already in job {held[name]}")
        if jobs:
            new = executor.submit(jobs, self.dir)
            record_jobs(self.dir, new)
            for job, runs in zip(new, jobs):
                for r in runs:
                    self.state.set(r, status="queued", job=job["id"], submitted=job["submitted"])
                self.echo(f"  job {job['id']}: {', '.join(r.name for r in runs)}")
            self.result.submitted += [r.name for job in jobs for r in job]
        self.state.save()
        self.echo(f"status: tfdistill sweep {self.plan.spec_path or self.plan.spec.name} --status"
                  + (f" --out-dir {self.dir.parent}" if self.plan.spec_path is None else ""))

    # ------------------------------------------------------------ local execution
    def _execute(self, executor: Executor, todo: list[PlannedRun]) -> None:
        jobs = self._jobs(executor, todo)
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
                for st in self.state.runs.values():
                    if st.get("status") == "running":
                        st.update(status="interrupted", ended=time.time())
                self.state.save()
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
            self.state.set(run, status="running", attempts=int(self.state.get(run).get("attempts", 0)) + 1,
                           started=time.time(), start=mode.what, error=None, returncode=None)
            self.state.save()
            self.echo(f"{self.progress.tag(run.name)} start  {run.name}  ({mode.what})")

    def finished(self, run: PlannedRun, outcome: Outcome) -> None:
        with self._lock:
            now = time.time()
            if outcome.status == "finished":
                s = outcome.summary or {}
                wall = s.get("wall_seconds")
                self.progress.add_wall(wall)
                self.result.finished.append(run.name)
                self.result.trained.append(run.name)
                m = s.get("primary_metric", "top1")  # the run's task's (summary.json; absent: top-1)
                self.state.set(run, status="finished", ended=now, returncode=0, wall_seconds=wall,
                               **{f"last_{m}": s.get(f"last_{m}"), f"best_{m}": s.get(f"best_{m}")})
                self.echo(f"{self.progress.tag(run.name)} done   {run.name}  last {pct(s.get(f'last_{m}'))}  best "
                          f"{pct(s.get(f'best_{m}'))}" + ("" if m == "top1" else f" ({m})")
                          + f"  in {hms(wall)}  | {self._progress()}")
            elif outcome.status == "interrupted":
                self.state.set(run, status="interrupted", ended=now)
            else:
                self.result.failed.append(run.name)
                run.run_dir.mkdir(parents=True, exist_ok=True)
                (run.run_dir / FAILED_MARKER).write_text(
                    f"{outcome.error}\nexit code: {outcome.returncode}\nlog: {outcome.log}\n"
                    f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                self.state.set(run, status="failed", ended=now, returncode=outcome.returncode, error=outcome.error,
                               log=outcome.log)
                code = f"exit {outcome.returncode}" if outcome.returncode is not None else "exception"
                self.echo(f"{self.progress.tag(run.name)} FAILED {run.name}  ({code}) {outcome.error}"
                          + (f"  [log {outcome.log}]" if outcome.log else "") + f"  | {self._progress()}")
            self.state.save()

    def _progress(self) -> str:
        return self.progress.line(len(self.result.finished), len(self.result.failed))

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


# ------------------------------------------------------------------------------------------------ entry points
def run_sweep(plan: Plan, *, jobs: int = 1, gpus: Sequence[str] | None = None, dry_run: bool = False,
              only: list[str] | None = None, retry_failed: bool = True, echo: Callable[[str], None] = print,
              executor=None, pack: int | None = None) -> SweepResult:
    """Train (or, with ``dry_run``, list) the plan's runs; see the module docs for skip/resume/failure rules.

    ``pack``: up to this many compatible runs (same data, engine settings and epochs: CE and TFD, several seeds,
    variants) train as one packed group in one process -- in this process for ``jobs=1``, else one process per group
    (``--jobs``/``--gpus`` spread the groups); 1: no packing, 0: no limit, None: :data:`DEFAULT_PACK_CUDA` on CUDA,
    1 on the CPU. ``executor`` replaces the default (in-process for ``jobs=1``, else subprocesses); a submitting one
    (:class:`~.slurm.SlurmExecutor`) submits one cluster job per group and returns."""
    sweep = Sweep(plan, jobs=jobs, gpus=gpus, echo=echo, retry_failed=retry_failed, executor=executor, pack=pack)
    runs = plan.select(only)
    return sweep.dry_run(runs) if dry_run else sweep.run(runs)
