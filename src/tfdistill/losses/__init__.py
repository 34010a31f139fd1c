"""Loss functions, one file per method family: pure tensor functions plus thin modules."""

from .tfd import TFDLoss, channel_importance, depth_loss, width_loss

__all__ = ["TFDLoss", "channel_importance", "depth_loss", "width_loss"]
