"""The tap walk (benchmarks/tap_walk.py): every torchvision classifier, a broad timm set and Hugging Face families
either yield >= 2 correct stage maps and train one TFD step, or refuse with the clear error. The full walks are
slow; a handful is not."""

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
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if not r.ok:
            refused.append(name)
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


def test_docs_table_lists_every_walked_model():
    """docs/taps.md (written by the walk) names every model of the three walks."""
    text = (REPO / "docs" / "taps.md").read_text()
    walked = tap_walk.torchvision_models() + tap_walk.timm_models() + tap_walk.hf_models()
    missing = [n for n, _, _ in walked if f"`{n}`" not in text]
    assert not missing, missing
