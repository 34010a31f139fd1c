"""Training engine: the loop of a group of K >= 1 runs (:mod:`.group`), the per-run record (:mod:`.loop`),
checkpoints, run directories, schedules, distributed setup, the train step (:mod:`.step`: eager or torch.compile)
and the runner that steps a group's runs, one after another or from one CUDA graph (:mod:`.graphs`)."""

from .checkpoint import load_checkpoint, load_model_weights, save_atomic
from .graphs import GraphRunner
from .group import Group, Trainer, build_group, pack_key, train, train_group
from .loop import Run, RunResult, evaluate, resolve_device
from .step import TrainStep
from ..rundir import RunDir

__all__ = ["RunResult", "Run", "Group", "Trainer", "RunDir", "evaluate", "train", "train_group", "build_group",
           "pack_key", "resolve_device", "load_checkpoint", "load_model_weights", "save_atomic", "TrainStep",
           "GraphRunner"]
