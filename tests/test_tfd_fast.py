"""The fast TFD losses against the straightforward reference (:mod:`tfdistill.losses.tfd_reference`): values and
gradients.

The reference is the literal definition (per-pair crop + float32 upcast + adaptive pooling + ``mse_loss``; width:
``F.normalize`` of a float32 copy, ``argsort``, two permuted float32 copies). The library's fast path shares
pooled maps between pairs, never upcasts a whole bf16 map and gathers only the ranked channels; it must agree up
to float32 rounding in every direction, with odd channel counts, unequal and non-divisible sizes, channels_last
and bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tfdistill.losses.tfd import channel_importance, depth_loss, width_loss
from tfdistill.losses.tfd_loss import TFDLoss
from tfdistill.losses.tfd_reference import reference_depth_loss, reference_importance, reference_width_loss


# --------------------------------------------------------------------------- reference (slow, literal)
ref_depth_loss, ref_width_loss, ref_importance = reference_depth_loss, reference_width_loss, reference_importance


# --------------------------------------------------------------------------- helpers
def make_feats(shapes, seed, dtype=torch.float32, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, s in enumerate(shapes):
        # distinct channel offsets make the importance ranking unambiguous (no near-ties)
        f = torch.randn(*s, generator=g) + torch.linspace(-1.0, 2.0, s[1]).view(1, -1, 1, 1) * (k + 1)
        f = f.to(dtype)
        if channels_last:
            f = f.contiguous(memory_format=torch.channels_last)
        out.append(f.requires_grad_(True))
    return out


def value_and_grads(fn, feats):
    fs = [f.detach().clone().requires_grad_(True) for f in feats]
    v = fn(fs)
    v.backward()
    return v.detach(), [f.grad if f.grad is not None else torch.zeros_like(f) for f in fs]


def assert_same(fast, ref, feats, rtol=1e-5, grad_rtol=1e-4, grad_atol=1e-7):
    vf, gf = value_and_grads(fast, feats)
    vr, gr = value_and_grads(ref, feats)
    assert vf.dtype == torch.float32
    torch.testing.assert_close(vf, vr.float(), rtol=rtol, atol=1e-7)
    for a, b in zip(gf, gr):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=grad_rtol, atol=grad_atol)


RESNET32 = [(4, 16, 32, 32), (4, 32, 16, 16), (4, 64, 8, 8)]
ODD_UNEQUAL = [(3, 5, 7, 5), (3, 7, 4, 3), (3, 3, 2, 2), (3, 9, 2, 2)]  # non-divisible sizes, odd channels
BOTH_POOLED = [(2, 6, 8, 4), (2, 4, 4, 8)]  # each map is larger in one dimension: both sides pooled to 4x4
WRN_LIKE = [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 128, 4, 4)]


@pytest.mark.parametrize("shapes", [RESNET32, ODD_UNEQUAL, BOTH_POOLED, WRN_LIKE],
                         ids=["resnet32", "odd", "both", "wrn"])
@pytest.mark.parametrize("direction", ["top_down", "bottom_up", "bidirectional"])
def test_depth_matches_reference(shapes, direction):
    feats = make_feats(shapes, seed=len(shapes))
    assert_same(lambda fs: depth_loss(fs, direction), lambda fs: ref_depth_loss(fs, direction), feats)


@pytest.mark.parametrize("shapes", [RESNET32, ODD_UNEQUAL, WRN_LIKE], ids=["resnet32", "odd", "wrn"])
@pytest.mark.parametrize("detach_top", [True, False])
def test_width_matches_reference(shapes, detach_top):
    feats = make_feats(shapes, seed=7)
    assert_same(lambda fs: width_loss(fs, detach_top), lambda fs: ref_width_loss(fs, detach_top), feats)


def test_importance_matches_normalize_including_zero_maps():
    f = make_feats([(3, 6, 5, 4)], seed=3)[0].detach()
    f[1, 2] = 0.0  # an all-zero map: F.normalize divides by eps, so it contributes 0
    torch.testing.assert_close(channel_importance(f), ref_importance(f), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("direction", ["top_down", "bidirectional"])
def test_channels_last_matches_reference(direction):
    feats = make_feats(RESNET32, seed=11, channels_last=True)
    assert_same(lambda fs: depth_loss(fs, direction) + width_loss(fs),
                lambda fs: ref_depth_loss(fs, direction) + ref_width_loss(fs), feats)


@pytest.mark.parametrize("direction", ["top_down", "bottom_up", "bidirectional"])
def test_bf16_features_match_reference_on_upcast_maps(direction):
    """bf16 maps (as autocast produces them): same float32 value as the reference, which upcasts whole maps;
    gradients arrive in bf16 and agree to bf16 rounding."""
    feats = make_feats(RESNET32 + [(4, 64, 4, 4)], seed=5, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same(lambda fs: depth_loss(fs, direction) + width_loss(fs, detach_top=False),
                    lambda fs: ref_depth_loss(fs, direction) + ref_width_loss(fs, detach_top=False), feats,
                    rtol=2e-5, grad_rtol=1e-2, grad_atol=1e-5)


def test_bf16_autocast_end_to_end_through_a_conv_stack():
    torch.manual_seed(0)
    net = torch.nn.ModuleList([torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
                               torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)])
    x = torch.randn(4, 3, 16, 16)

    def run(loss_fns):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, h = [], x
            for conv in net:
                h = torch.relu(conv(h))
                feats.append(h)
            assert feats[0].dtype == torch.bfloat16
            v = loss_fns[0](feats) + loss_fns[1](feats)
        v.backward()
        return v.detach(), [p.grad.clone() for p in net.parameters()]

    v1, g1 = run((depth_loss, width_loss))
    v2, g2 = run((ref_depth_loss, ref_width_loss))
    torch.testing.assert_close(v1, v2, rtol=2e-5, atol=1e-7)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-4)


def test_tfdloss_module_and_width_stages():
    feats = make_feats(RESNET32, seed=9)
    loss = TFDLoss(alpha=0.5, beta=0.25, width_stages=[0, 2])
    fast = lambda fs: loss(fs)["total"]  # noqa: E731
    ref = lambda fs: 0.5 * ref_depth_loss(fs) + 0.25 * ref_width_loss([fs[0], fs[2]])  # noqa: E731
    assert_same(fast, ref, feats)


def test_all_width_maps_skipped_gives_zero_and_no_grad_error():
    f = torch.randn(2, 1, 4, 4, requires_grad=True)
    v = width_loss([f])
    assert v.item() == 0.0 and v.dtype == torch.float32


def test_works_under_torch_func_vmap():
    """The losses are pure tensor functions: users may vmap them over stacked models (torch.func)."""
    per_model = [make_feats([(2, 4, 8, 8), (2, 8, 4, 4)], seed=13 + k) for k in range(2)]
    feats = [torch.stack([m[i].detach() for m in per_model]) for i in range(2)]  # (K, N, C, H, W)
    feats = [f.requires_grad_(True) for f in feats]
    batched = torch.func.vmap(lambda a, b: depth_loss([a, b]) + width_loss([a, b]))(*feats)
    batched.sum().backward()
    for k in range(2):
        ref_feats = [f[k].detach().clone().requires_grad_(True) for f in feats]
        ref = ref_depth_loss(ref_feats) + ref_width_loss(ref_feats)
        ref.backward()
        torch.testing.assert_close(batched[k], ref, rtol=1e-5, atol=1e-7)
        for f, r in zip(feats, ref_feats):
            torch.testing.assert_close(f.grad[k], r.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strided", [True, False])
def test_both_pooling_paths_equal_adaptive_pooling(dtype, strided):
    """The CPU path (strided sums, custom backward) and the CUDA path (avg_pool2d / float32 mean over a view) give
    adaptive pooling's values in float32 and its gradient in the input's dtype, channels_last included."""
    from tfdistill.losses.tfd import _pool

    g = torch.Generator().manual_seed(21)
    for shape, size in [((2, 3, 8, 8), (4, 4)), ((2, 5, 12, 8), (3, 2)), ((1, 2, 6, 6), (6, 6))]:
        for cl in (False, True):
            x = torch.randn(*shape, generator=g).to(dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            a = x.clone().requires_grad_(True)
            b = x.clone().requires_grad_(True)
            pa = _pool(a, size, strided=strided)
            pb = F.adaptive_avg_pool2d(b.float(), size)
            assert pa.dtype == torch.float32
            torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-6)
            w = torch.randn(pa.shape, generator=g)
            (pa * w).sum().backward()
            (pb * w).sum().backward()
            assert a.grad.dtype == dtype
            torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=1e-2 if dtype != torch.float32 else 1e-6,
                                       atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_pooling_function_keeps_its_gradient_under_torch_compile(dtype):
    """Regression (torch 2.4-2.11): when the Function's forward returned an in-place ``mul_``'s result, AOTAutograd
    dropped its backward and every gradient through it was zero under torch.compile (engine.compile=true on a CPU,
    the fused TFD region)."""
    from tfdistill.losses.tfd import _EvenAvgPool

    def f(x):
        return (_EvenAvgPool.apply(x, 2, 2) * torch.linspace(-1, 1, 4).view(1, 1, 1, 4)).square().sum()

    x = torch.randn(2, 3, 8, 8).to(dtype).requires_grad_(True)
    (g_eager,) = torch.autograd.grad(f(x), x)
    (g_comp,) = torch.autograd.grad(torch.compile(f, backend="aot_eager", fullgraph=True)(x), x)
    assert g_eager.abs().max() > 0 and g_comp.dtype == dtype
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-6, atol=1e-7)
