"""The fused (compiled) TFD region against the eager losses: ranking, the dense width loss, the compiled region's
values and gradients, the fallback, and the ``method.tfd.fuse`` setting.

On the CPU the region is compiled with the ``aot_eager`` backend (dynamo + AOTAutograd, no code generation: the
tracing with ``fullgraph=True`` is what can break) and, in one slow test, with inductor's C++ backend; the
Triton kernels themselves run in the CUDA-only test at the end.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tfdistill.losses.tfd import width_loss
from tfdistill.losses.tfd_fused import (FusedTFD, fuse_available, inductor_options, ranked_partners, tfd_losses,
                                        width_loss_dense)
from test_tfd_fast import BOTH_POOLED, ODD_UNEQUAL, RESNET32, make_feats, value_and_grads

W = torch.tensor([5e-3, 4e-4])


def eager_weighted(feats, weights=W, **kw):
    d, w = tfd_losses(feats, **kw)
    return weights[0] * d, weights[1] * w


# --------------------------------------------------------------------------- the sort-free ranking
@pytest.mark.parametrize("seed", range(6))
def test_ranked_partners_is_the_stable_descending_argsort(seed):
    g = torch.Generator().manual_seed(seed)
    for c in (2, 3, 7, 16, 33):
        imp = torch.randint(0, 4, (c,), generator=g).float() / 4  # many exact ties
        if seed % 2:
            imp = torch.rand(c, generator=g)
        order = torch.argsort(imp, descending=True, stable=True)
        partner, student = ranked_partners(imp)
        h = c // 2
        assert student.sum().item() == h
        for k in range(h):
            assert student[order[h + k]] and partner[order[h + k]] == order[k]
        assert not student[order[:h]].any() and (c % 2 == 0 or not student[order[-1]])


# --------------------------------------------------------------------------- the dense width loss
@pytest.mark.parametrize("shapes", [RESNET32, ODD_UNEQUAL, BOTH_POOLED, [(2, 1, 4, 4), (2, 6, 3, 3)]])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_width_loss_equals_width_loss(shapes, channels_last):
    feats = make_feats(shapes, 0, channels_last=channels_last)
    va, ga = value_and_grads(lambda fs: width_loss(fs, True), feats)
    vb, gb = value_and_grads(width_loss_dense, feats)
    torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-7)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-8)


def test_dense_width_loss_with_tied_importances_ranks_like_argsort():
    f = torch.ones(2, 6, 3, 3)  # every channel has the same importance: ranks by index
    f[:, 3:] = 2.0
    f = f.requires_grad_(True)
    torch.testing.assert_close(width_loss_dense([f]), width_loss([f], True))


def test_dense_width_loss_bf16_maps_get_bf16_gradients():
    feats = make_feats(RESNET32, 1, dtype=torch.bfloat16, channels_last=True)
    va, ga = value_and_grads(lambda fs: width_loss(fs, True), feats)
    vb, gb = value_and_grads(width_loss_dense, feats)
    assert vb.dtype == torch.float32
    torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-7)
    for a, b in zip(ga, gb):
        assert b.dtype == torch.bfloat16
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=1e-6)


# --------------------------------------------------------------------------- the compiled region
CASES = [
    dict(),
    dict(direction="bottom_up"),
    dict(direction="bidirectional", detach_top=False),
    dict(width_stages=(0, 2)),
    dict(depth=False),
    dict(width=False),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_compiled_region_equals_the_eager_losses(kw):
    feats = make_feats(RESNET32, 2)
    fused = FusedTFD(**kw, backend="aot_eager")
    for step in range(2):  # the first call probes (compiles forward and backward), the second is a plain call
        fs = [f.detach().clone().requires_grad_(True) for f in feats]
        d, w = fused(fs, W)
        (d + w).backward()
        fe = [f.detach().clone().requires_grad_(True) for f in feats]
        de, we = eager_weighted(fe, **kw)
        (de + we).backward()
        assert fused.mode == "compiled", fused.reason
        torch.testing.assert_close(d, de, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(w, we, rtol=1e-5, atol=1e-9)
        for a, b in zip(fs, fe):
            ga = a.grad if a.grad is not None else torch.zeros_like(a)
            gb = b.grad if b.grad is not None else torch.zeros_like(b)
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-12)


def test_compiled_region_reads_the_weights_tensor_every_call():
    feats = make_feats(RESNET32, 3)
    fused = FusedTFD(backend="aot_eager")
    weights = W.clone()
    d1, w1 = fused(feats, weights)
    weights.mul_(0.25)  # what TFD's ramp does in place between epochs
    d2, w2 = fused(feats, weights)
    torch.testing.assert_close(d2, d1 * 0.25)
    torch.testing.assert_close(w2, w1 * 0.25)


def test_compiled_region_under_bf16_autocast():
    feats = make_feats(RESNET32, 4, dtype=torch.bfloat16, channels_last=True)
    fused = FusedTFD(backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d, w = fused(feats, W)
        de, we = eager_weighted(feats)
    assert fused.mode == "compiled" and d.dtype == w.dtype == torch.float32
    torch.testing.assert_close(d, de, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(w, we, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_inductor_cpu_region_equals_the_eager_losses():
    """The real code generation (C++ on the CPU; Triton on CUDA below): one compile, forward and backward."""
    feats = make_feats(RESNET32, 5)
    fused = FusedTFD()  # inductor
    fs = [f.detach().clone().requires_grad_(True) for f in feats]
    d, w = fused(fs, W)
    if fused.mode != "compiled":
        pytest.skip(f"inductor cannot compile here: {fused.reason}")
    (d + w).backward()
    fe = [f.detach().clone().requires_grad_(True) for f in feats]
    de, we = eager_weighted(fe)
    (de + we).backward()
    torch.testing.assert_close(d, de, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(w, we, rtol=1e-5, atol=1e-9)
    for a, b in zip(fs, fe):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-12)


def test_inside_an_outer_compile_the_region_is_traced_not_compiled_again():
    """engine.compile=true: the whole step is compiled; the TFD region must join that graph (no nested compile, no
    graph break from the first-call probe)."""
    feats = make_feats(RESNET32, 9)
    fused = FusedTFD(backend="aot_eager")

    def step(fs, w):
        d, wl = fused(fs, w)
        return d + wl

    outer = torch.compile(step, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break would raise
    v = outer(feats, W)
    assert fused.mode == "pending"  # the outer trace ran the region's code, not the probe
    de, we = eager_weighted(feats)
    torch.testing.assert_close(v, de + we, rtol=1e-5, atol=1e-9)


def test_many_configurations_in_one_process_all_compile():
    """A sweep builds many TFD runs in one process: every configuration and shape is one cache entry of the same
    code object, beyond dynamo's default limit of 8 (where fullgraph=True would raise)."""
    configs = [dict(direction=d, detach_top=t, width_stages=ws) for d in ("top_down", "bottom_up", "bidirectional")
               for t in (True, False) for ws in (None, (0, 1))]
    assert len(configs) > 8
    feats = make_feats(RESNET32, 10)
    for kw in configs:
        fused = FusedTFD(**kw, backend="aot_eager")
        d, w = fused(feats, W)
        assert fused.mode == "compiled", (kw, fused.reason)
        de, we = eager_weighted(feats, **kw)
        torch.testing.assert_close(d + w, de + we, rtol=1e-5, atol=1e-9)


def test_a_new_input_signature_is_probed_before_it_is_used(monkeypatch):
    fused = FusedTFD(backend="aot_eager")
    probes = []
    real_probe = fused._probe
    monkeypatch.setattr(fused, "_probe", lambda f, w: (probes.append(tuple(f[0].shape)), real_probe(f, w)))
    small = make_feats(RESNET32, 11)
    fused(small, W)
    fused(small, W)
    odd_batch = [f[:3] for f in small]  # e.g. a last, smaller batch
    d, w = fused(odd_batch, W)
    with torch.no_grad():
        fused(small, W)
    assert probes == [(4, 16, 32, 32), (3, 16, 32, 32), (4, 16, 32, 32)] and fused.mode == "compiled"
    de, we = eager_weighted(odd_batch)
    torch.testing.assert_close(d + w, de + we, rtol=1e-5, atol=1e-9)


def test_a_compile_error_in_a_later_call_falls_back_to_eager():
    import torch._dynamo.exc

    feats = make_feats(RESNET32, 12)
    fused = FusedTFD(backend="aot_eager")
    fused(feats, W)

    def boom(*a, **k):
        raise torch._dynamo.exc.InternalTorchDynamoError("recompile failed")

    fused._fn = boom
    with pytest.warns(RuntimeWarning, match="recompile failed"):
        d, w = fused(feats, W)
    assert fused.mode == "eager"
    de, we = eager_weighted(feats)
    assert torch.equal(d, de) and torch.equal(w, we)
    fused.mode, fused._fn = "compiled", lambda *a, **k: (_ for _ in ()).throw(MemoryError("not a compile error"))
    with pytest.raises(MemoryError):
        fused(feats, W)


def test_a_failing_compile_warns_once_and_runs_the_eager_losses_exactly(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    feats = make_feats(RESNET32, 6)
    fused = FusedTFD()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d, w = fused(feats, W)
        fused(feats, W)
    msgs = [str(c.message) for c in caught if "TFD fuse" in str(c.message)]
    assert len(msgs) == 1 and "no compiler here" in msgs[0] and "second line" not in msgs[0]
    assert fused.mode == "eager" and "RuntimeError" in fused.reason
    de, we = eager_weighted(feats)
    assert torch.equal(d, de) and torch.equal(w, we)


def test_fuse_available_and_inductor_options(monkeypatch):
    ok, why = fuse_available(torch.device("cpu"))
    assert not ok and "CUDA only" in why
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    ok, why = fuse_available(torch.device("cuda"))
    assert not ok and "deterministic" in why
    monkeypatch.setenv("TFDISTILL_NO_FUSE", "1")
    assert fuse_available(torch.device("cuda"))[0] is False
    from torch._inductor import config as ic

    assert inductor_options() == ({"combo_kernels": True} if hasattr(ic, "combo_kernels") else {})
    monkeypatch.setenv("TFDISTILL_FUSE_OPTIONS", '{"max_autotune": false}')
    assert inductor_options() == {"max_autotune": False}
    monkeypatch.setenv("TFDISTILL_FUSE_OPTIONS", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        inductor_options()


def test_tfdloss_module_fuse_option(monkeypatch):
    from tfdistill.losses.tfd_loss import TFDLoss

    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "aot_eager")
    feats = make_feats(RESNET32, 8)
    eager = TFDLoss(width_stages=[0, 1])(feats)
    fused_mod = TFDLoss(width_stages=[0, 1], fuse=True)
    fused = fused_mod(feats)
    assert fused_mod.mode == "compiled"
    for k in ("depth", "width", "total"):
        torch.testing.assert_close(fused[k], eager[k], rtol=1e-5, atol=1e-10)
    auto = TFDLoss(fuse="auto")
    auto(feats)
    assert auto.mode == "eager" and "CUDA only" in auto.reason  # CPU maps: "auto" stays eager
    assert "fuse=True" in repr(fused_mod)
    with pytest.raises(ValueError, match="fuse must be True, False or 'auto'"):
        TFDLoss(fuse="yes")


# --------------------------------------------------------------------------- method.tfd.fuse
def _tfd_component(overrides):
    from tfdistill.config import load_config
    from tfdistill.methods import build_method
    from tfdistill.models import create_model

    torch.manual_seed(0)
    student = create_model("resnet20", num_classes=10)
    params = load_config(None, ["method.name=tfd", *overrides]).method
    meth = build_method(student, params, example=torch.randn(4, 3, 32, 32), num_classes=10, num_train=100,
                        epochs=10)
    return meth, meth.distillers["tfd"]


def test_method_fuse_auto_is_eager_on_the_cpu_and_says_why():
    meth, comp = _tfd_component([])
    assert comp.losses.mode == "eager"
    info = meth.describe()["tfd"]
    assert info["fuse"] == "eager" and "CUDA only" in info["fuse_reason"]
    _, off = _tfd_component(["method.tfd.fuse=false"])
    assert off.describe() == {"fuse": "eager", "fuse_reason": "fuse=false"}


def test_method_fuse_true_compiles_and_matches_fuse_false(monkeypatch):
    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "aot_eager")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = {}
    for fuse in ("true", "false"):
        meth, comp = _tfd_component([f"method.tfd.fuse={fuse}", "method.tfd.ramp_epochs=4"])
        meth.on_epoch_start(1)  # ramp 2/4: the weights tensor carries it into the region
        _, terms = meth(x, y, None)
        out[fuse] = terms
        info = meth.describe()["tfd"]
        assert info["fuse"] == ("compiled" if fuse == "true" else "eager")
        assert (info.get("fuse_compile_s", -1) >= 0) == (fuse == "true")
    for k in ("tfd_depth", "tfd_width"):
        torch.testing.assert_close(out["true"][k], out["false"][k], rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(comp.weights, torch.tensor([5e-3, 4e-4]) * 0.5)


@pytest.mark.parametrize("value", ["maybe", "compile"])
def test_method_fuse_bad_value_names_the_choices(value):
    from tfdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method\.tfd\.fuse.*valid: auto, true, false"):
        _tfd_component([f"method.tfd.fuse={value}"])


def test_other_distances_are_not_fused_and_say_so():
    _, comp = _tfd_component(["method.tfd.distance=at", "method.tfd.fuse=true"])
    assert comp.describe() == {"fuse": "eager", "fuse_reason": "distance=at (only the l2 losses are fused)"}


def test_summary_records_the_fuse_mode(tiny, tmp_path):
    from tfdistill.config import load_config
    from tfdistill.engine import train

    train(load_config(None, [*tiny, "method.name=tfd", "epochs=1", "name=f"]), echo=lambda s: None)
    summary = json.loads((tmp_path / "runs" / "f" / "summary.json").read_text())
    assert summary["method_info"]["tfd"]["fuse"] == "eager"


# --------------------------------------------------------------------------- CUDA: the Triton region itself
@pytest.mark.cuda
@pytest.mark.parametrize("kw", [dict(), dict(direction="bidirectional", detach_top=False)],
                         ids=["default", "bidirectional-undetached"])
def test_triton_region_equals_the_eager_losses_on_cuda(kw):
    feats = [f.detach().cuda().requires_grad_(True)
             for f in make_feats(RESNET32, 7, dtype=torch.bfloat16, channels_last=True)]
    fused = FusedTFD(**kw)
    w = W.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        d, wl = fused(feats, w)
        de, we = eager_weighted(feats, w, **kw)
    assert fused.mode == "compiled", fused.reason
    torch.testing.assert_close(d, de, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(wl, we, rtol=1e-4, atol=1e-9)
    ga = torch.autograd.grad(d + wl, feats)
    gb = torch.autograd.grad(de + we, feats)
    for a, b in zip(ga, gb):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=1e-6)


# --------------------------------------------------------------------------- one front door
def test_tfd_method_computes_through_tfdloss_with_one_weights_buffer():
    """The tfd method's losses are a TFDLoss; the only weights tensor is the module's, which the ramp rescales."""
    from tfdistill.losses.tfd_loss import TFDLoss

    meth, comp = _tfd_component(["method.tfd.fuse=false", "method.tfd.ramp_epochs=4"])
    assert isinstance(comp.losses, TFDLoss)
    assert [n for n, _ in comp.named_buffers()] == ["losses.weights"] and comp.weights is comp.losses.weights
    meth.on_epoch_start(0)
    assert torch.equal(comp.weights, torch.tensor([5e-3, 4e-4]) * torch.tensor(0.25))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = meth.outputs(x, y)
    terms = comp.terms(out)
    d, w = tfd_losses(out.feats_s)
    assert torch.equal(terms["tfd_depth"], comp.weights[0] * d) and torch.equal(terms["tfd_width"], comp.weights[1] * w)


def test_tfdloss_other_distances_use_the_same_weights():
    from tfdistill.losses.tfd_distance import depth_loss_with, width_loss_with
    from tfdistill.losses.tfd_loss import TFDLoss

    feats = make_feats(RESNET32, 8)
    loss = TFDLoss(alpha=0.5, beta=0.25, distance="at", width_stages=[1, 2], fuse=True)
    assert loss.mode == "eager" and "only the l2 losses" in loss.reason
    loss.scale_(0.5)
    t = loss(feats)
    assert torch.equal(t["depth"], loss.weights[0] * depth_loss_with(feats, "at"))
    assert torch.equal(t["width"], loss.weights[1] * width_loss_with(feats[1:], "at"))
    with pytest.raises(ValueError, match="unknown TFD distance"):
        TFDLoss(distance="l1")
    with pytest.raises(ValueError, match="detach_top=False needs distance='l2'"):
        TFDLoss(distance="sp", detach_top=False)
