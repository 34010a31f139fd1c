"""Training engine: the loop, checkpoints, run directories, schedules, distributed setup, accelerated steps
(:mod:`.accel`: torch.compile / CUDA graphs) and batched multi-seed training (:mod:`.multiseed`)."""

from .accel import Accelerator
from .checkpoint import load_checkpoint, load_model_weights, save_atomic
from .loop import RunResult, Trainer, evaluate, resolve_device, train
from .multiseed import MultiSeedTrainer, train_seeds
from ..rundir import RunDir

__all__ = ["RunResult", "Trainer", "RunDir", "evaluate", "train", "resolve_device", "load_checkpoint",
           "load_model_weights", "save_atomic", "Accelerator", "MultiSeedTrainer", "train_seeds"]
