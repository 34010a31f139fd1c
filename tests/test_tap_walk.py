"""The tap walk (benchmarks/tap_walk.py): every torchvision classifier, a broad timm set, Hugging Face families and
segmentation models (torchvision's, segmentation-models-pytorch's) either yield >= 2 correct stage maps and train one
TFD step, or refuse with the clear error. The full walks are slow; a handful is not."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import tap_walk  # noqa: E402

timm = pytest.importorskip("timm")

FAST = [
    ("torchvision.resnet18", 64, {}),
    ("torchvision.mobilenet_v3_small", 32, {}),   # issue 21: tapped the 1x1 conv inside the next block
    ("torchvision.efficientnet_b0", 32, {}),
    ("torchvision.swin_t", 64, {}),
    ("timm.convnext_atto", 64, {}),
    ("timm.vit_tiny_patch16_224", 32, {"img_size": 32}),
    ("timm.swin_tiny_patch4_window7_224", 64, {"img_size": 64}),
    ("timm.mobilenetv3_small_050", 64, {}),
]


@pytest.mark.parametrize("name, size, kwargs", FAST, ids=[m[0] for m in FAST])
def test_walk_fast_subset(name, size, kwargs):
    r = tap_walk.walk_one(name, size, kwargs)
    assert r.ok and len(r.taps) >= 2, r
    assert not any(".block." in t or "attn" in t or "mlp" in t for t in r.taps), r.taps


def test_walk_refuses_with_the_clear_error():
    """timm's HRNet declares stages whose outputs are lists of branches: no map to tap, so it refuses (no guess)."""
    r = tap_walk.walk_one("timm.hrnet_w18_small", 64)
    assert not r.ok and "timm.hrnet_w18_small gives 0 usable feature map(s)" in r.refusal
    assert "its output is not one tensor" in r.refusal


def _walk(models):
    failures, refused = [], []
    for name, size, kwargs in models:
        try:
            r = tap_walk.walk_one(name, size, kwargs)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{tap_walk._label(name, kwargs)}: {type(exc).__name__}: {exc}")
            continue
        if not r.ok:
            refused.append(r.model)  # the row's name: the model (with its smp encoder)
    assert not failures, "\n".join(failures)
    return refused


@pytest.mark.slow
def test_walk_every_torchvision_classifier():
    models = tap_walk.torchvision_models()
    import torchvision

    assert len(models) == len(torchvision.models.list_models(module=torchvision.models))
    assert _walk(models) == []


@pytest.mark.slow
def test_walk_broad_timm_set():
    models = tap_walk.timm_models()
    assert len(models) >= 40
    families = {tap_walk.timm_family(n) for n, _, _ in models}
    assert len(families) >= 15 and "?" not in families, families
    refused = _walk(models)
    assert set(refused) == {"timm.hrnet_w18_small", "timm.crossvit_tiny_240"}, refused


HF_FAST = [("hf.vit", 64), ("hf.deit", 64), ("hf.swin", 64), ("hf.resnet", 64), ("hf.mobilenet_v2", 64)]


@pytest.mark.parametrize("name, size", HF_FAST, ids=[m[0] for m in HF_FAST])
def test_hf_walk_fast_subset(name, size):
    pytest.importorskip("transformers")
    kwargs = {n: kw for n, _, kw in tap_walk.hf_models()}[name]
    r = tap_walk.walk_one(name, size, kwargs)
    assert r.ok and r.rule.startswith("table (Hugging Face") and len(r.taps) >= 2, r
    assert not any("embedder" in t or "embeddings" in t for t in r.taps), r.taps


@pytest.mark.slow
def test_walk_hugging_face_families():
    """At least 15 HF classification families tapped by the family table (token models >= 3 grid maps, checked in
    walk_one), one TFD step each; hiera (tokens in an unrolled order) refuses with the one clear error."""
    pytest.importorskip("transformers")
    models = tap_walk.hf_models()
    assert len({n for n, _, _ in models}) >= 15
    refused = _walk(models)
    assert refused == ["hf.hiera"], refused


SEG_FAST = [("deeplabv3_resnet18", {}, ["backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4"]),
            ("lraspp_mobilenet_v3_large", {}, ["backbone.3", "backbone.6", "backbone.12", "backbone.16"]),
            ("smp.Unet", {"encoder_name": "mobilenet_v2"},
             ["encoder.features.3", "encoder.features.6", "encoder.features.13", "encoder.features.18"]),
            ("smp.FPN", {"encoder_name": "tu-convnext_atto"},
             ["encoder.model.stages_0", "encoder.model.stages_1", "encoder.model.stages_2", "encoder.model.stages_3"]),
            ("smp.Unet", {"encoder_name": "timm-efficientnet-b0"},
             ["encoder.blocks.1", "encoder.blocks.2", "encoder.blocks.4", "encoder.blocks.6"]),
            ("smp.Segformer", {"encoder_name": "mit_b0"},
             ["encoder.norm1", "encoder.norm2", "encoder.norm3", "encoder.norm4"])]


@pytest.mark.parametrize("name, kwargs, taps", SEG_FAST, ids=[tap_walk._label(n, kw) for n, kw, _ in SEG_FAST])
def test_segmentation_walk_fast_subset(name, kwargs, taps):
    """Encoder stages from stride 4 on, by declaration (torchvision's backbone, smp's _out_indexes, timm
    feature_info, the Mix Transformer's stage norms), never the head; one TFD step with per-pixel CE."""
    if name.startswith("smp."):
        pytest.importorskip("segmentation_models_pytorch")
    r = tap_walk.walk_one(name, 64, kwargs)
    assert r.ok and r.taps == taps, r


def test_segmentation_walk_refuses_an_undeclared_encoder_with_the_clear_error():
    pytest.importorskip("segmentation_models_pytorch")
    r = tap_walk.walk_one("smp.Unet", 64, {"encoder_name": "densenet121"})
    assert not r.ok and r.model == "smp.Unet (densenet121)", r
    assert "DenseNetEncoder" in r.refusal and "model.taps=[" in r.refusal, r.refusal


@pytest.mark.slow
def test_walk_segmentation_models():
    """Every torchvision segmentation model and segmentation-models-pytorch architecture (ResNet18 encoder) is
    tapped; smp's Unet across encoder families: the three without a declaration refuse with the clear error."""
    pytest.importorskip("segmentation_models_pytorch")
    refused = _walk(tap_walk.seg_models())
    assert sorted(refused) == ["smp.DPT (tu-vit_tiny_patch16_224)", "smp.Unet (densenet121)",
                               "smp.Unet (mobileone_s0)"], refused


def test_docs_table_lists_every_walked_model():
    """docs/taps.md (written by the walk) names every model of the four walks."""
    text = (REPO / "docs" / "taps.md").read_text()
    walked = tap_walk.torchvision_models() + tap_walk.timm_models() + tap_walk.hf_models()
    missing = [n for n, _, _ in walked if f"`{n}`" not in text]
    missing += [tap_walk._label(n, kw) for n, _, kw in tap_walk.seg_models()
                if f"`{tap_walk._label(n, kw)}`" not in text]
    assert not missing, missing
