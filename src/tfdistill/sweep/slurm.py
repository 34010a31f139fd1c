"""The Slurm executor: one cluster job per packed group, submitted through submitit, requeued and resumed from
``last.pt`` when it is preempted or times out.

``tfdistill sweep SPEC --executor slurm [--partition P] [--time 4:00:00] [--gpus-per-job 1] [--cpus-per-job 8]
[--array-parallelism 16]`` (or the spec's ``launcher:`` section; the command line wins) submits the runs still to
train as one job array and returns; ``--status`` shows where each run stands. Each job (a :class:`GroupJob`) trains
its runs as one packed group, exactly as ``tfdistill _child`` does on this machine; its output goes to
``<sweep>/jobs/<job id>/``.

Requeue: Slurm (``--signal USR2@90``, set by submitit) or a preemption sends the job SIGUSR2. The job stops training
as at Ctrl-C (the runs keep their ``last.pt``), then submitit's own handler calls :meth:`GroupJob.checkpoint` (the
same callable again), requeues the job and exits; the requeued job resumes every run from its ``last.pt``
(``--resume``, bit-exact). Running the sweep command again submits only runs that are neither finished nor in a
queued or running job (``jobs.json`` records every submission).

submitit is optional (``pip install -e ".[slurm]"``); nothing here imports it before a job is submitted or queried.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DivergenceError
from ..rundir import FAILED_MARKER, write_text_atomic
from .folder import JOBS_DIR, append_log, is_finished, start_mode
from .schema import LauncherOptions
from .spec import PlannedRun

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING", "RESIZING",
          "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT"}
"""Slurm job states in which the job still holds (or will hold) its runs: a new sweep does not submit them again."""
UNKNOWN_GRACE_S = 600
"""A job sacct does not list (yet) counts as queued for this long after its submission."""
MAX_TIMEOUTS = 50
"""How often a job may time out and be requeued (each time it resumes from last.pt)."""
HEARTBEAT = "job.json"


def need_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError('--executor slurm needs submitit: pip install -e ".[slurm]" (or pip install submitit)') \
            from None
    return submitit


# ------------------------------------------------------------------------------------------------ options
def launcher_options(spec_launcher: Any = None, **cli: Any) -> LauncherOptions:
    """The spec's ``launcher:`` section with the command line's options (those not None) on top, checked."""
    values = {f.name: getattr(LauncherOptions(), f.name) for f in fields(LauncherOptions)}
    if spec_launcher is not None:
        from omegaconf import OmegaConf

        values.update(OmegaConf.to_container(spec_launcher) if not isinstance(spec_launcher, dict) else spec_launcher)
    values.update({k: v for k, v in cli.items() if v is not None})
    out = LauncherOptions(**values)
    parse_minutes(out.time)
    for key in ("gpus_per_job", "cpus_per_job", "array_parallelism"):
        if int(getattr(out, key)) < 0:
            raise ConfigError(f"--{key.replace('_', '-')} {getattr(out, key)}: give a number >= 0")
    return out


def parse_minutes(text: Any) -> int:
    """``90`` / ``"90"`` (minutes), ``"1:30:00"`` or ``"1-12:00:00"`` -> minutes."""
    s = str(text).strip()
    try:
        days = 0
        if "-" in s:
            d, s = s.split("-", 1)
            days = int(d)
        parts = [int(p) for p in s.split(":")] if s else []
        if len(parts) == 1 and not days:
            minutes = parts[0]
        elif 1 <= len(parts) <= 3:
            h, m, sec = (parts + [0, 0])[:3] if len(parts) < 3 else parts
            minutes = days * 1440 + h * 60 + m + (1 if sec else 0)
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--time {text!r}: give minutes (240) or H:MM:SS (4:00:00) or D-HH:MM:SS") from None
    if minutes < 1:
        raise ConfigError(f"--time {text!r}: a job needs at least 1 minute")
    return minutes


# ------------------------------------------------------------------------------------------------ the job
class Preempted(KeyboardInterrupt):
    """Raised in the training when the job gets the preemption/timeout signal: the engine stops as at Ctrl-C."""


@dataclass
class GroupJob:
    """One cluster job: the runs of a packed group (their config files), trained as ``tfdistill _child`` would.

    The start mode of each run is decided when the job starts, from its run directory, so a requeued job resumes
    what the preempted one checkpointed."""

    sweep_dir: str
    names: list[str]
    configs: list[str]

    def __call__(self) -> dict[str, str]:
        from ..config import load_config
        from ..engine import build_group

        runs = [_Run(Path(self.sweep_dir), n) for n in self.names]
        self._heartbeat("running")
        todo = [(r, c) for r, c in zip(runs, self.configs) if not is_finished(r)]  # type: ignore[arg-type]
        out = {r.name: "finished" for r in runs if is_finished(r)}  # type: ignore[arg-type]
        if not todo:
            return out
        modes = [start_mode(r) for r, _ in todo]  # type: ignore[arg-type]
        for (r, _), m in zip(todo, modes):
            (r.run_dir / FAILED_MARKER).unlink(missing_ok=True)
            append_log(r, f"job {_job_id()} on {socket.gethostname()}: {m.what}\n")  # type: ignore[arg-type]
        sig = _preempt_signal()
        previous = signal.getsignal(sig)

        def preempted(signum, frame):
            raise Preempted

        signal.signal(sig, preempted)
        try:
            results = build_group([load_config(c) for _, c in todo],
                                  modes=[(m.resume, m.overwrite) for m in modes], echo=print).fit()
        except Preempted:
            signal.signal(sig, previous)
            self._heartbeat("requeueing")
            print(f"tfdistill: job {_job_id()}: preempted or timed out; the runs keep their last.pt", flush=True)
            if callable(previous):  # submitit's handler: checkpoint() -> requeue -> exit
                previous(sig, None)
            raise
        finally:
            signal.signal(sig, previous)
        for (r, _), res in zip(todo, results):
            out[r.name] = f"failed: {res}" if isinstance(res, DivergenceError) else "finished"
        self._heartbeat("ended")
        return out

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's hook on preemption/timeout: the same job again (it resumes each run from its last.pt)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)

    def _heartbeat(self, what: str) -> None:
        """``jobs/<id>/job.json``: what the job does now, where, and its attempt (for ``--status``)."""
        folder = Path(self.sweep_dir) / JOBS_DIR / _job_id()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            old = json.loads((folder / HEARTBEAT).read_text()) if (folder / HEARTBEAT).is_file() else {}
        except (OSError, ValueError):
            old = {}
        attempts = int(old.get("attempts", 0)) + (what == "running")
        write_text_atomic(folder / HEARTBEAT, json.dumps({
            "state": what, "host": socket.gethostname(), "pid": os.getpid(), "attempts": attempts,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")


@dataclass
class _Run:
    """The part of a :class:`PlannedRun` a job needs (the plan itself stays on the submitting machine)."""

    sweep_dir: Path
    name: str

    @property
    def run_dir(self) -> Path:
        return self.sweep_dir / self.name

    @property
    def cfg(self):
        from ..config import load_config

        return load_config(str(self.sweep_dir / "configs" / f"{self.name}.yaml"))


def _job_id() -> str:
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        if os.environ.get(key):
            if key == "SLURM_ARRAY_JOB_ID":
                return f"{os.environ[key]}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
            return os.environ[key]
    return str(os.getpid())


def _preempt_signal() -> int:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


# ------------------------------------------------------------------------------------------------ the executor
class SlurmExecutor:
    """Submits jobs (lists of runs) through submitit. ``cluster``: ``slurm``, or ``local`` (submitit's local
    executor: the same jobs as subprocesses of this machine, for tests and a dry check of a spec)."""

    submits = True

    def __init__(self, options: LauncherOptions, pack: int = 1, cluster: str = "slurm") -> None:
        need_submitit()
        if cluster == "slurm":
            import shutil

            if shutil.which("sbatch") is None:
                raise ConfigError("--executor slurm: sbatch not found on this machine; run the sweep on a Slurm "
                                  "login node, or use --executor local")
        self.options = options
        self.cluster = cluster
        self.packs = int(pack) != 1
        self.pack_size = max(0, int(pack))
        self.jobs: list[Any] = []
        """The submitit Job objects of this session (tests interrupt them)."""

    def group_key(self, run: PlannedRun) -> str:
        from ..runs import pack_key

        return pack_key(run.cfg)

    def can_pack(self, run: PlannedRun) -> bool:
        return self.packs

    def describe(self) -> str:
        o = self.options
        what = [f"{self.cluster} jobs", f"time {o.time}", f"{o.gpus_per_job} GPU(s) and {o.cpus_per_job} CPUs each"]
        if o.partition:
            what.insert(1, f"partition {o.partition}")
        if o.array_parallelism:
            what.append(f"at most {o.array_parallelism} at once")
        return ", ".join(what)

    def _executor(self, sweep_dir: Path):
        submitit = need_submitit()
        o = self.options
        ex = submitit.AutoExecutor(folder=sweep_dir / JOBS_DIR / "%j", cluster=self.cluster,
                                   slurm_max_num_timeout=MAX_TIMEOUTS, local_max_num_timeout=MAX_TIMEOUTS)
        params: dict[str, Any] = {"name": f"tfd-{sweep_dir.name}", "timeout_min": parse_minutes(o.time), "nodes": 1,
                                  "tasks_per_node": 1, "cpus_per_task": int(o.cpus_per_job),
                                  "gpus_per_node": int(o.gpus_per_job)}
        if self.cluster == "local":
            params.pop("gpus_per_node") if not int(o.gpus_per_job) else None
        if o.mem_gb:
            params["mem_gb"] = float(o.mem_gb)
        if o.partition:
            params["slurm_partition"] = o.partition
        if o.array_parallelism:
            params["slurm_array_parallelism"] = int(o.array_parallelism)
        if o.additional:
            params["slurm_additional_parameters"] = dict(o.additional)
        ex.update_parameters(**params)
        return ex

    def submit(self, jobs: Sequence[Sequence[PlannedRun]], sweep_dir: Path) -> list[dict]:
        """Submit ``jobs`` as one job array; returns their records for ``jobs.json``."""
        ex = self._executor(sweep_dir)
        calls = [GroupJob(str(sweep_dir), [r.name for r in job], [str(r.config_path) for r in job]) for job in jobs]
        with _package_on_pythonpath():
            with ex.batch():
                submitted = [ex.submit(call) for call in calls]
        self.jobs += submitted
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        records = []
        for job, runs in zip(submitted, jobs):
            records.append({"id": str(job.job_id), "cluster": self.cluster, "runs": [r.name for r in runs],
                            "submitted": now, "submitted_s": time.time(),
                            "folder": str(sweep_dir / JOBS_DIR / str(job.job_id))})
            for r in runs:
                append_log(r, f"submitted as {self.cluster} job {job.job_id}: output in "
                              f"{JOBS_DIR}/{job.job_id}/\n")
        return records


@contextlib.contextmanager
def _package_on_pythonpath():
    """Jobs inherit this environment (sbatch's default, submitit's local controller): they import this tfdistill."""
    old = os.environ.get("PYTHONPATH")
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = root + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


# ------------------------------------------------------------------------------------------------ job states
def job_states(records: Sequence[dict]) -> dict[str, str]:
    """Job id -> its state now (Slurm's names: PENDING, RUNNING, COMPLETED, FAILED, ..., or UNKNOWN)."""
    out: dict[str, str] = {}
    slurm = [j for j in records if j.get("cluster", "slurm") == "slurm"]
    for j in records:
        if j.get("cluster") == "local":
            out[j["id"]] = _local_state(j)
    if slurm:
        try:
            import submitit

            for j in slurm:
                job = submitit.SlurmJob(folder=j.get("folder", "."), job_id=j["id"])
                out[j["id"]] = str(job.state).split()[0]
        except Exception:  # no submitit, no sacct: unknown
            for j in slurm:
                out.setdefault(j["id"], "UNKNOWN")
    return out


def _local_state(job: dict) -> str:
    """A submitit local job: its id is the pid of its controller process."""
    pid = str(job["id"])
    if not pid.isdigit():
        return "UNKNOWN"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        alive = stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(int(pid), 0)
            alive = True
        except OSError:
            alive = False
    if alive:
        return "RUNNING"
    return "COMPLETED" if list(Path(job.get("folder", ".")).glob(f"{pid}_*_result.pkl")) else "FAILED"


def is_active(job: dict, state: str) -> bool:
    if state in ACTIVE:
        return True
    return state == "UNKNOWN" and time.time() - float(job.get("submitted_s", 0)) < UNKNOWN_GRACE_S


def heartbeat(job: dict) -> dict:
    try:
        return json.loads((Path(job.get("folder", ".")) / HEARTBEAT).read_text())
    except (OSError, ValueError):
        return {}
