"""Training engine. :func:`train` is the one way to train (:mod:`.trainer`); under it the loop of a group of K >= 1
runs (:mod:`.group`), each run's lifecycle (:mod:`.run`), what a run is built from (:mod:`.build`), checkpoints
(:mod:`.checkpoint`), evaluation, records, schedules, distributed setup and accelerated steps (:mod:`.accel`)."""

from .accel import Accelerator, StepRunner
from .build import resolve_device
from .checkpoint import load_checkpoint, load_model_weights, save_atomic
from .evaluation import evaluate
from .group import Group
from .run import Run, RunResult
from .trainer import Trainer, build_group, train
from ..rundir import RunDir

__all__ = ["train", "RunResult", "Run", "Group", "Trainer", "RunDir", "evaluate", "build_group", "resolve_device",
           "load_checkpoint", "load_model_weights", "save_atomic", "Accelerator", "StepRunner"]
