"""Issue 21: taps by declaration (named > declared > torchvision table > probe), token and channels-last layouts,
the tap plan (repr, log, CLI, run header), timm models through the factory and the harness."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import TINY, run_cli
from tfdistill.cli import main
from tfdistill.errors import ConfigError, UnknownNameError
from tfdistill.features import FeatureTap, find_stages, plan_taps
from tfdistill.losses.tfd import depth_loss, width_loss
from tfdistill.models import create_model

timm = pytest.importorskip("timm")


def shapes(feats):
    return [tuple(f.shape[1:]) for f in feats]


# ------------------------------------------------------------------------------------------ declared: timm
def test_timm_vit_taps_last_block_of_each_quarter_as_maps_equal_to_forward_intermediates():
    """Golden: timm's own forward_intermediates (NCHW, prefix tokens removed) at the same blocks."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureTap(model, "auto")
    _, feats = tap(x)
    assert tap.names == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    assert shapes(feats) == [(192, 2, 2)] * 4
    ref = model.forward_intermediates(x, indices=[2, 5, 8, 11], intermediates_only=True)
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r)
    assert tap.plan().taps[0].layout.prefix == 1 and tap.plan().taps[0].stride == "16"


def test_timm_deit_distilled_drops_both_prefix_tokens():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    tap = FeatureTap(model, "auto")
    _, feats = tap(x)
    assert all(t.layout.prefix == 2 for t in tap.plan().taps)
    ref = model.forward_intermediates(x, indices=[11], intermediates_only=True)[0]
    torch.testing.assert_close(feats[-1], ref)


def test_timm_swin_channels_last_stages_permuted_named_taps_too():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    tap = FeatureTap(model, "auto")
    _, feats = tap(x)
    assert tap.names == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert shapes(feats) == [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    ref = model.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True, norm=False)
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r)
    _, named = FeatureTap(model, ["layers.1", "layers.3"])(x)  # named: the declaration gives the layout
    assert shapes(named) == [(192, 8, 8), (768, 2, 2)]
    torch.testing.assert_close(named[0], feats[1])


def test_timm_named_token_block_is_laid_out_and_a_3d_output_without_grid_is_refused():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    _, feats = FeatureTap(model, ["blocks.0", "blocks.3"])(torch.randn(1, 3, 32, 32))
    assert shapes(feats) == [(192, 2, 2)] * 2

    class Tokens(nn.Module):  # a token model that declares nothing: its 3-D outputs are never read as maps
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.block(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

    with pytest.raises(ConfigError, match="'block' of Tokens: its output .* no \\(N, C, H, W\\) map .* token grid"):
        FeatureTap(Tokens(), ["block"])(torch.randn(1, 3, 16, 16))
    with pytest.raises(ConfigError, match=r"Tokens gives 1 usable feature map\(s\).*name the taps"):
        FeatureTap(Tokens(), "auto")(torch.randn(1, 3, 16, 16))


# ------------------------------------------------------------------------------------------ torchvision table
def test_torchvision_vit_table_tokens_class_token_dropped():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=8, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureTap(model, "auto")
    _, feats = tap(x)
    assert tap.names == [f"encoder.layers.encoder_layer_{k}" for k in (1, 3, 5, 7)]
    assert shapes(feats) == [(16, 4, 4)] * 4
    # independent: run the encoder by hand and lay out block 7's patch tokens (class token first)
    n = x.shape[0]
    t = model._process_input(x)
    t = torch.cat([model.class_token.expand(n, -1, -1), t], dim=1) + model.encoder.pos_embedding
    for blk in model.encoder.layers:
        t = blk(t)
    torch.testing.assert_close(feats[-1], t[:, 1:].transpose(1, 2).reshape(n, 16, 4, 4))
    assert tap.plan().rule.startswith("table (torchvision ViT)")


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_mobilenet_efficientnet_whole_blocks_at_32px(name):
    """Issue 21: at 32 px the deepest tap was the 1x1 expansion conv inside the next block; now whole blocks."""
    model = torchvision.models.get_model(name, num_classes=10)
    plan = plan_taps(model, torch.randn(2, 3, 32, 32))
    assert all(n.count(".") == 1 and n.startswith("features.") for n in plan.names), plan.names
    sizes = [t.shape[1] for t in plan.taps]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes) and sizes[-1] >= 2
    assert "features.0" not in plan.names  # issue 29: the stem is not a stage (as in timm's plans)


def test_torchvision_mobilenet_v3_stem_is_not_a_stage_as_in_timm():
    """Issue 29: torchvision MobileNetV3-small tapped its stem ``features.0``; timm's plan of the same network
    starts at its first block. Now both start at a block."""
    tv = plan_taps(torchvision.models.mobilenet_v3_small(num_classes=10), torch.randn(2, 3, 64, 64))
    tm = plan_taps(timm.create_model("mobilenetv3_small_050", num_classes=10), torch.randn(2, 3, 64, 64))
    assert tv.names[0] == "features.1" and tm.names[0] == "blocks.0"
    assert tv.taps[0].stride == tm.taps[0].stride == "4"


def test_torchvision_swin_v2_taps_stage_outputs_not_attention_mlps():
    model = torchvision.models.swin_v2_t(num_classes=10)
    plan = plan_taps(model, torch.randn(1, 3, 64, 64))
    assert plan.names == ["features.1", "features.3", "features.5", "features.7"]
    assert [t.shape for t in plan.taps] == [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    assert all(t.layout.kind == "NHWC" for t in plan.taps)


def test_probe_never_taps_inside_attention_or_mlp_and_resolution_never_grows():
    """A model the table does not know: the probe skips attention/MLP sub-blocks and a map larger than a previous
    one (an upsampling decoder stage)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage1 = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
            self.attn = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())  # 4x4 inside "attn"
            self.stage2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=4, padding=1), nn.ReLU())
            self.up = nn.Sequential(nn.ConvTranspose2d(8, 8, 2, stride=2), nn.ReLU())
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = self.stage1(x)
            self.attn(y)
            return self.fc(self.up(self.stage2(y)).mean((2, 3)))

    assert find_stages(Net(), torch.randn(1, 3, 16, 16)) == ["stage1", "stage2"]


def test_zoo_declares_and_the_rule_is_recorded():
    plan = plan_taps(create_model("vgg8", 10), torch.randn(1, 3, 32, 32), model_name="vgg8")
    assert plan.names == ["block0", "block1", "block2", "block4"]
    assert plan.rule.startswith("declared (stage_names)") and all(t.rule == "declared (stage_names)"
                                                                   for t in plan.taps)


def test_fewer_than_two_maps_is_one_clear_error():
    model = torchvision.models.resnet18(num_classes=10)  # at 16 px: layer1 4x4, layer2 2x2, layer3/4 1x1
    assert len(plan_taps(model, torch.randn(2, 3, 16, 16)).taps) == 2
    with pytest.raises(ConfigError, match=r"ResNet gives 1 usable feature map\(s\) on a 3x8x8 input by rule table "
                                          r"\(torchvision ResNet\).*at least 2.*name the taps"):
        FeatureTap(model, "auto")(torch.randn(2, 3, 8, 8))
    FeatureTap(model, "auto", min_maps=0, embedding=True)(torch.randn(2, 3, 8, 8))  # embedding-only: fine


# ------------------------------------------------------------------------------------------ TFD on one size
def test_tfd_depth_and_width_with_maps_of_one_size():
    """All maps the same size (a ViT's): no pooling, each pair cropped to the common channels; golden values
    written out independently of the loss code."""
    torch.manual_seed(0)
    feats = [torch.randn(2, c, 3, 3) for c in (4, 6, 5)]
    ref = sum(F.mse_loss(feats[i][:, :min(feats[i].shape[1], feats[j].shape[1])],
                         feats[j][:, :min(feats[i].shape[1], feats[j].shape[1])])
              for i, j in itertools.combinations(range(3), 2)) / 3
    torch.testing.assert_close(depth_loss(feats), ref)

    def importance(f):
        return F.normalize(f.flatten(2), dim=2).mean(dim=(0, 2))

    ref_w = []
    for f in feats:
        order = torch.argsort(importance(f), descending=True)
        h = f.shape[1] // 2
        ref_w.append(F.mse_loss(f[:, order[h:2 * h]], f[:, order[:h]]))
    torch.testing.assert_close(width_loss(feats), torch.stack(ref_w).mean())


# ------------------------------------------------------------------------------------------ the plan shown
def test_plan_repr_print_and_log_once(caplog):
    model = create_model("resnet8", 10)
    tap = FeatureTap(model, "auto", model_name="resnet8")
    assert "not yet resolved" in repr(tap) and tap.plan() is None
    with caplog.at_level(logging.INFO, logger="tfdistill.features"):
        tap(torch.randn(2, 3, 32, 32))
        tap(torch.randn(2, 3, 32, 32))
    logged = [r for r in caplog.records if r.name == "tfdistill.features"]
    assert len(logged) == 1 and "tap plan for resnet8" in logged[0].getMessage()
    text = repr(tap)
    for needle in ("layer1", "16x32x32", "layer3", "64x8x8", "declared (stage_names)", "depth 0<-1 0<-2",
                   "width 8<-8 ch", "3 pairs"):
        assert needle in text, needle
    assert str(tap.plan()) in text


def test_cli_taps_prints_plans(capsys):
    assert main(["taps", "timm.vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "blocks.2" in out and "blocks.11" in out and "192x14x14" in out and "1 prefix dropped" in out
    assert "last block of each quarter of 12" in out and "6 pairs" in out and "one size" in out
    assert main(["taps", "torchvision.swin_v2_t", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "features.7" in out and "768x2x2" in out and "NHWC, permuted" in out and "table (torchvision Swin)" in out
    assert main(["taps", "resnet20", "--taps", "layer1,layer3"]) == 0
    assert "named" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["taps", "timm.vit_tinny_patch16_224"], "unknown timm model 'timm.vit_tinny_patch16_224' (did you mean"),
    (["taps", "torchvision.resnet19"], "did you mean 'torchvision.resnet18'"),
    (["taps", "resnet2000"], "unknown model 'resnet2000'"),
    (["taps", "timm.vit_tiny_patch16_224", "--image-size", "64"], "img_size=64"),
    (["taps", "resnet20", "--image-size", "0"], "must be positive"),
    # issue 29: the model runs at 8 px but gives too few maps -- say that, not "does not run"
    (["taps", "torchvision.resnet18", "--image-size", "8"], "gives 1 usable feature map(s) on a 3x8x8 input"),
])
def test_cli_taps_bad_input_one_line(capsys, argv, needle):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("tfdistill: error: ") and needle in err, err
    if "usable feature map" in needle:
        assert "does not run" not in err


# ------------------------------------------------------------------------------------------ timm in the factory
def test_timm_factory_pretrained_reads_the_cache_only(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match="no cached pretrained weights for timm.resnet18.*allow_download"):
        create_model("timm.resnet18", 10, pretrained=True)
    with pytest.raises(ConfigError, match="timm.<name> models only"):
        create_model("resnet8", 10, pretrained=True)
    with pytest.raises(UnknownNameError, match="did you mean timm.resnet18"):
        create_model("timm.resnet18x", 10)
    assert create_model("resnet8", 10, pretrained=False) is not None


def test_train_header_prints_the_plan(tiny):
    from tfdistill.config import load_config
    from tfdistill.engine import train

    cfg = load_config(None, [*tiny, "method.name=tfd", "name=r", "engine.device=cpu"])
    log = (train(cfg, echo=lambda s: None).run_dir / "train.log").read_text()
    assert "tap plan for resnet8 on a 3x32x32 input: 3 maps, rule: declared (stage_names)" in log
    assert "depth 0<-1 0<-2; width 8<-8 ch" in log
    # a feature method that does not distil TFD's pairs shows the maps without TFD's terms
    cfg = load_config(None, [*tiny, "method.name=mixskd", "name=m", "engine.device=cpu"])
    log = (train(cfg, echo=lambda s: None).run_dir / "train.log").read_text()
    assert "tap plan for resnet8 on a 3x32x32 input: 3 maps" in log and "declared (stage_names)" in log
    assert "TFD" not in log and "width 8<-8" not in log


# ------------------------------------------------------------------------------------------ one-epoch CLI runs
@pytest.mark.parametrize("name, extra", [
    ("timm.vit_tiny_patch16_224", ["model.kwargs.img_size=32", "model.kwargs.patch_size=8"]),
    pytest.param("timm.convnext_atto", [], marks=pytest.mark.slow),  # (the image-folder run below is not slow)
])
def test_one_epoch_cli_timm_vit_and_convnet(tmp_path, name, extra):
    common = [*TINY, "data.synthetic_train=32", "data.synthetic_test=16", "data.batch_size=16",
              "data.synthetic_size=32", "method.name=tfd", f"out_dir={tmp_path}"]
    r = run_cli(["train", *common, f"model.name={name}", f"name={name}", *extra])
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / name / "train.log").read_text()
    assert f"tap plan for {name}" in log and "declared (timm feature_info)" in log


def test_cli_train_timm_convnext_on_an_image_folder(tmp_path):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for k in range(6):
                px = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(px).save(d / f"{k}.png")
    r = run_cli(["train", "model.name=timm.convnext_atto", "data.name=imagefolder", f"data.root={tmp_path / 'data'}",
                 "data.batch_size=4", "data.eval_batch_size=8", "epochs=1", "method.name=tfd",
                 "engine.progress=false", f"out_dir={tmp_path / 'runs'}", "name=folder"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "convnext" in (tmp_path / "runs" / "folder" / "train.log").read_text()
