"""tfdistill: Teacher-free Feature Distillation (Li, ECCV 2022) -- losses, feature taps, a CIFAR/ImageNet model
zoo and a reproducible training harness."""

from .features import FeatureTap, find_stages
from .losses.tfd import TFDLoss, depth_loss, width_loss

__version__ = "0.1.0"

__all__ = ["FeatureTap", "find_stages", "TFDLoss", "depth_loss", "width_loss", "__version__"]
