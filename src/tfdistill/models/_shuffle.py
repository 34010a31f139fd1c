"""Channel shuffle, shared by the two ShuffleNet families."""

from __future__ import annotations

from torch import Tensor, nn


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` channel groups: ``[N, g*k, H, W] -> view [N, g, k] -> [N, k, g]``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
