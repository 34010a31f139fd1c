"""FeatureTap: the "auto" rule on the zoo and torchvision models, explicit names, hook hygiene, dtypes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from tfdistill.errors import ConfigError
from tfdistill.features import FeatureTap, find_classifier, find_stages
from tfdistill.models import create_model


def shapes(feats):
    return [tuple(f.shape[1:]) for f in feats]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet32", [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
        ("resnet8x4", [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
        ("wrn_40_1", [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
        ("wrn_16_2", [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
        ("vgg8", [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
        ("MobileNetV2", [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
        ("ShuffleV2", [(116, 16, 16), (232, 8, 8), (464, 4, 4)]),
    ],
)
def test_auto_on_zoo(name, expected):
    model = create_model(name, num_classes=100)
    tap = FeatureTap(model, "auto")
    logits, feats = tap(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert shapes(feats) == expected


def test_auto_resnet_names_and_vgg_one_per_resolution():
    x = torch.randn(1, 3, 32, 32)
    assert find_stages(create_model("resnet20", 10), x) == ["layer1", "layer2", "layer3"]
    assert find_stages(create_model("wrn_16_1", 10), x) == ["block1", "block2", "block3"]
    assert find_stages(create_model("vgg8", 10), x) == ["block0", "block1", "block2", "block4"]


def test_auto_rule_without_declared_stages():
    """The discovery rule itself (zoo models declare stage_names; hide them) finds the same stages."""
    x = torch.randn(1, 3, 32, 32)
    for name in ["resnet32", "wrn_40_1", "ResNet50", "ShuffleV1"]:
        model = create_model(name, 10)
        declared = find_stages(model, x)
        model.stage_names = None
        assert find_stages(model, x) == declared, name


def test_auto_torchvision_resnet18_skips_stem():
    model = torchvision.models.resnet18(num_classes=10)
    tap = FeatureTap(model, "auto")
    _, feats = tap(torch.randn(1, 3, 224, 224))
    assert tap.names == ["layer1", "layer2", "layer3", "layer4"]
    assert shapes(feats) == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


def test_auto_torchvision_mobilenet_v2_last_block_per_resolution():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    tap = FeatureTap(model, "auto")
    _, feats = tap(torch.randn(1, 3, 224, 224))
    assert tap.names == ["features.1", "features.3", "features.6", "features.13", "features.18"]
    assert [s[1] for s in shapes(feats)] == [112, 56, 28, 14, 7]


def test_flat_sequential_falls_back_to_leaves():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert find_stages(model, torch.randn(1, 3, 8, 8)) == ["1", "4"]


def test_explicit_names_and_errors():
    model = create_model("resnet20", 10)
    tap = FeatureTap(model, ["layer1", "layer3"])
    _, feats = tap(torch.randn(2, 3, 32, 32))
    assert shapes(feats) == [(16, 32, 32), (64, 8, 8)]
    with pytest.raises(ConfigError, match="unknown module 'layer9'.*layer1"):
        FeatureTap(model, ["layer1", "layer9"])
    with pytest.raises(ConfigError, match="listed twice"):
        FeatureTap(model, ["layer1", "layer1"])
    with pytest.raises(ConfigError, match="'auto' or a list"):
        FeatureTap(model, "layer1")


def test_first_call_discovery_equals_eager_discovery_and_plain_forward():
    torch.manual_seed(0)
    model = create_model("resnet8", 10).eval()
    x = torch.randn(3, 3, 32, 32)
    lazy = FeatureTap(model, "auto")
    out1, f1 = lazy(x)
    eager = FeatureTap(model, "auto")
    eager.discover(x)
    out2, f2 = eager(x)
    torch.testing.assert_close(out1, model(x))
    torch.testing.assert_close(out1, out2)
    for a, b in zip(f1, f2):
        torch.testing.assert_close(a, b)
    lazy.remove()
    eager.remove()


def test_hooks_removed_and_no_stale_features():
    model = create_model("resnet8", 10)
    n_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with FeatureTap(model, "auto", embedding=True) as tap:
        _, f_a = tap(torch.randn(4, 3, 32, 32))
        _, f_b = tap(torch.randn(2, 3, 32, 32))
        assert [f.shape[0] for f in f_b] == [2, 2, 2]
        assert tap.embedding.shape == (2, 64)
        assert sum(len(m._forward_hooks) for m in model.modules()) > n_before
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == n_before
    assert tap.embedding is None


def test_find_stages_does_not_touch_batchnorm_or_mode():
    model = create_model("resnet8", 10).train()
    stats = [b.clone() for b in model.buffers()]
    find_stages(model, torch.randn(2, 3, 32, 32))
    assert model.training
    for a, b in zip(stats, model.buffers()):
        torch.testing.assert_close(a, b)


def test_no_grad_autocast_channels_last():
    model = create_model("resnet8", 10)
    tap = FeatureTap(model, "auto", embedding=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, feats = tap(x)
    assert all(not f.requires_grad for f in feats)
    _, feats = tap(x)
    assert all(f.requires_grad for f in feats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = tap(x)
    assert feats[0].dtype == torch.bfloat16
    model = model.to(memory_format=torch.channels_last)
    _, feats = tap(x.contiguous(memory_format=torch.channels_last))
    assert feats[0].is_contiguous(memory_format=torch.channels_last)
    assert shapes(feats) == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_embedding_is_classifier_input():
    model = create_model("resnet8", 10).eval()
    assert find_classifier(model, torch.randn(1, 3, 32, 32)) == "fc"
    tap = FeatureTap(model, "auto", embedding=True)
    x = torch.randn(2, 3, 32, 32)
    logits, feats = tap(x)
    torch.testing.assert_close(model.fc(tap.embedding), logits)
    torch.testing.assert_close(tap.embedding, feats[-1].mean(dim=(2, 3)))


def test_module_called_twice_yields_last_output_and_warns_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(self.conv(x) * 0 + 1)

    m = Twice()
    tap = FeatureTap(m, ["conv"])
    with pytest.warns(RuntimeWarning, match=r"conv of Twice ran more than once"):
        _, (f,) = tap(torch.randn(1, 3, 4, 4))
    torch.testing.assert_close(f, m.conv(torch.ones(1, 3, 4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per module, not once per step
        _, (f,) = tap(torch.randn(1, 3, 4, 4))
    torch.testing.assert_close(f, m.conv(torch.ones(1, 3, 4, 4)))


def test_module_called_twice_warns_in_steady_state_calls_too():
    """After discovery (first call without repeats), a later forward that repeats a module still warns."""
    class Sometimes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.twice = False

        def forward(self, x):
            y = self.conv(x)
            return self.conv(y) if self.twice else y

    m = Sometimes()
    tap = FeatureTap(m, ["conv"])
    tap(torch.randn(1, 3, 4, 4))
    m.twice = True
    with pytest.warns(RuntimeWarning, match="conv of Sometimes"):
        tap(torch.randn(1, 3, 4, 4))


def test_tap_through_a_wrapper_call():
    model = create_model("resnet8", 10)
    calls = []

    def wrapper(x):
        calls.append(1)
        return model(x)

    tap = FeatureTap(model, "auto", call=wrapper)
    _, feats = tap(torch.randn(1, 3, 32, 32))
    assert len(feats) == 3 and calls == [1]


# ---------------------------------------------------------------------------------------------- issue 14
def test_vgg_at_32px_never_taps_the_upsampling_avgpool():
    """torchvision VGG at 32 px: its adaptive avgpool turns the 1x1 map into a 7x7 copy; that is not a stage. The
    stages are the last ReLU at each resolution, before each max-pool (32, 16, 8, 4, 2 px)."""
    model = torchvision.models.vgg11_bn(num_classes=10)
    tap = FeatureTap(model, "auto")
    _, feats = tap(torch.randn(2, 3, 32, 32))
    assert tap.names == ["features.2", "features.6", "features.13", "features.20", "features.27"]
    assert shapes(feats) == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]


def test_pooling_and_upsampling_heads_are_never_stages():
    # leaf fallback: the head AdaptiveAvgPool2d(8) upsamples the 4x4 map back to 8x8 and runs last
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(8 * 64, 2))
    assert find_stages(model, torch.randn(1, 3, 8, 8)) == ["1", "4"]
    # a pure pooling head at a new size (4x4 -> 2x2) is not a stage either; nor an identity after the last stage
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                          nn.ReLU(), nn.AvgPool2d(2), nn.Identity(), nn.Flatten(), nn.Linear(8 * 4, 2))
    assert find_stages(model, torch.randn(1, 3, 8, 8)) == ["1", "4"]


def test_resnet18_layer4_at_32px_is_1x1_and_left_out():
    """The documented rule (features.py, README): 1x1 maps are not stages. At 64 px layer4 is 2x2 and is tapped."""
    model = torchvision.models.resnet18(num_classes=10)
    assert find_stages(model, torch.randn(1, 3, 32, 32)) == ["layer1", "layer2", "layer3"]
    assert find_stages(model, torch.randn(1, 3, 64, 64)) == ["layer1", "layer2", "layer3", "layer4"]
    # named, a 1x1 layer is tapped as asked
    _, feats = FeatureTap(model.eval(), ["layer3", "layer4"])(torch.randn(1, 3, 32, 32))
    assert shapes(feats) == [(256, 2, 2), (512, 1, 1)]


class _ChannelsLastNet(nn.Module):
    """Stages that return (N, H, W, C) tensors, as Swin's do: patch embedding, then token MLP + patch merging."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 2, stride=2)
        self.stage1 = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6))
        self.merge = nn.Linear(24, 10)
        self.stage2 = nn.Sequential(nn.LayerNorm(10), nn.Linear(10, 10))
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)          # (N, 8, 8, 6)
        x = self.stage1(x)
        n, h, w, c = x.shape                             # 2x2 patch merging: (N, 4, 4, 24) -> (N, 4, 4, 10)
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)
        x = self.stage2(self.merge(x))
        return self.fc(x.mean(dim=(1, 2)))


def test_channels_last_shaped_stages_are_permuted_to_nchw():
    torch.manual_seed(0)
    model = _ChannelsLastNet()
    x = torch.randn(2, 3, 16, 16)
    tap = FeatureTap(model, "auto")
    _, feats = tap(x)
    assert tap.names == ["stage1", "stage2"]
    assert shapes(feats) == [(6, 8, 8), (10, 4, 4)]   # read as NCHW these would be "8 channels at 8x6"
    raw = model.stage1(model.embed(x).permute(0, 2, 3, 1))
    torch.testing.assert_close(feats[0], raw.permute(0, 3, 1, 2))
    _, again = tap(x)                                  # steady-state calls permute too
    assert shapes(again) == shapes(feats)
    assert "permuted" in tap.describe()
    named = FeatureTap(model, ["stage1", "stage2"])    # named taps: layout checked on the first call
    _, feats_named = named(x)
    assert shapes(feats_named) == [(6, 8, 8), (10, 4, 4)]


def test_torchvision_swin_and_convnext_layouts():
    swin = torchvision.models.swin_t(num_classes=10)
    tap = FeatureTap(swin, "auto")
    _, feats = tap(torch.randn(1, 3, 64, 64))
    assert tap.names == ["features.1", "features.3", "features.5", "features.7"]
    assert shapes(feats) == [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    convnext = torchvision.models.convnext_tiny(num_classes=10)   # permutes back inside its blocks: NCHW
    tap = FeatureTap(convnext, "auto")
    _, feats = tap(torch.randn(1, 3, 64, 64))
    assert shapes(feats) == [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    assert "permuted" not in tap.describe()


def test_describe_names_and_shapes():
    model = create_model("resnet8", 10)
    tap = FeatureTap(model, "auto")
    assert "not yet" in tap.describe()
    tap(torch.randn(2, 3, 32, 32))
    assert tap.describe() == "layer1 16x32x32, layer2 32x16x16, layer3 64x8x8 [auto]"


def test_two_taps_on_one_shared_model_keep_their_own_features():
    """A frozen teacher shared by several runs (batched seeds) carries one tap per run: a call through one tap is
    neither a repeated call for the other (no warning) nor overwrites the other's embedding."""
    model = create_model("resnet8", 10).eval()
    a, b = FeatureTap(model, "auto", embedding=True), FeatureTap(model, "auto", embedding=True)
    xa, xb = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, ref = FeatureTap(model, "auto")(xa)
        a(xa), b(xb)                                     # discovery
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(2):
                _, fa = a(xa)
                a(xa)                                    # b's hooks see two forwards between b's own calls
                _, fb = b(xb)
    torch.testing.assert_close(fa[0], ref[0])
    torch.testing.assert_close(a.embedding, ref[-1].mean(dim=(2, 3)))  # not b's input, though b ran last


def test_run_header_names_the_taps(tiny):
    """train.log says which layers were tapped, with their shapes (resnet8 at 32 px: layer1..3)."""
    from tfdistill.config import load_config
    from tfdistill.engine import train

    lines: list[str] = []
    cfg = load_config(None, [*tiny, "method.name=tfd", "name=r", "engine.device=cpu"])
    res = train(cfg, echo=lines.append)
    log = (res.run_dir / "train.log").read_text()
    want = "feature taps (student): layer1 16x32x32, layer2 32x16x16, layer3 64x8x8 [auto]"
    assert want in log and want in lines
