"""Golden values and gradient flow of the TFD losses, computed independently of the implementation."""

from __future__ import annotations

import math

import pytest
import torch

from tfdistill.losses.tfd import channel_importance, depth_loss, width_loss
from tfdistill.losses.tfd_loss import TFDLoss


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# --------------------------------------------------------------------------- independent references
def ref_adaptive_pool(x: list[list[float]], oh: int, ow: int) -> list[list[float]]:
    """Adaptive average pooling of one 2D map, bins [floor(i*H/o), ceil((i+1)*H/o)), written with loops."""
    h, w = len(x), len(x[0])
    out = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        row = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            vals = [x[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            row.append(sum(vals) / len(vals))
        out.append(row)
    return out


def ref_depth(feats: list[torch.Tensor]) -> float:
    """Mean over pairs i<j of MSE after pooling to the smaller size and cropping channels; pure Python."""
    total, pairs = 0.0, 0
    for i in range(len(feats)):
        for j in range(i + 1, len(feats)):
            a, b = feats[i].tolist(), feats[j].tolist()
            c = min(len(a[0]), len(b[0]))
            oh = min(len(a[0][0]), len(b[0][0]))
            ow = min(len(a[0][0][0]), len(b[0][0][0]))
            sq, cnt = 0.0, 0
            for n in range(len(a)):
                for ch in range(c):
                    pa = ref_adaptive_pool(a[n][ch], oh, ow)
                    pb = ref_adaptive_pool(b[n][ch], oh, ow)
                    for y in range(oh):
                        for x in range(ow):
                            sq += (pa[y][x] - pb[y][x]) ** 2
                            cnt += 1
            total += sq / cnt
            pairs += 1
    return total / pairs


def ref_width(f: torch.Tensor) -> float:
    """Importance by explicit l2 norms per (sample, channel); ranking by sorted(); pairwise MSE; pure Python."""
    a = f.tolist()
    n, c = len(a), len(a[0])
    imp = []
    for ch in range(c):
        s = 0.0
        for k in range(n):
            vals = [v for row in a[k][ch] for v in row]
            norm = math.sqrt(sum(v * v for v in vals)) or 1.0
            s += sum(v / norm for v in vals) / len(vals)
        imp.append(s / n)
    ranked = sorted(range(c), key=lambda ch: -imp[ch])
    h = c // 2
    sq, cnt = 0.0, 0
    for r in range(h):
        hi, lo = ranked[r], ranked[h + r]
        for k in range(n):
            for y, row in enumerate(a[k][lo]):
                for x, v in enumerate(row):
                    sq += (v - a[k][hi][y][x]) ** 2
                    cnt += 1
    return sq / cnt


# --------------------------------------------------------------------------- depth-wise
def test_depth_hand_worked_two_maps():
    # shallow map pooled 2x2 -> 1x1: mean(1,2,3,4) = 2.5; deep = 0.5; crop to 1 channel; MSE = (2.5-0.5)^2
    shallow = t([[[[1, 2], [3, 4]], [[9, 9], [9, 9]]]])  # (1, 2, 2, 2)
    deep = t([[[[0.5]]]])  # (1, 1, 1, 1)
    assert depth_loss([shallow, deep]).item() == pytest.approx(4.0)


def test_depth_hand_worked_three_maps_is_mean_over_pairs():
    f1 = t([[[[1, 1], [1, 1]]]])  # (1,1,2,2) all ones
    f2 = t([[[[3]], [[7]]]])  # (1,2,1,1)
    f3 = t([[[[0]], [[5]], [[6]]]])  # (1,3,1,1)
    # pairs: (1,2): (1-3)^2 = 4 ; (1,3): (1-0)^2 = 1 ; (2,3): ((3-0)^2 + (7-5)^2)/2 = 6.5
    assert depth_loss([f1, f2, f3]).item() == pytest.approx((4 + 1 + 6.5) / 3)


@pytest.mark.parametrize("direction", ["top_down", "bottom_up"])
def test_depth_matches_reference_unequal_sizes_odd_channels(direction):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 3, 7, 5, generator=g), torch.randn(2, 5, 4, 3, generator=g),
             torch.randn(2, 7, 2, 2, generator=g), torch.randn(2, 2, 2, 2, generator=g)]
    assert depth_loss(feats, direction).item() == pytest.approx(ref_depth(feats), rel=1e-5)


def test_depth_bidirectional_is_sum_of_both_directions_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 8, 2, 2, generator=g)]

    def grads(fn):
        fs = [b.clone().requires_grad_(True) for b in base]
        v = fn(fs)
        v.backward()
        return v.detach(), [f.grad.clone() for f in fs]

    v_bi, g_bi = grads(lambda fs: depth_loss(fs, "bidirectional"))
    v_sum, g_sum = grads(lambda fs: depth_loss(fs, "top_down") + depth_loss(fs, "bottom_up"))
    assert v_bi.item() == pytest.approx(v_sum.item(), rel=1e-6)
    for a, b in zip(g_bi, g_sum):
        torch.testing.assert_close(a, b)


def test_depth_gradient_flows_only_to_student_side():
    shallow = torch.randn(2, 4, 8, 8, requires_grad=True)
    deep = torch.randn(2, 4, 4, 4, requires_grad=True)
    depth_loss([shallow, deep], "top_down").backward()
    assert shallow.grad is not None and shallow.grad.abs().sum() > 0
    assert deep.grad is None

    shallow.grad = None
    depth_loss([shallow, deep], "bottom_up").backward()
    assert shallow.grad is None
    assert deep.grad is not None and deep.grad.abs().sum() > 0

    depth_loss([shallow, deep], "bidirectional").backward()
    assert shallow.grad is not None and deep.grad is not None


def test_depth_gradient_of_cropped_channels_is_zero():
    shallow = torch.randn(1, 2, 4, 4, requires_grad=True)
    deep = torch.randn(1, 5, 2, 2)
    depth_loss([shallow, deep]).backward()
    assert shallow.grad.abs().sum() > 0
    shallow2 = torch.randn(1, 6, 4, 4, requires_grad=True)
    depth_loss([shallow2, deep]).backward()
    assert shallow2.grad[:, 5:].abs().sum() == 0  # only the first min(C)=5 channels take part
    assert shallow2.grad[:, :5].abs().sum() > 0


def test_depth_no_pooling_when_equal_sizes():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert depth_loss([a, b]).item() == pytest.approx(torch.mean((a - b) ** 2).item(), rel=1e-6)


# --------------------------------------------------------------------------- width-wise
def test_width_hand_worked():
    # channels (1 sample, 1x2 positions): normalised means c0=[1,0]->.5, c1=[3,4]->.7, c2=[1,3]->.632, c3=[1,1]->.707
    # ranking c3, c1, c2, c0: top {c3, c1} supervises {c2, c0}: ((1-1)^2 + (3-1)^2 + (1-3)^2 + (0-4)^2) / 4 = 6
    f = t([[[[1, 0]], [[3, 4]], [[1, 3]], [[1, 1]]]])
    assert width_loss([f]).item() == pytest.approx(6.0)
    assert channel_importance(f).tolist() == pytest.approx([0.5, 0.7, (1 + 3) / math.sqrt(10) / 2, math.sqrt(0.5)])


def test_width_matches_reference_batch_and_odd_channels():
    g = torch.Generator().manual_seed(2)
    for shape in [(3, 5, 4, 4), (2, 8, 3, 5), (4, 3, 2, 2)]:
        f = torch.randn(*shape, generator=g) + torch.linspace(-1, 2, shape[1]).view(1, -1, 1, 1)
        assert width_loss([f]).item() == pytest.approx(ref_width(f), rel=1e-5)


def test_width_mean_over_maps_and_skips_single_channel_maps():
    g = torch.Generator().manual_seed(3)
    f1, f2 = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 6, 2, 2, generator=g)
    one = torch.randn(2, 1, 5, 5, generator=g)
    expected = (ref_width(f1) + ref_width(f2)) / 2
    assert width_loss([f1, one, f2]).item() == pytest.approx(expected, rel=1e-5)
    assert width_loss([one]).item() == 0.0


def test_width_gradient_detach_top():
    f = t([[[[1, 0]], [[3, 4]], [[1, 3]], [[1, 1]]]]).requires_grad_(True)
    width_loss([f], detach_top=True).backward()
    g = f.grad[0, :, 0]
    # students c2, c0 get gradient; targets c3, c1 get none
    assert g[0].abs().sum() > 0 and g[2].abs().sum() > 0
    assert g[1].abs().sum() == 0 and g[3].abs().sum() == 0
    f.grad = None
    width_loss([f], detach_top=False).backward()
    g = f.grad[0, :, 0]
    # released-script behaviour: the target channels are pulled too (opposite sign)
    assert g[1].abs().sum() > 0
    torch.testing.assert_close(g[1], -g[0])


# --------------------------------------------------------------------------- module, dtypes, errors
def test_tfdloss_weights_and_terms():
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 8, 4, 4, generator=g)]
    terms = TFDLoss(alpha=0.5, beta=0.25)(feats)
    assert set(terms) == {"depth", "width", "total"}
    assert terms["depth"].item() == pytest.approx(0.5 * depth_loss(feats).item())
    assert terms["width"].item() == pytest.approx(0.25 * width_loss(feats).item())
    assert terms["total"].item() == pytest.approx(terms["depth"].item() + terms["width"].item())
    only_depth = TFDLoss(alpha=1.0, beta=0.0)(feats)
    assert only_depth["width"].item() == 0.0


def test_float32_under_autocast():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f1 = conv(x)
        f2 = torch.nn.functional.avg_pool2d(f1, 2)
        assert f1.dtype == torch.bfloat16
        d, w = depth_loss([f1, f2]), width_loss([f1, f2])
    assert d.dtype == torch.float32 and w.dtype == torch.float32
    ref = depth_loss([f1.float(), f2.float()])
    assert d.item() == pytest.approx(ref.item(), rel=1e-6)
    (d + w).backward()
    assert conv.weight.grad is not None


def test_channels_last_inputs_give_same_values():
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 8, 4, 4, generator=g)]
    cl = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    assert depth_loss(cl).item() == pytest.approx(depth_loss(feats).item(), rel=1e-6)
    assert width_loss(cl).item() == pytest.approx(width_loss(feats).item(), rel=1e-6)


@pytest.mark.parametrize(
    "fn, feats, msg",
    [
        (depth_loss, [torch.randn(2, 3, 4, 4)], "at least 2"),
        (depth_loss, [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4)], "4D"),
        (depth_loss, [torch.randn(2, 3, 4, 4), torch.randn(3, 3, 2, 2)], "batch"),
        (width_loss, [], "at least 1"),
        (width_loss, [torch.randn(2, 3)], "4D"),
        (width_loss, [torch.randn(2, 3, 4, 4), torch.randn(1, 3, 2, 2)], "batch"),
    ],
)
def test_clear_value_errors(fn, feats, msg):
    with pytest.raises(ValueError, match=msg):
        fn(feats)


def test_bad_direction():
    with pytest.raises(ValueError, match="valid: top_down, bottom_up, bidirectional"):
        depth_loss([torch.randn(1, 1, 2, 2)] * 2, "sideways")
