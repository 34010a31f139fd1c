"""Hugging Face vision classifiers tapped by their family table (issue 28, item 5): token grids with the prefix
tokens dropped, Swin-like stages before patch merging, convolutional stages without the stem; the clear messages.
Golden values come from the models themselves (``output_hidden_states=True``), not from the tap."""

from __future__ import annotations

import pytest
import torch

from tfdistill.errors import ConfigError
from tfdistill.features import FeatureTap, token_grid

transformers = pytest.importorskip("transformers")

VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8, num_labels=10)


def build(model_type, cls=None, **kw):
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, **kw)
    if cls:
        return getattr(transformers, cls)(cfg).eval()
    return transformers.AutoModelForImageClassification.from_config(cfg).eval()


@pytest.mark.parametrize("model_type, cls, extra, prefix", [
    ("vit", None, {}, 1), ("deit", "DeiTForImageClassification", {}, 2),
    ("dinov2_with_registers", None, {"num_register_tokens": 3}, 4), ("beit", None, {}, 1)])
def test_token_models_every_block_as_a_grid_prefix_dropped_equal_to_hidden_states(model_type, cls, extra, prefix):
    model = build(model_type, cls, **VIT, **extra)
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureTap(model, "auto")
    out, feats = tap(x)
    plan = tap.plan()
    assert plan.rule.startswith("table (Hugging Face") and len(feats) == 4       # 4 blocks: all of them
    assert all(t.layout.prefix == prefix for t in plan.taps)
    hidden = model(x, output_hidden_states=True).hidden_states                   # hidden_states[k + 1]: block k
    for k, f in enumerate(feats):
        want = hidden[k + 1][:, prefix:].transpose(1, 2).reshape(2, 32, 4, 4)
        torch.testing.assert_close(f, want)
    torch.testing.assert_close(out.logits, model(x).logits)


def test_vit_non_square_input_by_keyword_grid_from_the_input():
    model = build("vit", **dict(VIT, image_size=[32, 64]))
    x = torch.randn(2, 3, 32, 64)
    tap = FeatureTap(model, "auto")
    tap.discover(pixel_values=x)
    with tap.capture():
        model(pixel_values=x)
    assert [tuple(f.shape) for f in tap.features] == [(2, 32, 4, 8)] * 4


def test_swin_stages_are_hf_stage_labels_before_patch_merging_and_the_stage_tuple_message():
    model = build("swin", embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], image_size=64, patch_size=4,
                  window_size=2, num_labels=10)
    x = torch.randn(2, 3, 64, 64)
    tap = FeatureTap(model, "auto")
    _, feats = tap(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    assert [t.stride for t in tap.plan().taps] == ["4", "8", "16", "32"]       # HF's stage1..stage4
    assert tap.names[2].endswith("layers.2.blocks.1")                          # the last block of stage 3
    hidden = model(x, output_hidden_states=True).hidden_states                 # embeddings, then after each stage
    torch.testing.assert_close(feats[-1], hidden[-1].transpose(1, 2).reshape(2, 128, 2, 2))
    stage = [n for n, _ in model.named_modules() if n.endswith("encoder.layers.0")][0]
    with pytest.raises(ConfigError) as err:
        FeatureTap(model, [stage, tap.names[-1]])(x)
    msg = str(err.value)
    assert "is a tuple of 3, no (N, C, H, W) map" in msg and "is not a tensor is no" not in msg


@pytest.mark.parametrize("model_type, kw", [
    ("resnet", dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])),
    ("convnext", dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])),
    ("regnet", dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], groups_width=8))])
def test_convolutional_stages_without_the_stem_equal_hidden_states(model_type, kw):
    model = build(model_type, num_labels=10, **kw)
    x = torch.randn(2, 3, 64, 64)
    tap = FeatureTap(model, "auto")
    _, feats = tap(x)
    assert not any("embedder" in n or "embeddings" in n for n in tap.names), tap.names
    assert tap.names[0].endswith("stages.0") and len(feats) == 4
    hidden = model(x, output_hidden_states=True).hidden_states                  # the stem, then each stage
    for f, h in zip(feats, hidden[1:]):
        torch.testing.assert_close(f, h)


def test_a_named_hf_block_gets_the_table_layout_and_an_undeclared_token_model_refuses_clearly():
    model = build("vit", **VIT)
    x = torch.randn(1, 3, 32, 32)
    block = [n for n, _ in model.named_modules() if n.endswith("layers.2") or n.endswith("layer.2")][0]
    _, feats = FeatureTap(model, [block])(x)
    assert tuple(feats[0].shape) == (1, 32, 4, 4)
    hiera = build("hiera", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=[64, 64],
                  num_labels=10)
    with pytest.raises(ConfigError, match=r"HieraForImageClassification gives \d usable feature map.*token_grid"):
        FeatureTap(hiera, "auto")(torch.randn(1, 3, 64, 64))


def test_an_explicit_token_grid_comes_before_the_table():
    model = build("vit", **VIT)
    x = torch.randn(1, 3, 32, 32)
    block = [n for n, _ in model.named_modules() if n.endswith("layers.1") or n.endswith("layer.1")][0]
    _, feats = FeatureTap(model, [block], token_grid=token_grid(8, prefix=1))(x)
    assert tuple(feats[0].shape) == (1, 32, 4, 4)
    with pytest.raises(ConfigError, match="does not hold the patch grid of a \\(32, 32\\) input at 16 px"):
        FeatureTap(model, [block], token_grid=token_grid(16, prefix=1))(x)


def test_hf_stage_labels_mean_hf_stages_not_module_paths():
    """``stage_names`` / ``out_features`` are labels: ``stage1`` is the first stage after the stem (Swin: before
    its patch merging), for the classifier and for HF's own backbone class alike."""
    kw = dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    model = build("resnet", num_labels=10, **kw)
    x = torch.randn(2, 3, 64, 64)
    tap = FeatureTap(model, ["stage2", "stage4"])
    _, feats = tap(x)
    assert [n.rsplit(".", 2)[-2:] for n in tap.names] == [["stages", "1"], ["stages", "3"]]
    hidden = model(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(feats[0], hidden[2])
    with pytest.raises(ConfigError, match="valid labels are stage1..stage4 \\(the stem is not a stage\\)"):
        FeatureTap(model, ["stem", "stage2"])
    backbone = transformers.ResNetBackbone(transformers.ResNetConfig(**kw, out_features=["stage1", "stage3"]))
    assert backbone.stage_names[0] == "stem"                    # labels, never read as module paths
    auto = FeatureTap(backbone.eval(), "auto")
    auto.discover(x)
    assert auto.plan().rule.startswith("table (Hugging Face ResNet)") and len(auto.names) == 4
    maps = backbone(x).feature_maps                             # HF's stage1 and stage3
    _, mine = FeatureTap(backbone, ["stage1", "stage3"])(x)
    for a, b in zip(mine, maps):
        torch.testing.assert_close(a, b)
