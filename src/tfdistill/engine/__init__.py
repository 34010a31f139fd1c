"""Training engine. :func:`train` is the one way to train (:mod:`.trainer`); under it the loop of a group of K >= 1
runs (:mod:`.group`), each run's lifecycle (:mod:`.run`), what a run is built from (:mod:`.build`), checkpoints
(:mod:`.checkpoint`), evaluation, records, schedules, distributed setup, the train step (:mod:`.step`) and the
CUDA-graph runner (:mod:`.graphs`)."""

from .build import resolve_device
from .checkpoint import load_checkpoint, load_model_weights, save_atomic
from .evaluation import evaluate
from .graphs import GraphRunner
from .group import Group
from .run import Run, RunResult
from .step import TrainStep
from .trainer import build_group, train
from ..rundir import RunDir

__all__ = ["train", "RunResult", "Run", "Group", "RunDir", "evaluate", "build_group", "resolve_device",
           "load_checkpoint", "load_model_weights", "save_atomic", "TrainStep", "GraphRunner"]
