"""Checkpoint I/O: atomic writes, ``weights_only=True`` loads, clear errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..rundir import save_atomic  # noqa: F401  (re-exported: tfdistill.engine.save_atomic)


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
