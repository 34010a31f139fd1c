"""Pieces shared by the model zoo: the classifier head and weight initialisers.

Every zoo network ends in the same parameter-free head followed by one Linear layer::

    ... last stage -> (family specific tail) -> avgpool -> flatten -> dropout -> fc

* ``avgpool`` is an ``nn.AdaptiveAvgPool2d(1)``. On 32x32 inputs it is numerically the same
  as the fixed-size pools used by the CRD benchmark, and it lets the networks run on larger
  inputs. It has no parameters, so parameter counts are unchanged.
* ``flatten`` outputs the pooled embedding (a forward hook on it sees the embedding before
  dropout); ``fc`` is the single ``nn.Linear`` classifier, so a forward *pre*-hook on ``fc``
  sees the classifier input (after dropout, which is the identity in eval mode).
* ``dropout`` is ``nn.Identity()`` unless the model was built with ``dropout > 0``.
"""

from __future__ import annotations

import math

from torch import nn

from ..errors import ConfigError


def make_dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)`` for ``p > 0``, otherwise ``nn.Identity()`` (both are parameter-free)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()


def check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def add_head(model: nn.Module, in_features: int, num_classes: int, dropout: float) -> None:
    """Attach the shared ``avgpool/flatten/dropout/fc`` head to ``model``."""
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.flatten = nn.Flatten(1)
    model.dropout = make_dropout(dropout)
    model.fc = nn.Linear(in_features, check_num_classes(num_classes))


def run_head(model: nn.Module, x):
    return model.fc(model.dropout(model.flatten(model.avgpool(x))))


def init_kaiming_fan_out(model: nn.Module) -> None:
    """Convs: Kaiming normal (fan_out, ReLU); BatchNorm: weight 1, bias 0. Linear layers keep
    PyTorch's default init. (CIFAR ResNets and the bottleneck ResNet50 of the CRD benchmark.)"""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_he_conv(model: nn.Module, *, linear_std: float | None) -> None:
    """Convs: N(0, sqrt(2 / (k_h * k_w * out_channels))), bias 0; BatchNorm: weight 1, bias 0;
    Linear: bias 0 and, when ``linear_std`` is given, weight N(0, linear_std).
    (WRN uses ``linear_std=None``; VGG and MobileNetV2 use ``linear_std=0.01``.)"""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
