"""DropBlock as a forward hook: block structure, drop rate, mean preservation, schedule, eval identity, removal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tfdistill.errors import ConfigError
from tfdistill.features import FeatureTap
from tfdistill.regularizers import attach_dropblock, drop_block


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not spin-wait on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.stage2(self.stage1(x)).mean((2, 3)))


class Ones(nn.Module):
    """Outputs a constant map of ones, so the DropBlock mask is visible directly."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.w * torch.ones(self.shape)


def wrap(shape):
    model = nn.Sequential()
    model.add_module("block", Ones(shape))
    return model


def covered_by_full_blocks(zero: list[list[bool]], b: int) -> bool:
    """Every dropped position lies in some b x b window, fully inside the map, that is dropped entirely (loops)."""
    h, w = len(zero), len(zero[0])
    full = [[all(zero[i + u][j + v] for u in range(b) for v in range(b)) for j in range(w - b + 1)]
            for i in range(h - b + 1)]
    for y in range(h):
        for x in range(w):
            if zero[y][x] and not any(full[i][j] for i in range(max(0, y - b + 1), min(y, h - b) + 1)
                                      for j in range(max(0, x - b + 1), min(x, w - b) + 1)):
                return False
    return True


def test_drops_contiguous_blocks_at_about_the_target_rate_and_keeps_the_mean():
    torch.manual_seed(0)
    model = wrap((16, 8, 24, 24))
    h = attach_dropblock(model, ["block"], prob=0.2, block_size=5)
    model.train()
    out = model(None)
    dropped = out == 0
    rate = dropped.float().mean().item()
    assert 0.13 < rate < 0.26, rate
    assert out.mean().item() == pytest.approx(1.0, rel=1e-5)  # kept units rescaled by numel / count(kept)
    assert torch.allclose(out[~dropped], torch.full_like(out[~dropped], 1.0 / (1.0 - rate)), rtol=1e-5)
    for n, c in [(0, 0), (3, 5), (15, 7)]:
        assert dropped[n, c].any() and covered_by_full_blocks(dropped[n, c].tolist(), 5)
    lone = [[False] * 8 for _ in range(8)]
    lone[3][3] = True  # the checker itself rejects a dropped unit that is not part of a whole block
    assert not covered_by_full_blocks(lone, 5)
    # masks are independent per channel by default, shared with shared_channels=True
    assert not all(torch.equal(dropped[0, 0], dropped[0, c]) for c in range(1, 8))
    h.remove()
    attach_dropblock(model, ["block"], prob=0.2, block_size=5, shared_channels=True)
    dropped = model(None) == 0
    assert all(torch.equal(dropped[n, 0], dropped[n, c]) for n in range(16) for c in range(8))


def test_identity_in_eval_and_after_remove():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(4, 3, 12, 12)
    model.eval()
    ref = model(x)
    h = attach_dropblock(model, ["stage1", "stage2"], prob=0.3, block_size=3)
    assert torch.equal(model(x), ref)
    model.train()
    assert not torch.equal(model(x), ref)
    h.remove()
    assert torch.equal(model(x), ref)


def test_linear_schedule():
    torch.manual_seed(0)
    model = wrap((32, 8, 20, 20))
    h = attach_dropblock(model, ["block"], prob=0.2, block_size=3)
    model.train()
    full = (model(None) == 0).float().mean().item()
    h.set_progress(0.0)
    assert h.current_prob == 0.0 and torch.equal(model(None), torch.ones(32, 8, 20, 20))
    h.set_progress(0.5)
    half = (model(None) == 0).float().mean().item()
    assert h.current_prob == pytest.approx(0.1)
    assert 0.35 * full < half < 0.65 * full
    h.set_progress(7.0)  # clipped
    assert h.current_prob == pytest.approx(0.2)


def test_feature_taps_see_the_dropped_output():
    torch.manual_seed(0)
    model = Net()
    tap = FeatureTap(model, ["stage1"])
    attach_dropblock(model, ["stage1"], prob=0.5, block_size=3)  # attached after the tap, still runs first
    model.train()
    _, feats = tap(torch.randn(2, 3, 12, 12).abs() + 1)
    assert (feats[0] == 0).any()


def test_gradient_flows_through_kept_units_and_dtype_is_kept():
    x = torch.ones(2, 4, 10, 10, requires_grad=True)
    torch.manual_seed(1)
    out = drop_block(x, 0.3, 3)
    out.sum().backward()
    assert torch.equal(x.grad == 0, out == 0)
    y = drop_block(torch.ones(2, 4, 10, 10, dtype=torch.bfloat16), 0.3, 3)
    assert y.dtype == torch.bfloat16
    # a block larger than the map is clipped to it
    assert drop_block(torch.ones(1, 1, 2, 2), 0.5, 7).shape == (1, 1, 2, 2)


def test_bad_settings():
    model = Net()
    with pytest.raises(ConfigError, match="unknown module"):
        attach_dropblock(model, ["nope"], prob=0.1, block_size=3)
    with pytest.raises(ConfigError, match="probability"):
        attach_dropblock(model, ["stage1"], prob=1.0, block_size=3)
    with pytest.raises(ConfigError, match="block size"):
        attach_dropblock(model, ["stage1"], prob=0.1, block_size=0)
