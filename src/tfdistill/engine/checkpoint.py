"""Checkpoints: a run's saver (:class:`CheckpointSaver`: last.pt, best.pt, epoch_N.pt and resuming from last.pt),
atomic writes, ``weights_only=True`` loads with clear errors, random-stream states."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import CheckpointError
from ..rundir import RunDir, save_atomic
from .distributed import DistInfo, broadcast_or_raise, gather_object

CHECKPOINT_FORMAT = "tfdistill/1"
PROGRESS_KEYS = ("epoch", "best_top1", "best_epoch", "pre_done")
"""The counters of a run's progress a checkpoint holds besides the state dicts."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or unusable file raises :class:`CheckpointError`
    with one line naming the file and what is wrong with it (a text file, a truncated or damaged archive, a plain
    pickle, Python objects that ``weights_only=True`` refuses). torch's own warnings and its advice to load with
    ``weights_only=False`` (which would run arbitrary code from the file) are not passed on."""
    import warnings

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (a run directory? give its best.pt "
                              f"or last.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, truncated files, disallowed globals
        raise CheckpointError(f"unreadable checkpoint {path}: {_diagnose(path, exc)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(obj).__name__})")
    return obj


def _diagnose(path: Path, exc: Exception) -> str:
    """What is wrong with a file that ``torch.load(weights_only=True)`` refused, in a few words."""
    import re
    import zipfile

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(512)
    if size == 0:
        return "the file is empty (0 bytes)"
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return (f"a truncated or damaged torch archive ({size:,} bytes; an interrupted copy or download?)")
        glob = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if glob:
            return (f"it holds Python objects ({glob.group(1)}), not only tensors; tfdistill loads checkpoints "
                    f"with weights_only=True and does not run code stored in files")
        return f"a damaged torch archive ({type(exc).__name__})"
    if head.startswith(b"\x80"):  # a pickle stream: torch's legacy format or a plain pickle
        return ("a plain pickle, not a torch checkpoint of tensors (or one that holds Python objects); tfdistill "
                "loads checkpoints with weights_only=True and does not run code stored in files")
    try:
        text = head.decode("utf-8")
        if text.isprintable() or all(c.isprintable() or c in "\t\r\n" for c in text):
            return "a text file, not a torch checkpoint"
    except UnicodeDecodeError:
        pass
    return f"not a torch checkpoint ({size:,} bytes of another format)"


def checkpoint_in(path: str | Path) -> Path:
    """``path`` itself, or for a run directory its ``best.pt`` (else ``last.pt``)."""
    p = Path(path)
    if not p.is_dir():
        return p
    for name in ("best.pt", "last.pt"):
        if (p / name).is_file():
            return p / name
    raise CheckpointError(f"no checkpoint in {p}: it has neither best.pt nor last.pt")


def model_state(obj: dict, path: str | Path) -> dict:
    """The model state_dict inside a tfdistill checkpoint, or ``obj`` itself if it is a plain state_dict."""
    if "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"{path} is neither a tfdistill checkpoint nor a state_dict")


def load_model_weights(model: torch.nn.Module, path: str | Path, what: str = "model") -> dict:
    """Load weights into ``model`` strictly, explaining mismatches (classes, architecture) in one line."""
    obj = load_checkpoint(path)
    state = model_state(obj, path)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        arch = ""
        cfg = obj.get("config_yaml")
        if isinstance(cfg, str):
            arch = f" (the checkpoint was trained as {_model_name(cfg)!r})"
        raise CheckpointError(
            f"{what} checkpoint {path} does not match the {type(model).__name__} architecture{arch}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            hint = ""
            if k.endswith(("fc.weight", "fc.bias", "classifier.weight", "linear.weight")):
                hint = f": it was trained for {state[k].shape[0]} classes, this run has {v.shape[0]}"
            raise CheckpointError(f"{what} checkpoint {path} does not match: {k} has shape "
                                  f"{tuple(state[k].shape)} there, {tuple(v.shape)} here{hint}")
    model.load_state_dict(state, strict=True)
    return obj


def _model_name(config_yaml: str) -> str:
    from omegaconf import OmegaConf

    try:
        return str(OmegaConf.create(config_yaml).model.name)
    except Exception:
        return "?"


def rng_state(device: torch.device | None = None) -> dict:
    """The CPU and Python generators, and the generator of the training ``device`` when it is a CUDA device (only
    that one: a run resumed on a node with fewer or other GPUs restores it on its own training device)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    if device is None or device.type != "cuda":
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif isinstance(state.get("cuda"), (list, tuple)) and state["cuda"]:  # checkpoints of tfdistill <= 0.1: all GPUs
        saved = state["cuda"]
        torch.cuda.set_rng_state(saved[min(device.index or 0, len(saved) - 1)], device)


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class CheckpointSaver:
    """A run's checkpoints, in the style of timm's ``CheckpointSaver``: one object that writes and reads them.

    * :meth:`save` after each epoch: ``last.pt`` (everything needed to resume: model, the method's components,
      optimizer, schedule, GradScaler, progress, every rank's random streams, the config), ``best.pt`` when top-1
      improved and ``epoch_N.pt`` for the epochs of ``engine.save_epochs`` (weights, progress, config, meta).
      ``last.pt`` is written last: a kill between the files leaves it at the previous epoch, which a resume trains
      again bit-exactly and so rewrites the others as they were.
    * :meth:`restore`: a resumed run's state from ``last.pt`` (refused, with the differing keys, when the config
      differs from the stored one other than as :func:`tfdistill.runs.resume_changes` allows).

    Under DDP every rank calls both (they are collective); rank 0 alone writes.
    """

    def __init__(self, run_dir: RunDir, *, info: DistInfo, device: torch.device, student: torch.nn.Module,
                 method: Any, optimizer: torch.optim.Optimizer, sched: Any, scaler: Any, save_epochs: Any,
                 config_yaml: Any, meta: Any) -> None:
        """``config_yaml()`` and ``meta()`` give the run's config (YAML text) and its meta data when a checkpoint is
        written (``meta``: what using the weights without the run needs: classes, model, method, data)."""
        self.run_dir, self.info, self.device = run_dir, info, device
        self.student, self.method, self.optimizer, self.sched, self.scaler = student, method, optimizer, sched, scaler
        self.save_epochs = tuple(int(e) for e in (save_epochs or ()))
        self.config_yaml, self.meta = config_yaml, meta

    def state(self, progress: dict) -> dict:
        """The full checkpoint (``last.pt``) at ``progress`` (:data:`PROGRESS_KEYS`)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.student.state_dict(),
            "method": self.method.component_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            **{k: progress[k] for k in PROGRESS_KEYS},
            "rng": rng_state(self.device),
            "config_yaml": self.config_yaml(),
            "meta": {"tfdistill": __version__, "torch": str(torch.__version__), **self.meta()},
        }

    def save(self, progress: dict, best: bool) -> bool:
        """Write the checkpoints of the epoch ``progress["epoch"]``; True on the rank that wrote them (rank 0)."""
        rng_ranks = gather_object(rng_state(self.device), self.info) if self.info.enabled else None  # collective
        if not self.info.is_main:
            return False
        state = self.state(progress)
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        keep = ("format", "model", "method", "epoch", "best_top1", "best_epoch", "config_yaml", "meta")
        if best:
            save_atomic({k: state[k] for k in keep}, self.run_dir.best)
        if progress["epoch"] in self.save_epochs:
            save_atomic({k: state[k] for k in keep}, self.run_dir.path / f"epoch_{progress['epoch']}.pt")
        save_atomic(state, self.run_dir.last)
        return True

    def read_last(self) -> dict:
        """``last.pt`` on every rank (on the CPU: the RNG states must stay CPU tensors; load_state_dict moves the
        rest). Every rank reads the file itself when it can see it (a shared filesystem); otherwise (multi-node
        without one) rank 0 reads it and broadcasts it. A read error on rank 0 is raised on every rank."""
        last = self.run_dir.last
        if not self.info.enabled or all(gather_object(last.is_file(), self.info)):
            return load_checkpoint(last, map_location="cpu")
        ckpt: Any = None
        if self.info.is_main:
            try:
                ckpt = load_checkpoint(last, map_location="cpu")
            except Exception as exc:
                ckpt = exc
        return broadcast_or_raise(ckpt, self.info)

    def restore(self, config: dict) -> dict:
        """Load ``last.pt`` into the run's model, components, optimizer, schedule and GradScaler and its random
        streams (this rank's own under DDP); returns its progress (:data:`PROGRESS_KEYS`). ``config``: the run's
        config as a dict, checked against the stored one."""
        from omegaconf import OmegaConf

        from ..runs import resume_changes

        last = self.run_dir.last
        ckpt = self.read_last()
        if ckpt.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt:
            raise CheckpointError(f"{last} is not a resumable tfdistill checkpoint")
        stored = OmegaConf.to_container(OmegaConf.create(ckpt["config_yaml"]))
        diff = resume_changes(stored, config)  # resume-free keys, and an allowed extension of epochs
        if diff:
            raise CheckpointError(f"cannot resume {self.run_dir.path}: the config differs from the checkpoint's at "
                                  f"{', '.join(diff[:8])}")
        trained, now = (ckpt.get("meta") or {}).get("num_classes"), self.meta().get("num_classes")
        if trained is not None and now is not None and int(trained) != int(now):  # data.root: other data
            raise CheckpointError(f"cannot resume {self.run_dir.path}: it was trained on {trained} classes, but the "
                                  f"data given now has {now}; resume it with the data it was trained on")
        try:
            self.student.load_state_dict(ckpt["model"])
            self.method.load_component_state_dict(ckpt["method"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:  # "Error(s) in loading state_dict for X:" + the first
            detail = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())  # of its reasons
            raise CheckpointError(f"checkpoint {last} does not match this run: {detail[:300]}") from None
        self.sched.load_state_dict(ckpt["sched"])
        self.scaler.load_state_dict(ckpt["scaler"])
        ranks = ckpt.get("rng_ranks")
        if self.info.enabled and isinstance(ranks, list) and len(ranks) == self.info.world_size:
            set_rng_state(ranks[self.info.rank], self.device)
        else:
            set_rng_state(ckpt["rng"], self.device)
            if self.info.enabled:
                torch.manual_seed(int(torch.randint(0, 2**62, ())) + self.info.rank)  # distinct streams per rank
        return {"epoch": int(ckpt["epoch"]), "best_top1": float(ckpt["best_top1"]),
                "best_epoch": int(ckpt["best_epoch"]), "pre_done": bool(ckpt.get("pre_done", True))}
