"""Baseline distillation methods (the CRD benchmark's KD, FitNets, AT, SP, CC, VID, RKD, PKT, AB, FT, FSP, NST,
CRD) and their combinations: golden values computed independently of the implementation (loops / numpy), gradient
flow, presets and their default weights, pre-stages, and CRD's memory banks.

``PRESET_CASES`` -- ``(preset, needs_teacher)`` -- is the list a later one-epoch CLI test can reuse.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tfdistill.losses.ab import ab_loss, ab_margin_loss
from tfdistill.losses.at import at_loss, at_pair_loss
from tfdistill.losses.cc import cc_loss, cc_loss_crd, rbf_correlation
from tfdistill.losses.crd import ContrastMemory, contrast_scores, nce_loss, sample_contrast_indices
from tfdistill.losses.fitnet import ConvRegressor, hint_loss
from tfdistill.losses.fsp import fsp_loss
from tfdistill.losses.ft import Paraphraser, Translator, ft_loss
from tfdistill.losses.kd import kd_loss
from tfdistill.losses.nst import nst_loss
from tfdistill.losses.pkt import pkt_loss
from tfdistill.losses.rkd import rkd_angle_loss, rkd_distance_loss
from tfdistill.losses.sp import sp_loss
from tfdistill.losses.vid import VIDHead, vid_nll
from tfdistill.errors import ConfigError
from tfdistill.methods import PRESETS, build_method, list_methods, method_schema, method_uses, resolve_preset

# --------------------------------------------------------------------------- presets under test
PRESET_CASES: list[tuple[str, bool]] = [
    ("ce", False), ("ls", False), ("tfd", False), ("tfd_ls", False),
    ("kd", True), ("fitnet", True), ("at", True), ("sp", True), ("cc", True), ("cc_crd", True), ("vid", True),
    ("rkd", True), ("pkt", True), ("ab", True), ("ab_crd", True), ("ft", True), ("fsp", True), ("fsp_crd", True),
    ("nst", True),
    ("crd", True), ("crd+kd", True), ("tfd+kd", True), ("tfd+crd", True), ("kd+ls", True), ("crd+ls", True),
]

EXPECTED_TERMS = {
    "ce": {"ce"}, "ls": {"ce"}, "tfd": {"ce", "tfd_depth", "tfd_width"}, "tfd_ls": {"ce", "tfd_depth", "tfd_width"},
    "kd": {"ce", "kd"}, "fitnet": {"ce", "fitnet"}, "at": {"ce", "at"}, "sp": {"ce", "sp"}, "cc": {"ce", "cc"},
    "cc_crd": {"ce", "cc"},
    "vid": {"ce", "vid"}, "rkd": {"ce", "rkd_distance", "rkd_angle"}, "pkt": {"ce", "pkt"}, "ab": {"ce", "ab"},
    "ab_crd": {"ce"}, "ft": {"ce", "ft"}, "fsp": {"ce", "fsp"}, "fsp_crd": {"ce"}, "nst": {"ce", "nst"},
    "crd": {"ce", "crd"}, "crd+kd": {"ce", "crd", "kd"}, "tfd+kd": {"ce", "tfd_depth", "tfd_width", "kd"},
    "tfd+crd": {"ce", "tfd_depth", "tfd_width", "crd"}, "kd+ls": {"ce", "kd"}, "crd+ls": {"ce", "crd"},
}

NUM_CLASSES, NUM_TRAIN = 5, 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not spin-wait on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- tiny networks
class TinyNet(nn.Module):
    """Bare stem + three stage containers (16x16 -> 8x8 -> 4x4 for 16x16 inputs) + pooled linear classifier."""

    def __init__(self, widths=(4, 8, 16), depth=1, num_classes=NUM_CLASSES):
        super().__init__()
        self.conv = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin, stages = widths[0], []
        for i, w in enumerate(widths):
            layers: list[nn.Module] = []
            for d in range(depth):
                stride = 2 if i > 0 and d == 0 else 1
                layers += [nn.Conv2d(cin, w, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.pool(x).flatten(1))


def teacher_for(preset: str) -> nn.Module:
    """A deeper teacher; FSP needs the student's channel counts, the others get a wider one."""
    widths = (4, 8, 16) if "fsp" in preset else (8, 16, 32)
    return TinyNet(widths, depth=2)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    idx = torch.randperm(NUM_TRAIN, generator=g)[:n]
    return x, y, idx


def small_params(preset: str):
    """The preset's params with CRD's negatives reduced to fit the tiny training set."""
    p = method_schema(preset)()
    if hasattr(p, "crd"):
        p.crd.nce_k = 16
    return p


def build(preset: str, params=None, seed=0):
    torch.manual_seed(seed)
    student = TinyNet()
    teacher = teacher_for(preset) if method_uses(preset).teacher else None
    p = params if params is not None else small_params(preset)
    x, _, _ = batch()
    m = build_method(student, p, example=x, num_classes=NUM_CLASSES, num_train=NUM_TRAIN, epochs=2, teacher=teacher)
    return m, student, teacher


def f64(*shape, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return t.abs() if positive else t


# =========================================================================== golden values (independent code)
def np_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_kd_golden():
    zs, zt = f64(3, 4, seed=1), f64(3, 4, seed=2)
    T = 4.0
    ref = 0.0
    for n in range(3):
        ps, pt = np_softmax(zs[n].numpy() / T), np_softmax(zt[n].numpy() / T)
        ref += float(np.sum(pt * (np.log(pt) - np.log(ps))))
    ref = ref / 3 * T * T
    assert kd_loss(zs, zt, T).item() == pytest.approx(ref, rel=1e-10)
    assert kd_loss(zs, zs, T).item() == pytest.approx(0.0, abs=1e-12)
    # T = 1 on two classes, hand-derived: p_t = (1/2, 1/2), p_s = softmax(0, ln 3) = (1/4, 3/4)
    hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    zs2 = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    assert kd_loss(zs2, torch.zeros(1, 2, dtype=torch.float64), 1.0).item() == pytest.approx(hand, rel=1e-12)


def test_hint_golden_and_regressor_shapes():
    fs = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert hint_loss(fs, torch.zeros_like(fs)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    for s, t in [((4, 8, 8), (6, 4, 4)), ((4, 4, 4), (6, 8, 8)), ((4, 8, 8), (6, 8, 8)), ((4, 8, 8), (6, 5, 5))]:
        r = ConvRegressor(s, t)
        assert tuple(r(torch.randn(2, *s)).shape[1:]) == t
    with pytest.raises(ValueError):
        ConvRegressor((4, 3, 3), (4, 8, 8))


def np_pool(a, oh, ow):
    """Average pooling of a (H, W) array whose size is a multiple of (oh, ow)."""
    h, w = a.shape
    return a.reshape(oh, h // oh, ow, w // ow).mean(axis=(1, 3))


def test_at_golden_with_pooling():
    fs, ft = f64(2, 3, 4, 4, seed=3), f64(2, 5, 2, 2, seed=4)
    ref = 0.0
    for n in range(2):
        s = np.stack([np_pool(fs[n, c].numpy(), 2, 2) for c in range(3)])
        qs = (s ** 2).sum(0).ravel() / 3
        qt = (ft[n].numpy() ** 2).sum(0).ravel() / 5
        qs, qt = qs / np.linalg.norm(qs), qt / np.linalg.norm(qt)
        ref += float(((qs - qt) ** 2).sum())
    ref /= 2 * 4  # mean over batch and the 2x2 positions
    assert at_pair_loss(fs, ft).item() == pytest.approx(ref, rel=1e-10)
    assert at_loss([fs, fs], [ft, ft]).item() == pytest.approx(2 * ref, rel=1e-10)


def test_sp_golden():
    fs, ft = f64(4, 2, 3, 3, seed=5), f64(4, 6, 2, 2, seed=6)
    def g(f):
        a = f.reshape(4, -1).numpy()
        m = a @ a.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)
    ref = float(((g(fs) - g(ft)) ** 2).sum() / 16)
    assert sp_loss([fs], [ft]).item() == pytest.approx(ref, rel=1e-10)


def test_nst_golden():
    fs, ft = f64(2, 3, 2, 2, seed=7), f64(2, 4, 2, 2, seed=8)
    ref = 0.0
    for n in range(2):
        s = [fs[n, i].reshape(-1).numpy() for i in range(3)]
        t = [ft[n, j].reshape(-1).numpy() for j in range(4)]
        s = [v / np.linalg.norm(v) for v in s]
        t = [v / np.linalg.norm(v) for v in t]
        kss = sum(float(a @ b) ** 2 for a in s for b in s) / 9
        ktt = sum(float(a @ b) ** 2 for a in t for b in t) / 16
        kst = sum(float(a @ b) ** 2 for a in s for b in t) / 12
        ref += ktt + kss - 2 * kst
    ref /= 2
    assert nst_loss([fs], [ft]).item() == pytest.approx(ref, rel=1e-10)
    assert nst_loss([fs], [fs]).item() == pytest.approx(0.0, abs=1e-12)


def test_vid_golden_and_init_variance():
    mu, tgt, alpha = f64(2, 3, 2, 2, seed=9), f64(2, 3, 2, 2, seed=10), f64(3, seed=11)
    var = np.log1p(np.exp(alpha.numpy())) + 1e-5
    ref = 0.0
    for n in range(2):
        for c in range(3):
            for y in range(2):
                for x in range(2):
                    d = mu[n, c, y, x].item() - tgt[n, c, y, x].item()
                    ref += 0.5 * (d * d / var[c] + math.log(var[c]))
    ref /= 24
    assert vid_nll(mu, tgt, alpha).item() == pytest.approx(ref, rel=1e-10)
    head = VIDHead(4, 6, 6, init_var=5.0)
    assert (F.softplus(head.log_scale) + head.eps).detach() == pytest.approx(torch.full((6,), 5.0), rel=1e-6)


def test_ab_golden_hand_derived():
    # margin 1: s=-2,t<=0 -> 0 (already beyond -m); s=.5,t<=0 -> (1.5)^2; s=2,t>0 -> 0; s=0,t>0 -> 1
    src = torch.tensor([-2.0, 0.5, 2.0, 0.0]).view(1, 1, 2, 2)
    tgt = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 2, 2)
    assert ab_margin_loss(src, tgt).item() == pytest.approx(3.25)
    # CRD's stage weights 2^(i-n+1) and scale 3/1000 for two stages: 0.5 * a + 1 * b
    a, b = ab_margin_loss(src, tgt).item(), ab_margin_loss(-src, tgt).item()
    assert ab_loss([src, -src], [tgt, tgt]).item() == pytest.approx((0.5 * a + b) * 3 / 1000)


def test_pkt_golden():
    fs, ft = f64(4, 5, seed=12), f64(4, 3, seed=13)
    eps = 1e-7
    def probs(f):
        v = [row / (np.sqrt((row ** 2).sum()) + eps) for row in f.numpy()]
        k = np.array([[(float(a @ b) + 1) / 2 for b in v] for a in v])
        return k / k.sum(1, keepdims=True)
    ps, pt = probs(fs), probs(ft)
    ref = float(np.mean(pt * np.log((pt + eps) / (ps + eps))))
    assert pkt_loss(fs, ft).item() == pytest.approx(ref, rel=1e-9)


def np_huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_rkd_golden():
    fs, ft = f64(5, 3, seed=14), f64(5, 4, seed=15)
    def dist(f):
        x = f.numpy()
        d = np.array([[np.linalg.norm(x[i] - x[j]) if i != j else 0.0 for j in range(5)] for i in range(5)])
        return d / (d.sum() / 20)  # mean over the 20 off-diagonal pairs
    ds, dt = dist(fs), dist(ft)
    ref_d = sum(np_huber(ds[i, j], dt[i, j]) for i in range(5) for j in range(5)) / 25
    assert rkd_distance_loss(fs, ft).item() == pytest.approx(ref_d, rel=1e-7)

    def angle(f, i, j, k):
        x = f.numpy()
        u, v = x[j] - x[i], x[k] - x[i]
        if j == i or k == i:
            return 0.0
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
    ref_a = sum(np_huber(angle(fs, i, j, k), angle(ft, i, j, k))
                for i in range(5) for j in range(5) for k in range(5)) / 125
    assert rkd_angle_loss(fs, ft).item() == pytest.approx(ref_a, rel=1e-7)


def test_cc_golden_and_taylor_limit():
    fs, ft = f64(4, 6, seed=16), f64(4, 6, seed=17)
    gamma, order = 0.4, 2
    def corr(f, P):
        v = [r / np.linalg.norm(r) for r in f.numpy()]
        return np.array([[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * float(a @ b) ** p
                               for p in range(P + 1)) for b in v] for a in v])
    ref = float(np.mean((corr(fs, order) - corr(ft, order)) ** 2))
    assert cc_loss(fs, ft, gamma, order).item() == pytest.approx(ref, rel=1e-10)
    # a high order recovers the exact Gaussian RBF kernel exp(-gamma ||x - y||^2) of normalised rows
    x = F.normalize(fs, dim=1)
    exact = torch.exp(-gamma * torch.cdist(x, x) ** 2)
    assert torch.allclose(rbf_correlation(fs, gamma, 20), exact, atol=1e-10)
    # CRD's benchmark formula: mean over consecutive samples of sum_d |d_i| |d_{i+1}|
    d = (fs - ft).abs().numpy()
    ref_crd = sum(float((d[i] * d[i + 1]).sum()) for i in range(3)) / 3
    assert cc_loss_crd(fs, ft).item() == pytest.approx(ref_crd, rel=1e-12)


def test_ft_golden():
    fs, ft = f64(2, 3, 4, 4, seed=18), f64(2, 2, 2, 2, seed=19)
    ref = 0.0
    for n in range(2):
        s = np.stack([np_pool(fs[n, c].numpy(), 2, 2) for c in range(3)])
        a = (s ** 2).mean(0).ravel()
        b = (ft[n].numpy() ** 2).mean(0).ravel()
        ref += float(np.abs(a / np.linalg.norm(a) - b / np.linalg.norm(b)).sum())
    ref /= 2 * 4
    assert ft_loss(fs, ft).item() == pytest.approx(ref, rel=1e-10)
    para, tr = Paraphraser(8, 0.5), Translator(4, 8, 0.5)
    f = torch.randn(2, 8, 4, 4)
    assert para(f).shape == f.shape and para.encode(f).shape == (2, 4, 4, 4)
    assert tr(torch.randn(2, 4, 4, 4)).shape == (2, 4, 4, 4)


def test_fsp_golden():
    s = [f64(2, 2, 4, 4, seed=20), f64(2, 3, 2, 2, seed=21), f64(2, 3, 2, 2, seed=22)]
    t = [f64(2, 2, 4, 4, seed=23), f64(2, 3, 2, 2, seed=24), f64(2, 3, 2, 2, seed=25)]
    def fsp(bot, top):
        bot, top = bot.numpy(), top.numpy()
        if bot.shape[-1] != top.shape[-1]:
            bot = np.stack([np.stack([np_pool(bot[n, c], 2, 2) for c in range(bot.shape[1])])
                            for n in range(bot.shape[0])])
        n_, ct, cb, hw = bot.shape[0], top.shape[1], bot.shape[1], top.shape[2] * top.shape[3]
        g = np.zeros((n_, ct, cb))
        for n in range(n_):
            for i in range(ct):
                for j in range(cb):
                    g[n, i, j] = float((top[n, i] * bot[n, j]).sum()) / hw
        return g
    ref = sum(float(np.mean((fsp(s[k], s[k + 1]) - fsp(t[k], t[k + 1])) ** 2)) for k in range(2))
    assert fsp_loss(s, t).item() == pytest.approx(ref, rel=1e-10)
    with pytest.raises(ValueError):
        fsp_loss([s[0], s[1]], [f64(2, 5, 4, 4), t[1]])


def test_crd_nce_loss_and_scores_golden():
    p = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]], dtype=torch.float64)
    n_data, eps = 10, 1e-7
    c = 2 / n_data
    ref = 0.0
    for row in p.tolist():
        ref += math.log(row[0] / (row[0] + c + eps)) + sum(math.log(c / (q + c + eps)) for q in row[1:])
    assert nce_loss(p, n_data).item() == pytest.approx(-ref / 2, rel=1e-12)
    # both score paths (dense over the bank; gathered rows) against a loop
    for n, k in [(10, 9), (100, 3)]:
        mem, anchors = f64(n, 4, seed=26), f64(3, 4, seed=27)
        idx = torch.randint(0, n, (3, k + 1))
        ref_s = torch.tensor([[float(mem[idx[b, j]] @ anchors[b]) for j in range(k + 1)] for b in range(3)],
                             dtype=torch.float64)
        assert torch.allclose(contrast_scores(mem, anchors, idx), ref_s, atol=1e-12)


def test_crd_negative_sampling():
    torch.manual_seed(0)
    n, classes, k = 60, 3, 2000
    labels = torch.arange(n) % classes
    labels[:6] = -1  # not seen yet: allowed as negatives for every class
    index = torch.tensor([7, 8, 9, 30])
    targets = labels[index]
    idx = sample_contrast_indices(index, targets, labels, n, classes, k, "other_class")
    assert idx.shape == (4, k + 1) and torch.equal(idx[:, 0], index)
    neg = idx[:, 1:]
    assert (labels[neg] != targets.unsqueeze(1)).all()
    for b in range(4):  # every eligible sample is drawn (uniform over the other classes, with replacement)
        eligible = set((labels != targets[b]).nonzero().flatten().tolist())
        assert set(neg[b].tolist()) == eligible
    uni = sample_contrast_indices(index, None, None, n, classes, k, "uniform")[:, 1:]
    assert (uni != index.unsqueeze(1)).all() and uni.min() >= 0 and uni.max() < n
    assert len(set(uni[0].tolist())) == n - 1


# =========================================================================== gradients
GRAD_CASES = {
    "kd": (lambda s, t: kd_loss(s, t), (6, 5), (6, 5)),
    "hint": (lambda s, t: hint_loss(s, t), (2, 3, 4, 4), (2, 3, 4, 4)),
    "at": (lambda s, t: at_loss([s], [t]), (2, 3, 4, 4), (2, 5, 2, 2)),
    "sp": (lambda s, t: sp_loss([s], [t]), (4, 3, 2, 2), (4, 5, 2, 2)),
    "nst": (lambda s, t: nst_loss([s], [t]), (2, 3, 4, 4), (2, 5, 2, 2)),
    "vid": (lambda s, t: vid_nll(s, t, torch.zeros(3, dtype=s.dtype)), (2, 3, 2, 2), (2, 3, 2, 2)),
    "ab": (lambda s, t: ab_loss([s], [t]), (2, 3, 2, 2), (2, 3, 2, 2)),
    "pkt": (lambda s, t: pkt_loss(s, t), (5, 4), (5, 6)),
    "rkd_distance": (lambda s, t: rkd_distance_loss(s, t), (5, 4), (5, 6)),
    "rkd_angle": (lambda s, t: rkd_angle_loss(s, t), (5, 4), (5, 6)),
    "ft": (lambda s, t: ft_loss(s, t), (2, 3, 4, 4), (2, 3, 2, 2)),
    "fsp": (lambda s, t: fsp_loss([s, s * 2], [t, t * 3]), (2, 3, 2, 2), (2, 3, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_teacher_gets_no_gradient_student_does(name):
    fn, s_shape, t_shape = GRAD_CASES[name]
    s = f64(*s_shape, seed=30).requires_grad_()
    t = f64(*t_shape, seed=31).requires_grad_()
    loss = fn(s, t)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["kd", "at", "sp", "nst", "vid", "pkt", "rkd_distance", "rkd_angle", "fsp"])
def test_gradcheck(name):
    fn, s_shape, t_shape = GRAD_CASES[name]
    t = f64(*t_shape, seed=33)
    s = f64(*s_shape, seed=32).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,), eps=1e-6, atol=1e-5)


def test_cc_gradient_reaches_both_embeddings():
    """CC (like CRD) trains a linear embedding on each side, so its teacher argument is not detached."""
    s, t = f64(4, 6, seed=34).requires_grad_(), f64(4, 6, seed=35).requires_grad_()
    for fn in (cc_loss, cc_loss_crd):
        s.grad = t.grad = None
        fn(s, t).backward()
        assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda x: cc_loss(x, t.detach()), (s,), eps=1e-6, atol=1e-5)


def test_losses_compute_in_float32_under_autocast():
    s = torch.randn(4, 3, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for v in (at_loss([s], [s]), nst_loss([s], [s * 2]), kd_loss(s.flatten(1), s.flatten(1) * 2),
                  pkt_loss(s.flatten(1), s.flatten(1) + 1), fsp_loss([s, s], [s, s])):
            assert v.dtype == torch.float32


# =========================================================================== presets
DEFAULT_WEIGHTS = {  # preset -> (CE weight, {component: {field: value}}) as in the CRD benchmark's scripts
    "kd": (0.1, {"kd": {"weight": 0.9, "T": 4.0}}),
    "fitnet": (1.0, {"fitnet": {"weight": 100.0, "hint_stage": 1}}),
    "at": (1.0, {"at": {"weight": 1000.0, "p": 2.0}}),
    "sp": (1.0, {"sp": {"weight": 3000.0}}),
    "cc": (1.0, {"cc": {"weight": 0.02, "feat_dim": 128, "kernel": "rbf", "gamma": 0.4, "order": 2}}),
    "cc_crd": (1.0, {"cc": {"weight": 0.02, "kernel": "crd"}}),
    "vid": (1.0, {"vid": {"weight": 1.0}}),
    "rkd": (1.0, {"rkd": {"weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}}),
    "pkt": (1.0, {"pkt": {"weight": 30000.0}}),
    "ab": (1.0, {"ab": {"weight": 1.0, "init_epochs": 30}}),
    "ab_crd": (1.0, {"ab": {"weight": 0.0, "init_epochs": 30}}),
    "ft": (1.0, {"ft": {"weight": 200.0, "init_epochs": 30, "init_lr": 0.01}}),
    "fsp": (1.0, {"fsp": {"weight": 50.0}}),
    "fsp_crd": (1.0, {"fsp": {"weight": 0.0, "init_epochs": 30}}),
    "nst": (1.0, {"nst": {"weight": 50.0}}),
    "crd": (1.0, {"crd": {"weight": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5}}),
    "crd+kd": (1.0, {"crd": {"weight": 0.8}, "kd": {"weight": 1.0, "T": 4.0}}),
    "tfd+kd": (0.1, {"kd": {"weight": 0.9, "T": 4.0}, "tfd": {"alpha": 5e-3, "beta": 4e-4}}),
    "tfd+crd": (1.0, {"crd": {"weight": 0.8}, "tfd": {"alpha": 5e-3, "beta": 4e-4}}),
}


@pytest.mark.parametrize("preset", sorted(DEFAULT_WEIGHTS))
def test_preset_default_weights(preset):
    ce, comps = DEFAULT_WEIGHTS[preset]
    p = method_schema(preset)()
    assert p.ce_weight == ce and p.label_smoothing == 0.0
    for comp, fields in comps.items():
        for k, v in fields.items():
            assert getattr(getattr(p, comp), k) == v, (preset, comp, k)


def test_combinations_only_compose_registered_components():
    for name, parts in [("tfd+kd", ("tfd", "kd")), ("tfd+crd", ("tfd", "crd")), ("crd+kd", ("crd", "kd"))]:
        assert name in PRESETS.names()
        assert set(resolve_preset(name).components) == set(parts)
    kdls = method_schema("kd+ls")()
    assert (kdls.ce_weight, kdls.label_smoothing, kdls.kd.weight) == (0.1, 0.1, 0.9)


def test_label_smoothing_works_with_any_method():
    from tfdistill.config import load_config

    cfg = load_config(overrides=["method.name=fitnet", "method.label_smoothing=0.1", "method.fitnet.weight=50"])
    assert cfg.method.label_smoothing == 0.1 and cfg.method.fitnet.weight == 50
    m, _, _ = build("crd+kd", params=_with(small_params("crd+kd"), label_smoothing=0.1))
    assert m.label_smoothing == 0.1


def _with(p, **kw):
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_all_cases_are_registered():
    names = set(list_methods())
    for preset, needs_teacher in PRESET_CASES:
        assert preset in names or "+" in preset
        assert method_uses(preset).teacher == needs_teacher


@pytest.mark.parametrize("preset,needs_teacher", PRESET_CASES)
def test_method_forward_backward(preset, needs_teacher):
    m, student, teacher = build(preset)
    m.train()
    m.on_epoch_start(0)
    x, y, idx = batch()
    logits, terms = m(x, y, idx)
    assert logits.shape == (8, NUM_CLASSES)
    assert set(terms) == EXPECTED_TERMS[preset]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    torch.stack(list(terms.values())).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    if teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for name, comp in m.distillers.items():
        if getattr(comp.params, "weight", 1.0) == 0:
            continue
        for pname, p in comp.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), (preset, name, pname)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("preset", sorted({*list_methods(), *(p for p, _ in PRESET_CASES)}))
def test_method_under_low_precision_autocast(preset, dtype):
    """Every registered method's forward *and backward* (main stage and pre-stages) under autocast, channels_last.

    Mixed-dtype kernels (e.g. ``mse_loss`` of a float32 and a bf16 operand) run forward on every torch but have no
    backward on some supported versions (torch 2.11: "Found dtype BFloat16 but expected Float"): this is the test
    that catches that class of bug on the CPU, when run on each torch of the CI matrix."""
    torch.manual_seed(0)
    student = TinyNet()
    teacher = None
    if method_uses(preset).teacher:  # Tf-KD_self distils from a copy of the student's architecture
        teacher = TinyNet() if preset.startswith("tfkd_self") else teacher_for(preset)
    x, y, idx = batch()
    m = build_method(student, small_params(preset), example=x, num_classes=NUM_CLASSES, num_train=NUM_TRAIN,
                     epochs=2, teacher=teacher)
    if method_uses(preset).paired_batches:  # CS-KD: a same-class partner appended per sample
        x = torch.cat([x, batch(seed=1)[0]])
    m.to(memory_format=torch.channels_last)
    m.train()
    x = x.contiguous(memory_format=torch.channels_last)
    for stage in m.pre_stages():
        with torch.autocast("cpu", dtype=dtype):
            terms = stage.loss(m.outputs(x, y, idx))
        torch.stack([v.float() for v in terms.values()]).sum().backward()
    m.on_epoch_start(0)
    m.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype):
        _, terms = m(x, y, idx)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values()), terms
    torch.stack(list(terms.values())).sum().backward()
    grads = [(n, p) for n, p in m.named_parameters() if p.grad is not None]
    assert any(n.startswith("student.") for n, _ in grads)
    for n, p in grads:
        assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), (preset, n)


def test_build_errors():
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_method(TinyNet(), method_schema("kd")(), example=batch()[0], num_classes=5, num_train=40, epochs=1)
    p = method_schema("fsp")()
    with pytest.raises(ConfigError, match="channel"):
        build_method(TinyNet(), p, example=batch()[0], num_classes=5, num_train=40, epochs=1,
                     teacher=TinyNet((8, 16, 32)))
    p = method_schema("fitnet")()
    p.fitnet.hint_stage = 5
    with pytest.raises(ConfigError, match="hint_stage"):
        build_method(TinyNet(), p, example=batch()[0], num_classes=5, num_train=40, epochs=1, teacher=TinyNet())
    p = method_schema("cc")()
    p.cc.kernel = "cosine"
    with pytest.raises(ConfigError, match="kernel"):
        build_method(TinyNet(), p, example=batch()[0], num_classes=5, num_train=40, epochs=1, teacher=TinyNet())


def test_stage_count_mismatch_is_a_clear_error():
    class TwoStage(TinyNet):
        def forward(self, x):
            x = self.relu(self.bn(self.conv(x)))
            x = self.stage2(self.stage1(x))
            return self.fc(self.pool(x).flatten(1))

    t = TwoStage((8, 16, 16))
    with pytest.raises(ConfigError, match="taps"):
        build_method(TinyNet(), method_schema("at")(), example=batch()[0], num_classes=5, num_train=40, epochs=1,
                     teacher=t)
    # methods on one stage or on embeddings do not need equal stage counts
    build_method(TinyNet(), method_schema("sp")(), example=batch()[0], num_classes=5, num_train=40, epochs=1,
                 teacher=TwoStage((8, 16, 16)))


# =========================================================================== pre-stages
def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


@pytest.mark.parametrize("preset,stage_name,overrides", [
    ("fitnet", "fitnet_hint", {"init_epochs": 1}),
    ("ab", "ab_init", {}),
    ("ft", "ft_paraphraser", {}),
    ("fsp_crd", "fsp_init", {}),
])
def test_pre_stage_trains_only_its_modules(preset, stage_name, overrides):
    p = small_params(preset)
    comp_name = resolve_preset(preset).components[0]
    for k, v in overrides.items():
        setattr(getattr(p, comp_name), k, v)
    m, student, teacher = build(preset, params=p)
    stages = m.pre_stages()
    assert [s.name for s in stages] == [stage_name] and stages[0].epochs >= 1
    stage = stages[0]
    params = [q for mod in stage.modules for q in mod.parameters() if q.requires_grad]
    before_s, before_c, before_t = _snapshot(student), _snapshot(m.distillers), _snapshot(teacher)
    opt = torch.optim.SGD(params, lr=0.1)
    m.train()
    x, y, idx = batch()
    terms = stage.loss(m.outputs(x, y, idx))
    assert set(terms) == {stage_name} and torch.isfinite(terms[stage_name])
    opt.zero_grad(set_to_none=True)
    terms[stage_name].backward()
    opt.step()
    changed_s, changed_c = _changed(before_s, student), _changed(before_c, m.distillers)
    assert not _changed(before_t, teacher)
    assert not any(k.startswith("fc.") for k in changed_s)  # the classifier is not part of any pre-stage loss
    comp = m.distillers[comp_name]
    if preset == "fitnet":  # the student up to the hint stage (stage2) and the regressor
        assert changed_s and all(k.startswith(("conv", "bn", "stage1", "stage2")) for k in changed_s)
        assert changed_c and all(k.startswith("fitnet.regressor") for k in changed_c)
    elif preset == "ab":  # connectors and the student's feature layers
        assert any(k.startswith("stage3") for k in changed_s)
        assert {k.split(".")[1] for k in changed_c} == {"connectors"}
    elif preset == "ft":  # the paraphraser alone
        assert not changed_s
        assert changed_c and all(k.startswith("ft.paraphraser") for k in changed_c)
        m.on_epoch_start(0)  # main stage: the paraphraser is frozen
        assert not any(q.requires_grad for q in comp.paraphraser.parameters())
        assert all(q.requires_grad for q in comp.translator.parameters())
    else:  # fsp: the student's feature layers only
        assert changed_s and not changed_c


def test_no_pre_stage_by_default_for_single_stage_methods():
    for preset in ("fitnet", "fsp", "at", "crd", "kd"):
        m, _, _ = build(preset)
        assert m.pre_stages() == []


# =========================================================================== CRD memory
def _crd(m):
    return m.distillers["crd"]


def test_crd_memory_updates_exactly_the_batch_rows_with_shuffled_indices():
    m, _, _ = build("crd")
    mem = _crd(m).memory
    m.train()
    for seed in (0, 1):  # two batches with different shuffled indices
        x, y, idx = batch(seed=seed)
        before_s, before_t = mem.memory_s.clone(), mem.memory_t.clone()
        _, terms = m(x, y, idx)
        terms["crd"].backward()
        other = torch.ones(NUM_TRAIN, dtype=torch.bool)
        other[idx] = False
        for before, after in ((before_s, mem.memory_s), (before_t, mem.memory_t)):
            assert torch.equal(before[other], after[other])
            assert (before[idx] != after[idx]).any(dim=1).all()
            assert torch.allclose(after[idx].norm(dim=1), torch.ones(len(idx)), atol=1e-5)
        assert torch.equal(mem.labels[idx], y)
    # the update is CRD's: row <- normalize(m * row + (1 - m) * embedding)
    x, y, idx = batch(seed=2)
    before = mem.memory_s.clone()
    with torch.no_grad():
        out = m.outputs(x, y, idx)
        emb = _crd(m).embed_s(out.emb_s)
    _crd(m).update_memory(idx, emb, emb, y)
    expect = F.normalize(0.5 * before[idx] + 0.5 * emb, dim=1)
    assert torch.allclose(mem.memory_s[idx], expect, atol=1e-6)


def test_crd_eval_mode_leaves_memory_and_z_alone_and_z_is_set_once():
    m, _, _ = build("crd")
    mem = _crd(m).memory
    assert (mem.z < 0).all()
    m.eval()
    x, y, idx = batch()
    state = {k: v.clone() for k, v in mem.state_dict().items()}
    with torch.no_grad():
        m(x, y, idx)
    assert all(torch.equal(state[k], v) for k, v in mem.state_dict().items())
    m.train()
    m(x, y, idx)
    z = mem.z.clone()
    assert (z > 0).all()
    m(*batch(seed=3))
    assert torch.equal(mem.z, z)
    keys = set(m.distillers.state_dict())
    assert {"crd.memory.memory_s", "crd.memory.memory_t", "crd.memory.labels", "crd.memory.z"} <= keys


def test_crd_needs_indices():
    m, _, _ = build("crd")
    x, y, _ = batch()
    with pytest.raises(RuntimeError, match="index"):
        m(x, y, None)


def test_crd_gather_hook_keeps_replicas_identical():
    """Two simulated ranks with different local batches end with the banks of one global update."""
    m, _, _ = build("crd")
    reference = copy.deepcopy(_crd(m).memory)
    ranks = [copy.deepcopy(_crd(m)) for _ in range(2)]
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(NUM_TRAIN, generator=g)
    local = []
    for r in range(2):
        idx = perm[r * 4:(r + 1) * 4]
        e = F.normalize(torch.randn(4, 128, generator=g), dim=1)
        local.append([idx, e, -e, torch.randint(0, NUM_CLASSES, (4,), generator=g)])

    def gather_for():
        """A stand-in for an all-gather: update_memory gathers index, emb_s, emb_t, targets in this order."""
        calls = iter(range(4))

        def gather(t):
            k = next(calls)
            assert torch.equal(t, local[r][k])
            return torch.cat([local[q][k] for q in range(2)])

        return gather

    for r, comp in enumerate(ranks):
        comp.gather = gather_for()
        comp.update_memory(*local[r])
    reference.update(torch.cat([local[r][0] for r in range(2)]), torch.cat([local[r][1] for r in range(2)]),
                     torch.cat([local[r][2] for r in range(2)]), torch.cat([local[r][3] for r in range(2)]))
    for comp in ranks:
        for k, v in reference.state_dict().items():
            assert torch.equal(comp.memory.state_dict()[k], v), k


def test_crd_memory_module_standalone():
    mem = ContrastMemory(dim=8, num_data=30, num_classes=3, k=5)
    s, t = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(), F.normalize(torch.randn(4, 8), dim=1)
    p_s, p_t = mem(s, t, torch.tensor([0, 5, 9, 29]), torch.tensor([0, 1, 2, 0]))
    assert p_s.shape == p_t.shape == (4, 6) and (p_s > 0).all()
    (nce_loss(p_s, 30) + nce_loss(p_t, 30)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


# =========================================================================== optional: the model zoo
def test_zoo_resnet8_from_resnet20():
    models = pytest.importorskip("tfdistill.models")
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    idx = torch.arange(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for preset in ("fitnet", "at", "ab", "ft", "vid", "fsp", "crd+kd", "rkd"):
            torch.manual_seed(0)
            student, teacher = models.create_model("resnet8", 10), models.create_model("resnet20", 10)
            p = small_params(preset)
            m = build_method(student, p, example=x, num_classes=10, num_train=20, epochs=1, teacher=teacher)
            m.train()
            m.on_epoch_start(0)
            _, terms = m(x, y, idx)
            torch.stack(list(terms.values())).sum().backward()
            assert all(torch.isfinite(v) for v in terms.values()), preset
