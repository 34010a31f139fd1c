"""BYOT: Be Your Own Teacher (Zhang et al., ICCV 2019) -- self-distillation to shallow auxiliary classifiers.

* :class:`SepConv` -- the separable convolution block of the auxiliary branches (stride 2 by default).
* :class:`AuxClassifier` -- one shallow classifier: an attention mask on the stage map, a stack of stride-2
  ``SepConv`` blocks down to the deepest stage's resolution, global average pooling (the branch's feature), a
  linear classifier, and a linear adaptation layer from that feature to the deepest feature.
* :func:`soft_cross_entropy` -- the distillation term, the cross-entropy to the deepest classifier's softened
  prediction.
* :func:`feature_hint_loss` -- the feature term, the l2 distance ``||adapt(f_i) - f_deepest||_2``.

Checked against the first author's release, github.com/ArchipLab-LinfengZhang/pytorch-self-distillation-final:
``train.py`` (``CrossEntropy``, the loss loop, defaults ``loss_coefficient 0.3``, ``feature_loss_coefficient
0.03``, ``temperature 3``) and ``resnet.py`` (``SepConv``, ``scala1..3``, ``attention1..3``);
``tests/test_selfdistill_aux.py`` reproduces the values of those formulas on fixed inputs.

Where the sources differ
------------------------
* **Loss.** The paper: ``sum_i (1 - a) CE(q_i, y) + a KL(q_i, q_C) + l ||F_i - F_C||_2^2`` over the shallow
  classifiers ``i``, with the deepest ``C`` trained by CE. The code: CE on the deepest classifier (weight 1);
  for each shallow one ``(1 - a) CE + a * soft cross-entropy`` at ``T = 3`` (no ``T^2`` factor; the cross-entropy
  differs from the KL divergence by the teacher's entropy, a constant) and ``l * ||Linear(F_i) - F_C||_2`` -- the
  *unsquared* l2 norm over the whole batch, after a learned linear adaptation layer (the "final version" per its
  comment), with ``a = 0.3``, ``l = 0.03``. We follow the code.
* **Which branches get the feature term.** The code skips the feature term for ``outputs[1]``, the shallow
  classifier on the stage just below the deepest one (its comment says "the shallowest"); ``hint_all=false``
  (default) follows the code, ``hint_all=true`` hints every shallow classifier. The code builds an adaptation
  layer for that classifier too and never uses it; we build none.
* **Branch architecture.** The code's branches are written for ResNet-18's four stages (stage ``i`` gets
  ``3 - i`` stride-2 SepConvs doubling the channels, then ``AvgPool2d(4)`` on the final 4x4 map). Here a branch
  on a stage of ``(C, H, W)`` gets ``log2(H / H_last)`` SepConvs whose output channels follow the tapped stages at
  those resolutions (the deepest stage's channel count where no stage has that size), and global average
  pooling; for ResNet-18 this is exactly the code's layout. The attention mask is the code's ``SepConv -> BN ->
  ReLU -> bilinear upsampling to the stage's size -> sigmoid``, multiplied onto the stage map.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import autocast, f32
from ._common import SoftTarget

__all__ = ["SepConv", "AuxClassifier", "soft_cross_entropy", "feature_hint_loss"]


class SepConv(nn.Module):
    """Depthwise 3x3 (stride ``stride``) -> 1x1 -> BN -> ReLU -> depthwise 3x3 -> 1x1 to ``c_out`` -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _AttentionMask(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = SepConv(channels, channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        m = F.relu(self.bn(self.conv(x)))
        return torch.sigmoid(F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False))


class AuxClassifier(nn.Module):
    """A shallow classifier on a stage map: ``forward(x) -> (logits, feature, adapted feature)``.

    Args:
        channels: output channels of the successive stride-2 SepConv blocks (may be empty).
        in_channels: channels of the stage map.
        num_classes: classes of the classifier.
        target_dim: dimension of the deepest feature the adapted feature is compared with; 0: no adaptation
            layer (a classifier without the feature term), the adapted feature is then None.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], num_classes: int, target_dim: int) -> None:
        super().__init__()
        self.attention = _AttentionMask(in_channels)
        blocks, c = [], in_channels
        for c_out in channels:
            blocks.append(SepConv(c, int(c_out)))
            c = int(c_out)
        self.scala = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)
        self.adapt = nn.Linear(c, target_dim) if target_dim else None
        for m in self.modules():  # the code's initialisation (resnet.py)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x = x * self.attention(x)
        f = F.adaptive_avg_pool2d(self.scala(x), 1).flatten(1)
        return self.fc(f), f, self.adapt(f) if self.adapt is not None else None


soft_cross_entropy = SoftTarget("soft_cross_entropy", "BYOT", 3.0, doc="""\
``soft_cross_entropy(logits, teacher, T=3.0)``: ``-mean_n sum_k softmax(teacher / T) * log_softmax(logits / T)``
(``teacher`` detached; no ``T^2``).""")


def feature_hint_loss(f: Tensor, target: Tensor) -> Tensor:
    """``||f - target||_2`` over all elements of the batch (``target`` detached; not squared, not averaged)."""
    if f.shape != target.shape:
        raise ValueError(f"feature_hint_loss: shapes {tuple(f.shape)} and {tuple(target.shape)} differ")
    with autocast("off", f.device):
        # vector_norm's gradient at a zero difference is 0 (as torch.dist's), not NaN as sqrt(sum(d^2))'s would be
        return torch.linalg.vector_norm(f32(f) - f32(target).detach())
