"""Tiny networks and data for the integration tests (tests/test_create_method.py, tests/test_integ_*.py): no
BatchNorm (gradient accumulation over half batches must equal one full batch), 8x8 inputs, a few hundred weights."""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 4


class TinyConv(nn.Module):
    """stem -> three conv stages (8x8 -> 4x4 -> 2x2) -> pooled linear classifier; declares its stages."""

    stage_names = ["s1", "s2", "s3"]

    def __init__(self, width: int = 4, num_classes: int = NUM_CLASSES):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU())
        self.s1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        self.s2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU())
        self.s3 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.s3(self.s2(self.s1(self.stem(x)))))))


def tiny_data(n: int = 16, seed: int = 0, classes: int = NUM_CLASSES):
    """``n`` 8x8 images whose class shifts the mean of one colour channel (learnable in a few steps), labels, index."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    x[:, 0] += (y.float() - classes / 2)[:, None, None]
    return x, y, torch.arange(n)


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


def assert_differs(a: dict, b: dict) -> None:
    assert any(not torch.equal(a[k], b[k]) for k in a), "the parameters did not change"
