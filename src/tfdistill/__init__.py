"""tfdistill: Teacher-free Feature Distillation (Li, ECCV 2022) -- losses, feature taps, a CIFAR/ImageNet model
zoo and a reproducible training harness."""

from .features import FeatureTap, find_stages
from .losses.tfd import depth_loss, width_loss
from .losses.tfd_loss import TFDLoss
from .models import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = ["FeatureTap", "find_stages", "TFDLoss", "depth_loss", "width_loss", "create_model", "list_models",
           "register_model", "__version__"]
