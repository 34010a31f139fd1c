"""What a sweep prints: progress lines with an ETA, one-line errors, and the ``--status`` table."""

from __future__ import annotations

import math
from typing import Callable, Iterable

from .. import rundir
from ..rundir import FAILED_MARKER
from .folder import (JOBS_FILE, is_failed, is_finished, is_locked, latest_job_of, read_jobs, read_state, read_summary,
                     run_status)
from .spec import Plan, seed_major


def hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def pct(x) -> str:
    return f"{x:.2f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "?"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class Progress:
    """``[i/n]`` tags and the ``3/8 finished, 0 failed, ETA 0:12:00`` line of a running sweep."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = max(1, slots)
        self.total = 0
        self.order: dict[str, int] = {}
        self.walls: list[float] = []

    def tag(self, name: str) -> str:
        return f"[{self.order.get(name, 0):>{len(str(self.total))}}/{self.total}]"

    def add_wall(self, wall) -> None:
        if isinstance(wall, (int, float)):
            self.walls.append(float(wall))

    def line(self, finished: int, failed: int) -> str:
        left = self.total - finished - failed
        eta = None
        if self.walls and left > 0:
            eta = sum(self.walls) / len(self.walls) * math.ceil(left / max(1, min(self.slots, left)))
        return f"{finished}/{self.total} finished, {failed} failed, ETA {hms(eta if left else 0)}"


STATUS_ORDER = ("done", "failed", "running", "queued", "interrupted", "pending")


def print_status(name: str, sweep_dir, rows: Iterable[tuple[str, str, str, str]],
                 echo: Callable[[str], None] = print) -> dict[str, int]:
    """The ``--status`` table: one line per run ``(name, label, status, detail)``, then the counts."""
    rows = list(rows)
    counts: dict[str, int] = {}
    width = max((len(r[0]) for r in rows), default=0)
    lwidth = max((len(r[1]) for r in rows), default=0)
    echo(f"sweep {name}: {len(rows)} runs in {sweep_dir}")
    for run, label, status, detail in rows:
        counts[status] = counts.get(status, 0) + 1
        echo(f"  {run:<{width}}  {label:<{lwidth}}  {status:<11}" + (f"  {detail}" if detail else ""))
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    echo(f"sweep {name}: " + ", ".join(f"{counts[s]} {s}" for s in order))
    return counts


def sweep_status(plan: Plan, only: list[str] | None = None, echo: Callable[[str], None] = print) -> dict[str, int]:
    """``--status``: each run done / failed / running / queued / interrupted / pending, from the sweep folder (state
    file, submitted jobs and their cluster states) and the run directories; returns the counts."""
    runs = seed_major(plan.select(only))
    d = plan.sweep_dir
    records = read_jobs(d)
    by_run = latest_job_of(records)
    states: dict[str, str] = {}
    if records:
        from .slurm import heartbeat, job_states

        states = job_states([j for j in records if j in by_run.values()])
    local = read_state(d)
    busy = is_locked(d)
    rows = []
    for r in runs:
        job = by_run.get(r.name)
        state = states.get(job["id"], "UNKNOWN") if job else ""
        where = f"job {job['id']} ({state.lower()})" if job else ""
        if is_finished(r):
            s = read_summary(r) or {}
            m = s.get("primary_metric", "top1")  # the run's task's (summary.json; absent: top-1)
            rows.append((r.name, r.label, "done", f"last {pct(s.get(f'last_{m}'))}  best {pct(s.get(f'best_{m}'))}"
                         + ("" if m == "top1" else f" ({m})")))
        elif is_failed(r):
            why = (r.run_dir / FAILED_MARKER).read_text().splitlines()
            rows.append((r.name, r.label, "failed", (why[0] if why else "") + (f"  [{where}]" if where else "")))
        elif job and state == "RUNNING":
            beat = heartbeat(job)
            at = f" on {beat['host']}, attempt {beat.get('attempts', 1)}" if beat.get("host") else ""
            rows.append((r.name, r.label, "running", f"{where}{at}; {run_status(r)}"))
        elif job and state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "SUSPENDED",
                               "CONFIGURING") or (job and state == "UNKNOWN" and _is_active(job, state)):
            rows.append((r.name, r.label, "queued", f"{where}; {run_status(r)}"))
        elif job and state not in ("", "UNKNOWN") and _is_active(job, state):
            rows.append((r.name, r.label, "running", f"{where}; {run_status(r)}"))
        elif job:
            rows.append((r.name, r.label, "failed", f"{where} ended before the run finished; {run_status(r)}; "
                                                    f"output in {job.get('folder', '')}"))
        elif busy and local.get(r.name, {}).get("status") == "running":
            rows.append((r.name, r.label, "running", f"by the sweep on this machine; {run_status(r)}"))
        elif rundir.is_resumable(r.run_dir):
            rows.append((r.name, r.label, "interrupted", run_status(r)))
        else:
            rows.append((r.name, r.label, "pending", ""))
    counts = print_status(str(plan.spec.name), d, rows, echo)
    if records:
        echo(f"jobs: {len(records)} submitted ({d / JOBS_FILE}); output of each in its folder")
    return counts


def _is_active(job: dict, state: str) -> bool:
    from .slurm import is_active

    return is_active(job, state)
