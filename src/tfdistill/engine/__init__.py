"""Training engine: the loop of a group of K >= 1 runs (:mod:`.group`), the per-run record (:mod:`.loop`),
checkpoints, run directories, schedules, distributed setup and accelerated steps (:mod:`.accel`: torch.compile,
CUDA graphs, the packed step runner)."""

from .accel import Accelerator, StepRunner
from .checkpoint import load_checkpoint, load_model_weights, save_atomic
from .group import Group, Trainer, build_group, train, train_group
from .loop import Run, RunResult, evaluate, resolve_device
from ..rundir import RunDir

__all__ = ["RunResult", "Run", "Group", "Trainer", "RunDir", "evaluate", "train", "train_group", "build_group",
           "resolve_device", "load_checkpoint", "load_model_weights", "save_atomic", "Accelerator",
           "StepRunner"]
