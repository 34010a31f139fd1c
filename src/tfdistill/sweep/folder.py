"""The sweep folder's bookkeeping: where each run stands (new / restart / resume / finished / failed), the state
file, the submitted-jobs record and the folder lock.

The sweep folder ``<out_dir>/<name>/`` holds the run directories and:

* ``sweep.yaml`` -- the resolved spec and its expansion (the report reads labels and the paper's numbers there);
* ``configs/<run>.yaml`` -- the exact validated config each run trains (``tfdistill train configs/<run>.yaml``);
* ``sweep_state.json`` -- per run: status, attempts, exit code, last error line, wall time (informational: the
  run directories are the truth -- ``summary.json`` means finished, ``last.pt`` means resumable);
* ``jobs.json`` -- the cluster jobs submitted for the runs (``--executor slurm``): job id, runs, submission time;
* ``jobs/<job id>/`` -- a cluster job's submitit files and its output (``*_log.out``, ``*_log.err``);
* ``logs/<run>.log`` -- the output of subprocess runs (and the traceback of a failed in-process run);
* ``<run>/FAILED`` -- the last error line of a failed run (removed when the run is retried);
* ``.sweep.lock`` -- held while a sweep (or a training process it started) works on the folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from .. import rundir, runs
from ..config import to_dict, to_yaml
from ..rundir import FAILED_MARKER, config_diff, hold_flock, write_text_atomic
from ..runs import StartMode, keys_added_since
from .spec import Plan, PlannedRun

STATE_FILE = "sweep_state.json"
SPEC_FILE = "sweep.yaml"
LOCK_FILE = ".sweep.lock"
JOBS_FILE = "jobs.json"
JOBS_DIR = "jobs"


# ------------------------------------------------------------------------------------------------ one run
def is_finished(run: PlannedRun) -> bool:
    return rundir.is_finished(run.run_dir)


def is_failed(run: PlannedRun) -> bool:
    return (run.run_dir / FAILED_MARKER).is_file()


def read_summary(run: PlannedRun) -> dict | None:
    try:
        return json.loads((run.run_dir / rundir.SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def start_mode(run: PlannedRun) -> StartMode:
    """How to (re)start ``run`` (:func:`tfdistill.runs.start_mode` of its folder)."""
    return runs.start_mode(run.run_dir, int(run.cfg.epochs))


def run_status(run: PlannedRun) -> str:
    """``finished``, ``failed``, or how ``run`` would start (:func:`tfdistill.runs.run_status` of its folder)."""
    return runs.run_status(run.run_dir, int(run.cfg.epochs))


def conflicts(runs: list[PlannedRun]) -> list[tuple[str, str]]:
    """(run, differing keys) for runs trained (finished or resumable) with a config other than the planned one."""
    out = []
    for r in runs:
        stored = r.run_dir / rundir.CONFIG_FILE
        if stored.is_file() and (is_finished(r) or rundir.is_resumable(r.run_dir)):
            old, planned = OmegaConf.to_container(OmegaConf.load(stored)), to_dict(r.cfg)
            diff = config_diff(old, planned, ignore=rundir.RESUME_FREE_KEYS | keys_added_since(old, planned),
                               auto_matches=True)
            if diff:
                out.append((r.name, ", ".join(diff[:4])))
    return out


def missing_teachers(runs: list[PlannedRun]) -> list[str]:
    out = []
    for r in runs:
        ckpt = str(r.cfg.teacher.checkpoint)
        if r.teacher and not is_finished(r) and not Path(ckpt).is_file() and f"{r.teacher}: {ckpt}" not in out:
            out.append(f"{r.teacher}: {ckpt}")
    return out


def append_log(run: PlannedRun, text: str) -> Path:
    """Append ``=== <time> <text>`` to ``logs/<run>.log``; returns its path."""
    log = run.sweep_dir / "logs" / f"{run.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {text}")
    return log


# ------------------------------------------------------------------------------------------------ the folder
def write_plan(plan: Plan) -> None:
    """``sweep.yaml``, ``configs/<run>.yaml`` (rewritten only when changed), ``logs/``."""
    d = plan.sweep_dir
    (d / "configs").mkdir(parents=True, exist_ok=True)
    (d / "logs").mkdir(exist_ok=True)
    header = ("# Written by `tfdistill sweep`: the resolved spec and its expansion into runs.\n"
              "# `tfdistill report` reads the labels and the paper's numbers from here.\n")
    write_text_atomic(d / SPEC_FILE, header + OmegaConf.to_yaml(OmegaConf.create(plan.resolved())))
    for r in plan.runs:
        text = to_yaml(r.cfg)
        if not r.config_path.is_file() or r.config_path.read_text() != text:
            write_text_atomic(r.config_path, text)


class SweepState:
    """``sweep_state.json``: per run status, attempts, times, errors (the run directories stay the truth)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.path = plan.sweep_dir / STATE_FILE
        self.runs: dict[str, dict] = {}

    def load(self) -> "SweepState":
        self.runs = read_state(self.plan.sweep_dir)
        for r in self.plan.runs:
            st = self.runs.setdefault(r.name, {"status": "pending", "attempts": 0})
            if is_finished(r):
                st["status"] = "finished"
            elif st.get("status") in ("running", "finished"):  # a killed sweep, or a deleted summary
                st["status"] = "interrupted"
        return self

    def set(self, run: PlannedRun, **fields) -> None:
        self.runs.setdefault(run.name, {}).update(fields)

    def get(self, run: PlannedRun) -> dict:
        return self.runs.setdefault(run.name, {})

    def save(self) -> None:
        counts: dict[str, int] = {}
        for st in self.runs.values():
            counts[st.get("status", "pending")] = counts.get(st.get("status", "pending"), 0) + 1
        data = {"sweep": str(self.plan.spec.name), "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                "total": len(self.plan.runs), "counts": counts,
                "runs": {r.name: self.runs.get(r.name, {}) for r in self.plan.runs}}
        write_text_atomic(self.path, json.dumps(data, indent=1, default=str) + "\n")


def read_state(sweep_dir: Path) -> dict[str, dict]:
    try:
        return dict(json.loads((sweep_dir / STATE_FILE).read_text()).get("runs", {}))
    except (OSError, ValueError, AttributeError):
        return {}


# ------------------------------------------------------------------------------------------------ cluster jobs
def read_jobs(sweep_dir: Path) -> list[dict]:
    """The submitted jobs (``jobs.json``), oldest first: ``{"id", "cluster", "runs", "submitted", "folder"}``."""
    try:
        jobs = json.loads((sweep_dir / JOBS_FILE).read_text()).get("jobs", [])
        return [j for j in jobs if isinstance(j, dict) and j.get("id")]
    except (OSError, ValueError, AttributeError):
        return []


def record_jobs(sweep_dir: Path, new: list[dict]) -> None:
    jobs = read_jobs(sweep_dir) + list(new)
    write_text_atomic(sweep_dir / JOBS_FILE, json.dumps({"jobs": jobs}, indent=1) + "\n")


def latest_job_of(jobs: list[dict]) -> dict[str, dict]:
    """Run name -> the last job submitted for it."""
    out: dict[str, dict] = {}
    for j in jobs:
        for name in j.get("runs", []):
            out[name] = j
    return out


# ------------------------------------------------------------------------------------------------ the lock
class FolderLock:
    """An exclusive ``flock`` on ``<sweep>/.sweep.lock``, released when this process (and its children) end."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "FolderLock":
        self.fd = hold_flock(self.path, f"sweep folder {self.path.parent} is in use by another tfdistill sweep "
                                        "(pid {pid}) or by training processes it started; wait for them or stop them")
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_locked(folder: Path) -> bool:
    """Whether a sweep (or a training process it started) holds the folder's lock now."""
    try:
        import fcntl
    except ImportError:
        return False
    path = folder / LOCK_FILE
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
