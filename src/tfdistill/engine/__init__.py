"""Training engine: the loop, checkpoints, run directories, schedules, distributed setup."""

from .checkpoint import load_checkpoint, load_model_weights, save_atomic
from .loop import RunResult, Trainer, evaluate, resolve_device, train
from .rundir import RunDir

__all__ = ["RunResult", "Trainer", "RunDir", "evaluate", "train", "resolve_device", "load_checkpoint",
           "load_model_weights", "save_atomic"]
