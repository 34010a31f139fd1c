"""The run directory: the contract between the engine, sweeps and reports -- its one home.

``<out_dir>/<name>/``: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one JSON object per epoch),
``summary.json`` (final figures + provenance; its existence means "finished"), ``last.pt``, ``best.pt``,
``train.log`` (the epoch lines), ``fingerprint.json`` (what the run's data, initial weights, first-epoch order
and environment were: :mod:`tfdistill.fingerprint`), optional TensorBoard events under ``tb/``; a sweep adds a
``FAILED`` marker to a run that stopped with an error.

The figures a report reads (the metric contract): ``summary.json`` may name the run's headline metric as
``"primary_metric": "<m>"`` (absent: ``"top1"``, classification); it then holds ``best_<m>`` and ``last_<m>`` (the
best evaluated and the last epoch's value, higher is better), and the rows of ``metrics.jsonl`` hold ``test_<m>``
for every evaluated epoch. ``tfdistill report`` tabulates whatever ``<m>`` is.

Everything the three layers must agree on lives here: the file names and markers, when a run is finished or
resumable, which config keys may differ on resume (:data:`RESUME_FREE_KEYS`) and which do not define an experiment
(:data:`NON_EXPERIMENT_KEYS`), the keys that name a run in a grid (:data:`RUN_IDENTITY_KEYS`), the config diff
and atomic writes. The engine, ``tfdistill.sweep`` and ``tfdistill.report`` import it; it imports none of them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import torch

from .errors import RunDirError, signal_name

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"
"""Held (``flock``) by the process training the run: a second process started on the same run directory is refused
(the kernel releases it when the holder dies, even by SIGKILL)."""
FINGERPRINT_FILE = "fingerprint.json"
"""The run's fingerprint record (data identity, initial weights, first-epoch order, environment), written and read
by :mod:`tfdistill.fingerprint` only."""
PRIMARY_METRIC = "top1"
"""The headline metric of a run whose summary.json names none (``primary_metric``)."""
FAILED_MARKER = "FAILED"
"""Written by a sweep into a run directory whose run stopped with an error (its text: the reason)."""
MARKERS = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, LAST_FILE)
"""Any of these makes a folder a tfdistill run directory."""

RESUME_FREE_KEYS = frozenset({"name", "out_dir", "engine.progress", "engine.tensorboard", "engine.device",
                              "data.num_workers", "data.root", "data.download", "teacher.checkpoint",
                              "engine.save_epochs"})
"""Config keys that may differ between a run and its resumption (they do not change the computation)."""
NON_EXPERIMENT_KEYS = RESUME_FREE_KEYS | {"seed", "seeds"}
"""Config keys that do not define an experiment: the seed, and those that do not change the computation. Runs
whose configs agree on every other key are seeds of one experiment (the report groups them)."""
RUN_IDENTITY_KEYS = ("name", "out_dir", "seed", "seeds", "model.name", "method.name", "teacher.model",
                     "teacher.checkpoint")
"""Keys that name one run of a grid (where it lives, its student, method, seed and teacher): a sweep sets them
itself, so a spec's overrides may not."""


def flat_keys(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_keys(v, key + "."))
        else:
            out[key] = v
    return out


AUTO_KEYS = frozenset({"engine.precision", "engine.channels_last", "engine.cuda_graphs"})
"""Keys whose value ``auto`` the engine resolves for the device (``tfdistill.engine.auto``); a run directory's
config.yaml holds the resolved value."""


def config_diff(a: dict, b: dict, ignore: frozenset[str] | set[str] = RESUME_FREE_KEYS, *,
                auto_matches: bool = False) -> list[str]:
    """Sorted dotted keys whose values differ between two (nested) configs, apart from ``ignore``.

    ``auto_matches``: an :data:`AUTO_KEYS` value ``auto`` on either side matches any value (a planned config
    against a run directory's resolved one; the engine compares the resolved values when it resumes)."""
    fa, fb = flat_keys(a), flat_keys(b)

    def same(k: str) -> bool:
        va, vb = fa.get(k), fb.get(k)
        return va == vb or (auto_matches and k in AUTO_KEYS and "auto" in (va, vb))

    return sorted(k for k in set(fa) | set(fb) if k not in ignore and not same(k))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (never a torn file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash (or SIGKILL) at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_HELD: dict[str, int] = {}
"""Run directories this process holds the lock of: resolved path -> file descriptor."""


def _lock_key(path: Path) -> str:
    return str(path.resolve())


def is_finished(path: str | Path) -> bool:
    """A run is finished exactly when its ``summary.json`` exists."""
    return (Path(path) / SUMMARY_FILE).is_file()


def is_resumable(path: str | Path) -> bool:
    """An unfinished run can continue from its ``last.pt``."""
    return (Path(path) / LAST_FILE).is_file()


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.replaced: Path | None = None
        """With ``--overwrite``: where the replaced run waits (``.<name>.replaced`` beside it) until the new run has
        written its first checkpoint (:meth:`commit`), or is put back if the new run stops before (:meth:`rollback`)."""

    # --------------------------------------------------------------- paths
    config = property(lambda self: self.path / CONFIG_FILE)
    metrics = property(lambda self: self.path / METRICS_FILE)
    summary = property(lambda self: self.path / SUMMARY_FILE)
    last = property(lambda self: self.path / LAST_FILE)
    best = property(lambda self: self.path / BEST_FILE)
    log = property(lambda self: self.path / LOG_FILE)

    def is_run_dir(self) -> bool:
        return any((self.path / m).exists() for m in MARKERS)

    def finished(self) -> bool:
        return is_finished(self.path)

    def prepare(self, *, resume: bool, overwrite: bool, dry: bool = False) -> bool:
        """Create the folder. Returns True when an interrupted run should be resumed from ``last.pt``.

        With ``dry`` only the checks run (nothing is created or deleted): the engine checks first, builds the run
        (where bad input is found), and only then prepares for real -- so a refused run leaves no empty folder and
        ``--overwrite`` deletes the old run only once the new one can start."""
        p = self.path
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite exclude each other")
        if p.exists() and not p.is_dir():
            raise RunDirError(f"run directory {p} exists and is not a directory")
        exists = p.is_dir() and any(p.iterdir())
        if exists and resume:
            if self.last.is_file():
                return True
            self.check_not_in_use()  # a run in its first epoch has no last.pt yet
            if self.is_run_dir():
                raise RunDirError(f"nothing to resume in {p}: it has no last.pt; use --overwrite to start over")
            raise RunDirError(f"{p} is not a tfdistill run directory; choose another run name")
        if exists and overwrite:
            if not self.is_run_dir():
                raise RunDirError(f"refusing to --overwrite {p}: it is not a tfdistill run directory")
            if dry:
                return False
            backup = p.with_name(f".{p.name}.replaced")
            if backup.exists():
                shutil.rmtree(backup)  # left by a replacing run that was killed (SIGKILL) before it could decide
            self.unlock()  # the new folder gets its own lock
            os.replace(p, backup)
            self.replaced = backup
        elif exists:
            raise RunDirError(f"run directory {p} already exists; pass --resume to continue it or --overwrite "
                              f"to replace it (or choose another name=...)")
        if not dry:
            p.mkdir(parents=True, exist_ok=True)
        return False

    def commit(self) -> None:
        """The new run has a checkpoint: the run it replaced (``--overwrite``) is deleted now."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def rollback(self) -> bool:
        """The new run stopped before its first checkpoint: put the run it replaced back. True if one was."""
        if self.replaced is None or not self.replaced.is_dir():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.replaced, self.path)
        self.replaced = None
        return True

    # --------------------------------------------------------------- one process per run directory
    def lock(self) -> None:
        """Hold this run directory (which exists) for this process; raises RunDirError naming the process that holds
        it already. Holding it again from the same process is a no-op (an in-process sweep, scripts, tests)."""
        key = _lock_key(self.path)
        if key in _HELD:
            return
        fd = hold_flock(self.path / LOCK_FILE, self._in_use("{pid}"))
        if fd is None:
            return
        _HELD[key] = fd

    def _in_use(self, pid: str) -> str:
        return (f"run directory {self.path} is in use by another tfdistill process (pid {pid}); wait for it to end "
                "or stop it (SIGTERM stops it gracefully), then --resume")

    def check_not_in_use(self) -> None:
        """RunDirError (the message of :meth:`lock`) if another process holds this run directory now; takes nothing."""
        if _lock_key(self.path) in _HELD or not (self.path / LOCK_FILE).is_file():
            return
        try:
            fd = hold_flock(self.path / LOCK_FILE, self._in_use("{pid}"))
        except OSError:  # unreadable: lock() will say so if it matters
            return
        if fd is not None:
            os.close(fd)

    def unlock(self) -> None:
        """Release this process's hold. A finished run's lock file is removed too (its ``summary.json`` exists:
        nothing will resume it); an unfinished one keeps it, empty of meaning once released."""
        fd = _HELD.pop(_lock_key(self.path), None)
        if fd is not None:
            if self.finished():
                with contextlib.suppress(OSError):
                    (self.path / LOCK_FILE).unlink()
            os.close(fd)

    # --------------------------------------------------------------- writing
    def write_text_atomic(self, path: Path, text: str) -> None:
        write_text_atomic(path, text)

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(_jsonable(row)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line after a kill
                    break
        return rows

    def epochs_done(self) -> int:
        """Training epochs recorded in ``metrics.jsonl`` (pre-stage rows, ``epoch`` 0, are not epochs)."""
        return sum(1 for row in self.read_metrics() if row.get("epoch", 0) > 0)

    def truncate_metrics(self, epochs_done: int) -> None:
        """Keep the metrics of epochs 1..epochs_done (a resumed run redoes anything later)."""
        rows = [r for r in self.read_metrics() if r.get("epoch", 0) <= epochs_done]
        self.write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def write_summary(self, summary: dict) -> None:
        self.write_text_atomic(self.summary, json.dumps(_jsonable(summary), indent=2) + "\n")

    def record_stop(self, exc: BaseException, epochs_done: int, epochs: int) -> str:
        """Record why the run stopped. Returns the line written to ``train.log`` (or the note of the removal).

        * An interrupt (SIGINT/Ctrl-C, SIGTERM) after a checkpoint: ``train.log`` says so; the run stays resumable
          and unmarked (reports list it as unfinished; ``--resume`` or a sweep continues it).
        * An interrupt, or an OSError (disk full, read-only, vanished), before the first checkpoint: the folder is
          removed. Not one epoch was completed, so it
          holds nothing but the config, and the same command can simply be run again (no ``--overwrite``).
        * Any error (divergence, a crash, a full disk): ``train.log`` says why and a ``FAILED`` marker holds the
          reason. The folder is kept even without a checkpoint: its ``config.yaml`` and ``train.log`` are the record
          of what was tried and why it stopped (a setting that diverges in epoch 1 is a result, e.g. in an
          alpha/beta ablation), and the marker makes reports and sweeps count it as failed/diverged, not as
          unfinished. ``--resume`` (from a checkpoint), ``--overwrite`` or a sweep's retry starts it again."""
        resumable = self.last.is_file()
        interrupt = isinstance(exc, KeyboardInterrupt)
        if interrupt and not resumable:
            shutil.rmtree(self.path, ignore_errors=True)
            return (f"stopped by {signal_name(exc)} in epoch {epochs_done + 1}/{epochs}, before the first checkpoint: "
                    f"removed {self.path} (nothing to keep); run the same command to start again")
        if isinstance(exc, OSError) and not resumable:  # the disk, not the run: nothing to keep either
            shutil.rmtree(self.path, ignore_errors=True)
            return (f"stopped in epoch {epochs_done + 1}/{epochs}, before the first checkpoint: {type(exc).__name__}: "
                    f"{exc}; removed {self.path} (nothing to keep); run the same command again once the disk can "
                    f"be written")
        if interrupt:
            why = f"interrupted by {signal_name(exc)}"
        else:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            why = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        where = f"after epoch {epochs_done}/{epochs}"
        if interrupt:
            line = f"stopped {where}: {why}; continue with `tfdistill train --resume {self.path}`"
        elif resumable and isinstance(exc, OSError):
            line = (f"stopped {where}: {why}; last.pt holds epoch {epochs_done}: once the disk can be written, "
                    f"continue with `tfdistill train --resume {self.path}`")
        elif resumable:
            line = f"stopped {where}: {why}; last.pt holds epoch {epochs_done}"
        else:
            line = (f"stopped {where}, before the first checkpoint: {why}; nothing to resume, start again with "
                    f"--overwrite")
        try:
            self.log_line(line)
            if not interrupt:
                self.write_text_atomic(self.path / FAILED_MARKER, f"{why}\n{line}\n")
        except OSError:  # the folder is gone or the disk is full: the exception itself still reaches the user
            pass
        return line

    def log_line(self, line: str) -> None:
        with open(self.log, "a") as fh:
            fh.write(line + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the tfdistill source tree ('+dirty' when a tracked file of the package is modified: results or
    docs being written beside a run do not count), or 'unknown': read once per process, at its first run's start
    (the fingerprint), so a run's summary names the code this process loaded, not the commit the tree had reached
    when training ended."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def hold_flock(path: Path, in_use: str) -> int | None:
    """An exclusive, non-blocking ``flock`` on the file ``path`` (created), which then holds this process's pid;
    returns its descriptor (closing it releases the lock; None where there is no ``fcntl``: no locking). Held by
    another process: RunDirError(``in_use`` with ``{pid}`` = the holder's pid)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirError(in_use.format(pid=holder)) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
