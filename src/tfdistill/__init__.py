"""tfdistill: Teacher-free Feature Distillation (Li, ECCV 2022) -- losses, feature taps, a CIFAR/ImageNet model
zoo and a reproducible training harness."""

from .features import FeatureTap, find_stages
from .losses.tfd import depth_loss, width_loss
from .losses.tfd_loss import TFDLoss
from .models import create_model, list_models, register_model

from ._version import __version__

__all__ = ["FeatureTap", "find_stages", "TFDLoss", "depth_loss", "width_loss", "create_model", "list_models",
           "register_model", "create_method", "load_config", "train", "__version__"]


def __getattr__(name: str):
    """``tfdistill.train`` (the one way to train: :func:`tfdistill.engine.train`), ``tfdistill.load_config`` and
    ``tfdistill.create_method`` (any method in someone else's loop: :func:`tfdistill.methods.create.create_method`),
    imported on first use, so that ``from tfdistill import TFDLoss`` in someone else's loop loads no engine."""
    if name == "train":
        from .engine import train

        return train
    if name == "create_method":
        from .methods.create import create_method

        return create_method
    if name == "load_config":
        from .config import load_config

        return load_config
    raise AttributeError(f"module 'tfdistill' has no attribute {name!r}")
