"""Teacher-free / self-distillation family (issue 13): TFD with other mimicking losses, Tf-KD, PS-KD, CS-KD,
the released script's TFD+KD, and method families. Golden values come from independent numpy/loop formulas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tfdistill.errors import ConfigError
from tfdistill.losses.tfd import depth_loss, width_loss
from tfdistill.losses.tfd_distance import depth_loss_with, width_loss_with
from tfdistill.methods import method_schema

from test_baselines import NUM_CLASSES, batch, build, f64, np_pool


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# =========================================================================== TFD with another distance
def np_sp(s, t):
    def g(f):
        a = f.reshape(f.shape[0], -1)
        m = a @ a.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)
    b = s.shape[0]
    return float(((g(s) - g(t)) ** 2).sum() / (b * b))


def np_at(s, t):
    def q(f):
        a = (f ** 2).mean(1).reshape(f.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    return float(((q(s) - q(t)) ** 2).mean())


def np_nst(s, t):
    def nrm(f):
        a = f.reshape(f.shape[0], f.shape[1], -1)
        return a / np.linalg.norm(a, axis=2, keepdims=True)
    s, t = nrm(s), nrm(t)
    k = lambda a, b: float((np.einsum("nil,njl->nij", a, b) ** 2).mean())
    return k(t, t) + k(s, s) - 2 * k(s, t)


def np_ab(s, t):
    total = 0.0
    for sv, tv in zip(s.ravel(), t.ravel()):
        if tv > 0 and sv <= 1:
            total += (sv - 1) ** 2
        elif tv <= 0 and sv > -1:
            total += (sv + 1) ** 2
    return total / s.shape[0]


NP_DIST = {"sp": np_sp, "at": np_at, "nst": np_nst, "ab": np_ab}


def np_align(a, b):
    """Pool the larger map to the smaller's size and crop both to min channels (numpy, per sample/channel)."""
    c = min(a.shape[1], b.shape[1])
    oh, ow = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    def pool(f):
        return np.stack([np.stack([np_pool(f[n, k], oh, ow) for k in range(c)]) for n in range(f.shape[0])])
    return pool(a), pool(b)


def np_width_halves(f):
    x = f.reshape(f.shape[0], f.shape[1], -1)
    imp = (x.sum(2) / np.linalg.norm(x, axis=2)).mean(0) / x.shape[2]
    order = np.argsort(-imp, kind="stable")
    h = f.shape[1] // 2
    return f[:, order[h:2 * h]], f[:, order[:h]]


@pytest.mark.parametrize("dist", ["sp", "at", "nst", "ab"])
def test_tfd_distance_golden(dist):
    # the TFD losses compute in float32 (float64 maps are read as float32), hence the tolerance
    feats = [f64(3, 4, 8, 8, seed=1), f64(3, 6, 4, 4, seed=2), f64(3, 8, 2, 2, seed=3)]
    arrs = [f.numpy() for f in feats]
    d = NP_DIST[dist]
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
    ref_td = np.mean([d(*np_align(arrs[i], arrs[j])) for i, j in pairs])
    ref_bu = np.mean([d(*reversed(np_align(arrs[i], arrs[j]))) for i, j in pairs])
    assert depth_loss_with(feats, dist).item() == pytest.approx(ref_td, rel=2e-5)
    assert depth_loss_with(feats, dist, "bottom_up").item() == pytest.approx(ref_bu, rel=2e-5)
    assert depth_loss_with(feats, dist, "bidirectional").item() == pytest.approx(ref_td + ref_bu, rel=2e-5)
    ref_w = np.mean([d(*np_width_halves(a)) for a in arrs])
    assert width_loss_with(feats, dist).item() == pytest.approx(ref_w, rel=2e-5)


def test_tfd_distance_l2_is_the_unchanged_path_and_targets_get_no_gradient():
    m, _, _ = build("tfd")
    x, y, idx = batch()
    m.train()
    _, terms = m(x, y, idx)
    _, feats = m.student_tap(x)
    p = m.params.tfd
    assert torch.equal(terms["tfd_depth"], (p.alpha * depth_loss(feats)).float())
    assert torch.equal(terms["tfd_width"], (p.beta * width_loss(feats)).float())
    # the target side of a non-l2 distance is a constant: only the shallow map receives gradient top-down
    a = f64(2, 4, 4, 4, seed=4).requires_grad_(True)
    b = f64(2, 4, 2, 2, seed=5).requires_grad_(True)
    depth_loss_with([a, b], "at").backward()
    assert a.grad.abs().sum() > 0 and b.grad is None


@pytest.mark.parametrize("dist", ["sp", "at", "nst", "ab"])
def test_tfd_distance_method_forward_backward_and_bf16(dist):
    p = method_schema("tfd")()
    p.tfd.distance = dist
    m, student, _ = build("tfd", params=p)
    m.train()
    x, y, idx = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, terms = m(x, y, idx)
    assert set(terms) == {"ce", "tfd_depth", "tfd_width"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    torch.stack(list(terms.values())).sum().backward()
    assert all(q.grad is not None for q in student.stage1.parameters())


def test_tfd_distance_errors():
    p = method_schema("tfd")()
    p.tfd.distance = "cosine"
    with pytest.raises(ConfigError, match="method.tfd.distance.*valid: l2, sp, at, nst, ab"):
        build("tfd", params=p)
    p.tfd.distance, p.tfd.detach_top = "sp", False
    with pytest.raises(ConfigError, match="detach_top=false needs method.tfd.distance=l2"):
        build("tfd", params=p)


# =========================================================================== TFD + KD as the released script
def test_tfd_kd_released_preset_ramps_both_terms():
    p = method_schema("tfd+kd_released")()
    assert (p.ce_weight, p.kd.weight, p.kd.T, p.kd.ramp_epochs, p.tfd.ramp_epochs) == (1.0, 1.0, 4.0, 20, 20)
    assert (p.tfd.alpha, p.tfd.beta) == (5e-3, 4e-4)
    assert method_schema("tfd+kd")().kd.ramp_epochs == 0  # the other preset is unchanged
    m, _, _ = build("tfd+kd_released", params=p)
    m.train()
    x, y, idx = batch()
    from tfdistill.losses.kd import kd_loss
    for epoch, scale in [(0, 1 / 20), (4, 5 / 20), (19, 1.0), (30, 1.0)]:
        m.on_epoch_start(epoch)
        with torch.no_grad():
            _, terms = m(x, y, idx)
            logits, feats = m.student_tap(x)
            ref_kd = kd_loss(logits, m.teacher(x), 4.0)
        assert terms["kd"].item() == pytest.approx(scale * ref_kd.item(), rel=1e-5)
        assert terms["tfd_depth"].item() == pytest.approx(scale * 5e-3 * depth_loss(feats).item(), rel=1e-5)


# =========================================================================== small fixes
def test_table2_compares_the_papers_cc_with_crds_cc_formula():
    from pathlib import Path

    from tfdistill.sweep.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "reproduce" / "table2.yaml")
    methods = list(spec.grid[0].methods)
    assert "cc_crd" in methods and "cc" not in methods
    assert spec.paper.results.resnet32.cc_crd == 71.48


def test_ft_loss_odd_exponent_takes_the_absolute_value():
    from tfdistill.losses.ft import factor, ft_loss

    fs, ft = f64(2, 3, 2, 2, seed=20), f64(2, 3, 2, 2, seed=21)
    d = (factor(fs) - factor(ft)).numpy()
    assert ft_loss(fs, ft, p2=3.0).item() == pytest.approx(float((np.abs(d) ** 3).mean()), rel=1e-10)


# =========================================================================== Tf-KD
def _tfkd_inputs():
    """The fixed inputs the authors' code was run on (see the values below)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(4, 10, generator=g, dtype=torch.float64) * 2
    return logits, torch.tensor([1, 0, 9, 3]), teacher


# Values of yuanli2333/Teacher-free-Knowledge-Distillation, my_loss_function.py (loss_kd_regularization with
# reg_alpha=1, T=20, multiplier=1; with reg_alpha=0.1, multiplier=100; loss_kd_self with alpha=0.95, T=6,
# multiplier=50), run outside the project on _tfkd_inputs() (float64, .cuda() as identity).
AUTHORS_TFKD_REG_KL = 0.2801063398348414
AUTHORS_TFKD_REG_R18 = 6.46226795645662
AUTHORS_TFKD_SELF_R18 = 21.403548983432323


def test_tfkd_reg_golden_and_authors_code():
    from tfdistill.losses.tfkd import tfkd_reg_loss, virtual_teacher

    z, y, _ = _tfkd_inputs()
    ref = 0.0
    for n in range(4):
        u = np.full(10, 0.01 / 9)
        u[y[n]] = 0.99
        q = np.exp(u / 20) / np.exp(u / 20).sum()
        zn = z[n].numpy()
        logp = zn - zn.max() - np.log(np.exp(zn - zn.max()).sum())
        ref += float((q * (np.log(q) - logp)).sum())
    ref /= 40
    assert tfkd_reg_loss(z, y).item() == pytest.approx(ref, rel=1e-12)
    assert tfkd_reg_loss(z, y).item() == pytest.approx(AUTHORS_TFKD_REG_KL, rel=1e-12)
    assert virtual_teacher(y, 10)[0, 1].item() == pytest.approx(np.exp(0.99 / 20) / (np.exp(0.99 / 20)
                                                                                 + 9 * np.exp(0.01 / 9 / 20)))
    # the method with its defaults is the authors' ResNet18 loss: 0.9 CE + 0.1 * 100 * KL
    m, _, _ = build("tfkd_reg")
    p = m.params
    total = p.ce_weight * torch.nn.functional.cross_entropy(z, y) + \
        m.distillers["tfkd_reg"].terms(_Out(z, y))["tfkd_reg"]
    assert total.item() == pytest.approx(AUTHORS_TFKD_REG_R18, rel=1e-12)


class _Out:
    def __init__(self, logits, targets):
        self.logits_s, self.targets = logits, targets


def test_tfkd_self_weights_match_the_authors_loss():
    from tfdistill.losses.kd import kd_loss

    z, y, t = _tfkd_inputs()
    p = method_schema("tfkd_self")()
    assert (p.ce_weight, p.tfkd_self.weight, p.tfkd_self.T) == (0.05, 0.475, 6.0)
    # the documented rule: KD weight = alpha * multiplier / K (K = 10 here, 100 on CIFAR-100)
    kd_w = 0.95 * 50 / 10
    ours = 0.05 * torch.nn.functional.cross_entropy(z, y) + kd_w * kd_loss(z, t, 6.0)
    assert ours.item() == pytest.approx(AUTHORS_TFKD_SELF_R18, rel=1e-12)
    assert p.tfkd_self.weight == pytest.approx(0.95 * 50 / 100)


def test_tfkd_self_refuses_a_teacher_of_another_architecture(self_teacher, tmp_path):
    from tfdistill.config import load_config
    from tfdistill.engine import train
    from test_baselines import TinyNet
    from tfdistill.methods import build_method

    x, _, _ = batch()
    p = method_schema("tfkd_self")()
    m = build_method(TinyNet(), p, example=x, num_classes=NUM_CLASSES, num_train=40, epochs=1, teacher=TinyNet())
    assert "tfkd_self" in m.distillers
    with pytest.raises(ConfigError, match="tfkd_self needs a teacher of the student's own architecture"):
        build_method(TinyNet(), p, example=x, num_classes=NUM_CLASSES, num_train=40, epochs=1,
                     teacher=TinyNet(widths=(8, 16, 32)))
    with pytest.raises(ConfigError, match="use kd"):  # through the engine: a resnet8 teacher for a resnet14
        train(load_config(None, [*SMALL, "method.name=tfkd_self", "model.name=resnet14", "teacher.model=resnet8",
                                 f"teacher.checkpoint={self_teacher}", f"out_dir={tmp_path}", "name=x"]),
              echo=lambda s: None)



# =========================================================================== PS-KD
# Value of lgcnsai/PS-KD-Pytorch, loss/pskd_loss.py (Custom_CrossEntropy_PSKD) on the soft targets of main.py's
# formula for the inputs below (epoch index 3 of 10, alpha_T 0.8), run outside the project in float64.
AUTHORS_PSKD = 3.5282972902389003


def test_pskd_golden_and_authors_code():
    from tfdistill.losses.pskd import pskd_alpha, pskd_targets, soft_cross_entropy

    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    prev = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), 1)
    y = torch.tensor([0, 5, 2, 2])
    a = pskd_alpha(3, 10, 0.8)
    assert a == pytest.approx(0.32)
    ref = 0.0
    for n in range(4):
        q = a * prev[n].numpy()
        q[y[n]] += 1 - a
        zn = z[n].numpy()
        logp = zn - zn.max() - np.log(np.exp(zn - zn.max()).sum())
        ref -= float((q * logp).sum())
    ref /= 4
    got = soft_cross_entropy(z, pskd_targets(y, prev, a).double())
    assert got.item() == pytest.approx(ref, rel=1e-6)  # the targets are float32
    assert got.item() == pytest.approx(AUTHORS_PSKD, rel=1e-6)


def test_pskd_memory_holds_last_epoch_predictions_and_drives_the_targets():
    from tfdistill.losses.pskd import soft_cross_entropy

    m, _, _ = build("pskd")
    comp = m.distillers["pskd"]
    assert m.ce_weight == 0.0 and comp.memory.shape == (40, NUM_CLASSES)
    m.train()
    x, y, idx = batch()
    m.on_epoch_start(0)
    logits, terms = m(x, y, idx)
    assert set(terms) == {"pskd"}
    # epoch 0: the targets are the labels
    assert terms["pskd"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    p0 = torch.softmax(logits.detach(), 1)
    assert torch.equal(comp.memory[idx], p0)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[idx] = False
    assert comp.memory[untouched].abs().sum() == 0
    # epoch 1 of 2: alpha = 0.8 * 2 / 2, targets mix the label with the stored prediction
    m.on_epoch_start(1)
    logits1, terms1 = m(x, y, idx)
    a = 0.8
    q = (1 - a) * torch.nn.functional.one_hot(y, NUM_CLASSES).float() + a * p0
    assert terms1["pskd"].item() == pytest.approx(soft_cross_entropy(logits1, q).item(), rel=1e-6)
    terms1["pskd"].backward()
    # eval mode: plain CE, memory untouched
    m.eval()
    before = comp.memory.clone()
    with torch.no_grad():
        m(x, y, idx)
    assert torch.equal(before, comp.memory)


def test_pskd_gather_hook_applies_the_global_batch():
    m, _, _ = build("pskd")
    comp = m.distillers["pskd"]
    m.train()
    m.on_epoch_start(0)
    x, y, idx = batch()
    other = (idx + 7) % 40  # the "other rank's" rows

    def gather(t):  # two ranks: this one, then the other one with the same logits at other rows
        return torch.cat([t, other if t.dtype == torch.long else t])

    comp.gather = gather
    logits, _ = m(x, y, idx)
    p = torch.softmax(logits.detach(), 1)
    assert torch.equal(comp.memory[other], p)
    assert torch.equal(comp.memory[idx[~torch.isin(idx, other)]], p[~torch.isin(idx, other)])


def test_pskd_needs_indices():
    m, _, _ = build("pskd")
    m.train()
    x, y, _ = batch()
    with pytest.raises(RuntimeError, match="dataset index"):
        m(x, y, None)



# =========================================================================== CS-KD and paired batches
# Value of alinlab/cs-kd, train.py's KDLoss(temp_factor=4) (KLDivLoss(reduction="sum") * T^2 / B), run outside the
# project on the float64 inputs of test_cskd_golden_and_authors_code.
AUTHORS_CSKD = 2.710966955479999


def test_cskd_golden_and_authors_code():
    from tfdistill.losses.kd import kd_loss

    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64) * 2
    zp = torch.randn(5, 7, generator=g, dtype=torch.float64) * 2
    ref = 0.0
    for n in range(5):
        a, b = z[n].numpy() / 4, zp[n].numpy() / 4
        logp = a - a.max() - np.log(np.exp(a - a.max()).sum())
        logq = b - b.max() - np.log(np.exp(b - b.max()).sum())
        ref += float((np.exp(logq) * (logq - logp)).sum()) * 16
    ref /= 5
    assert kd_loss(z, zp, 4.0).item() == pytest.approx(ref, rel=1e-12)
    assert kd_loss(z, zp, 4.0).item() == pytest.approx(AUTHORS_CSKD, rel=1e-12)


def coded_images(n=60, classes=3, size=4):
    """uint8 images whose channels hold (index % 256, index // 256, label): the pixels identify the sample."""
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=torch.Generator().manual_seed(3))]
    idx = torch.arange(n)
    img = torch.stack([idx % 256, idx // 256, labels], 1).to(torch.uint8)
    return img[:, :, None, None].expand(n, 3, size, size).contiguous(), labels


def decode(x):
    v = (x[:, :, 0, 0] * 255).round().long()
    return v[:, 0] + 256 * v[:, 1], v[:, 2]


def device_loader(paired, epoch=0, rank=0, ws=1, augment=()):
    from tfdistill.data.device_loader import DeviceData, DeviceLoader

    images, labels = coded_images()
    ld = DeviceLoader(DeviceData(images, labels, torch.device("cpu")), batch_size=8, train=True, seed=5,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      augment=augment, rank=rank, world_size=ws, paired=paired)
    ld.set_epoch(epoch)
    return ld


def torch_loader(paired, epoch=0, rank=0, ws=1):
    from tfdistill.data.augment import eval_transform
    from tfdistill.data.sources import Split
    from tfdistill.data.torch_loader import SampleDataset, TorchLoader

    images, labels = coded_images()
    ds = SampleDataset(Split(labels, images=images), eval_transform(4, True))
    ld = TorchLoader(ds, batch_size=8, train=True, seed=5, device=torch.device("cpu"), mean=(0.0, 0.0, 0.0),
                     std=(1.0, 1.0, 1.0), rank=rank, world_size=ws, paired=paired)
    ld.set_epoch(epoch)
    return ld


@pytest.mark.parametrize("make", [device_loader, torch_loader], ids=["device", "dataloader"])
def test_paired_batches_hold_same_class_partners_drawn_from_seed_and_epoch(make):
    plain = list(make(False))
    paired = list(make(True))
    again = list(make(True))
    assert len(paired) == len(plain) == 60 // 8
    partners = []
    for (x0, y0, i0), (x, y, i), (xa, _, _) in zip(plain, paired, again):
        assert x.shape[0] == 16 and y.shape == (8,) and i.shape == (8,)
        assert torch.equal(y, y0) and torch.equal(i, i0) and torch.equal(x[:8], x0)  # the order is unchanged
        idx, lab = decode(x)
        assert torch.equal(idx[:8], i) and torch.equal(lab[:8], y)
        assert torch.equal(lab[8:], y)  # partners of the same class
        assert torch.equal(x, xa)  # a pure function of (seed, epoch)
        partners.append(idx[8:])
    partners = torch.cat(partners)
    assert len(set(partners.tolist())) > 20  # drawn, not a fixed mapping
    other = torch.cat([decode(x)[0][8:] for x, _, _ in make(True, epoch=1)])
    assert not torch.equal(partners, other)


@pytest.mark.parametrize("make", [device_loader, torch_loader], ids=["device", "dataloader"])
def test_paired_batches_of_two_ranks_make_the_single_process_batch(make):
    one = list(make(True))
    ranks = [list(make(True, rank=r, ws=2)) for r in (0, 1)]
    for k, (x, y, i) in enumerate(one):
        idx = decode(x)[0]
        for r in (0, 1):
            xr, yr, ir = ranks[r][k]
            got = decode(xr)[0]
            assert torch.equal(got[:4], idx[:8][r::2]) and torch.equal(got[4:], idx[8:][r::2])
            assert torch.equal(ir, i[r::2])


def test_paired_batches_are_augmented_with_their_own_draws():
    from tfdistill.data.device_loader import DeviceData, DeviceLoader

    _, labels = coded_images()
    same = torch.arange(48, dtype=torch.uint8).view(1, 3, 4, 4).expand(60, 3, 4, 4).contiguous()

    def first(paired):
        ld = DeviceLoader(DeviceData(same, labels, torch.device("cpu")), batch_size=8, train=True, seed=5,
                          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment=("crop", "flip"), paired=paired)
        return next(iter(ld))[0]

    x, x0 = first(True), first(False)
    assert x.shape == (16, 3, 4, 4)
    assert torch.equal(x[:8], x0)  # pairing leaves the batch's own augmentation alone
    assert not torch.equal(x[:8], x[8:])  # every image is the same: only the draws can differ


def test_cskd_method_uses_the_partner_half_without_gradient():
    from tfdistill.losses.kd import kd_loss

    m, student, _ = build("cskd")
    assert method_schema("cskd")().cskd.T == 4.0 and m.ce_weight == 1.0
    m.train()
    x, y, idx = batch()
    x2 = torch.randn_like(x)
    logits, terms = m(torch.cat([x, x2]), y, idx)
    assert logits.shape == (8, NUM_CLASSES) and set(terms) == {"ce", "cskd"}
    out = m.outputs(torch.cat([x, x2]), y, idx)
    assert out.logits_pair.shape == (8, NUM_CLASSES) and not out.logits_pair.requires_grad
    assert out.images.shape[0] == 8
    assert torch.allclose(m.distillers["cskd"].terms(out)["cskd"], kd_loss(out.logits_s, out.logits_pair, 4.0))
    # an unpaired batch in training is a clear error
    with pytest.raises(RuntimeError, match="paired batches"):
        m(x, y, idx)


# =========================================================================== engine: one epoch, resume
from conftest import TINY, interrupt_in_epoch  # noqa: E402

SMALL = [*TINY, "data.synthetic_train=64", "data.synthetic_test=32", "engine.device=cpu"]


@pytest.fixture(scope="module")
def self_teacher(tmp_path_factory):
    """A resnet8 trained with plain CE by the engine: Tf-KD_self's teacher (same architecture as the student)."""
    from tfdistill.config import load_config
    from tfdistill.engine import train

    out = tmp_path_factory.mktemp("teachers")
    train(load_config(None, [*SMALL, f"out_dir={out}", "name=t"]), echo=lambda s: None)
    return out / "t" / "best.pt"


def run_and_resume(tmp_path, monkeypatch, over):
    """Train 2 epochs straight; train again, killed in epoch 2 and resumed; the two must be bit-identical
    (student and method state, e.g. memory banks). Returns the metrics rows."""
    from tfdistill.config import load_config
    from tfdistill.engine import load_checkpoint, train

    base = [*SMALL, *over, "epochs=2", f"out_dir={tmp_path}"]
    train(load_config(None, [*base, "name=a"]), echo=lambda s: None)
    restore = interrupt_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, [*base, "name=b"]), echo=lambda s: None)
    restore()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    res = train(load_config(None, [*base, "name=b"]), resume=True, echo=lambda s: None)
    assert res.summary["status"] == "finished"
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    import json

    return [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]


def test_tfkd_reg_engine_one_epoch_and_resume(tmp_path, monkeypatch):
    rows = run_and_resume(tmp_path, monkeypatch, ["method.name=tfkd_reg"])
    assert set(rows[0]["terms"]) == {"ce", "tfkd_reg"}


def test_tfkd_self_engine_one_epoch_and_resume(tmp_path, monkeypatch, self_teacher):
    rows = run_and_resume(tmp_path, monkeypatch, ["method.name=tfkd_self", "teacher.model=resnet8",
                                                  f"teacher.checkpoint={self_teacher}"])
    assert set(rows[0]["terms"]) == {"ce", "kd"}


def test_pskd_engine_one_epoch_and_resume(tmp_path, monkeypatch):
    rows = run_and_resume(tmp_path, monkeypatch, ["method.name=pskd"])
    assert set(rows[0]["terms"]) == {"pskd"}
    mem = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["method"]["pskd.memory"]
    assert mem.shape == (64, 10)
    torch.testing.assert_close(mem.sum(1), torch.ones(64))  # every sample's prediction is stored


@pytest.mark.slow
def test_pskd_memory_identical_across_ddp_ranks(tmp_path):
    """PS-KD under ``torchrun --nproc_per_node=2`` (gloo): both ranks hold the same memory, every row written."""
    from test_distributed import BASE, _ok, torchrun

    over = [*BASE, "model.name=resnet8", "epochs=2", "name=pskd", f"out_dir={tmp_path}", "method.name=pskd"]
    _ok(torchrun([str(tmp_path / "info"), "--dump", "--", *over]))
    s0 = torch.load(tmp_path / "info" / "distillers_rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "info" / "distillers_rank1.pt", weights_only=True)
    assert torch.equal(s0["pskd.memory"], s1["pskd.memory"])
    torch.testing.assert_close(s0["pskd.memory"].sum(1), torch.ones(s0["pskd.memory"].shape[0]))
    ck = torch.load(tmp_path / "pskd" / "last.pt", weights_only=True)
    assert torch.equal(ck["method"]["pskd.memory"], s0["pskd.memory"])


def test_cskd_engine_one_epoch_and_resume(tmp_path, monkeypatch):
    rows = run_and_resume(tmp_path, monkeypatch, ["method.name=cskd"])
    assert set(rows[0]["terms"]) == {"ce", "cskd"}
    assert rows[0]["terms"]["cskd"] > 0


# =========================================================================== ESKD, ATKD
def test_save_epochs_keeps_an_early_teacher_that_eskd_loads(tmp_path):
    from tfdistill.config import load_config
    from tfdistill.engine import load_checkpoint, train

    train(load_config(None, [*SMALL, "epochs=3", "engine.save_epochs=[1,2]", f"out_dir={tmp_path}", "name=t"]),
          echo=lambda s: None)
    run = tmp_path / "t"
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == ["epoch_1.pt", "epoch_2.pt"]
    e1, best = load_checkpoint(run / "epoch_1.pt"), load_checkpoint(run / "best.pt")
    assert e1["epoch"] == 1 and set(e1) == set(best)
    last = load_checkpoint(run / "last.pt")
    assert any(not torch.equal(e1["model"][k], last["model"][k]) for k in e1["model"])
    res = train(load_config(None, [*SMALL, "method.name=eskd", "teacher.model=resnet8",
                                   f"teacher.checkpoint={run / 'epoch_1.pt'}", f"out_dir={tmp_path}", "name=s"]),
                echo=lambda s: None)
    assert res.summary["status"] == "finished"
    with pytest.raises(ConfigError, match=r"engine.save_epochs.*\[4\] outside 1..3"):
        load_config(None, [*SMALL, "epochs=3", "engine.save_epochs=[4]"])


def test_spec_teacher_checkpoint_per_method():
    from tfdistill.sweep.spec import expand, spec_from_raw

    raw = {"name": "x", "recipe": "cifar100/paper", "seeds": [0],
           "grid": {"models": ["resnet20"], "methods": ["kd", "eskd"]},
           "per_model": {"resnet20": {"teacher": "resnet110"}},
           "teachers": {"resnet110": "t/best.pt", "resnet110@eskd": "t/epoch_60.pt"}}
    plan = expand(spec_from_raw(raw))
    ck = {r.method: str(r.cfg.teacher.checkpoint) for r in plan.runs}
    assert ck == {"kd": str(Path("t/best.pt").absolute()), "eskd": str(Path("t/epoch_60.pt").absolute())}  # stored absolute
    assert all(str(r.cfg.teacher.model) == "resnet110" for r in plan.runs)


def test_eskd_and_atkd_presets():
    from tfdistill.methods import resolve_preset

    e, k = method_schema("eskd")(), method_schema("kd")()
    assert (e.ce_weight, e.kd.weight, e.kd.T) == (k.ce_weight, k.kd.weight, k.kd.T) == (0.1, 0.9, 4.0)
    a = method_schema("at+kd")()
    assert set(resolve_preset("at+kd").components) == {"at", "kd"}
    assert (a.ce_weight, a.kd.weight, a.kd.T, a.at.weight) == (0.1, 0.9, 4.0, 1000.0)


# =========================================================================== methods listing, report layout
def test_methods_are_listed_by_family(capsys):
    from tfdistill.cli import main
    from tfdistill.methods import preset_family

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert heads == ["baseline:", "teacher-based:", "self-distillation:", "teacher-free:"]
    section = {}
    current = None
    for line in out.splitlines():
        if line in heads:
            current = line[:-1]
        elif line.startswith("  ") and current:
            section[line.split()[0]] = current
    assert section["ce"] == "baseline" and section["kd"] == "teacher-based" and section["tfd"] == "teacher-free"
    assert section["cskd"] == section["pskd"] == section["tfkd_self"] == "self-distillation"
    assert section["tfkd_reg"] == "teacher-free" and section["eskd"] == "teacher-based"
    assert preset_family("tfd+kd") == "teacher-based" and preset_family("cskd+tfd") == "self-distillation"
    assert preset_family("ls+tfd") == "teacher-free"


def test_report_renders_the_papers_layout_with_ours_beside(tmp_path):
    from test_report import PAPER, make_sweep
    from tfdistill.report import make_report

    paper = dict(PAPER, columns={"ce": "Student", "tfd": "TFD (ours)"})
    make_sweep(tmp_path, paper=paper)
    md = make_report(tmp_path, out_dir=tmp_path / "out").markdown
    block = md[md.index("in the paper's layout"):]
    lines = block.splitlines()
    assert lines[0] == "in the paper's layout, ours / paper (best-of-3, best epoch)"
    assert lines[2] == "| student | Student | TFD (ours) |"
    # ours as the paper aggregates (best of 3 best-epoch accuracies) / the paper's number
    assert lines[4] == "| resnet8 | 72.50 / 69.06 | 73.30 / 70.56 |"
    assert lines[5] == "| resnet14 | 75.40 / 71.14 ⚠ | 76.50 / 72.73 ⚠ |"
    # without paper.columns the report is unchanged (no such table)
    make_sweep(tmp_path / "plain")
    assert "paper's layout" not in make_report(tmp_path / "plain", out_dir=tmp_path / "out2").markdown


# =========================================================================== specs
SPEC_DIR = Path(__file__).resolve().parents[1] / "configs" / "reproduce"
OTHER_HELPER = {"one", "byot", "frskd"}  # registered by the auxiliary-module methods' branch


def expand_new_spec(name):
    """Every run but those of one/byot/frskd (until their presets exist) expands and validates; the paper's
    numbers are verbatim in its text."""
    from omegaconf import OmegaConf

    from tfdistill.sweep.spec import expand, load_spec, missing_methods, spec_from_raw

    spec = load_spec(SPEC_DIR / f"{name}.yaml")
    assert set(missing_methods(spec)) <= OTHER_HELPER
    raw = OmegaConf.to_container(OmegaConf.load(SPEC_DIR / f"{name}.yaml"))
    blocks = raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]
    gone = set(missing_methods(spec))
    for b in blocks:
        b["methods"] = [m for m in b["methods"] if m not in gone]
    for entries in raw.get("paper", {}).get("results", {}).values():
        for m in gone & set(entries):
            del entries[m]
    plan = expand(spec_from_raw(raw), spec_path=SPEC_DIR / f"{name}.yaml")
    assert plan.runs
    paper = (Path(__file__).resolve().parents[2] / "shared" / "paper" / "tfd-paper.txt")
    if paper.is_file():
        text = paper.read_text()
        for entries in spec.paper.results.values():
            for value in entries.values():
                x = value if isinstance(value, (int, float)) else value.get("top1")
                if x is not None:
                    assert f"{x:.2f}" in text, (name, x)
    return plan


@pytest.mark.parametrize("name", ["imagenet", "imagenet_teacher", "selfkd_cifar100", "ablation_distance",
                                  "ablation_single_loss"])
def test_new_specs_expand_without_the_auxiliary_methods_and_quote_the_paper(name):
    assert expand_new_spec(name).runs


def test_imagenet_spec_is_the_whole_table():
    from tfdistill.sweep.spec import load_spec

    spec = load_spec(SPEC_DIR / "imagenet.yaml")
    assert list(spec.grid[0].methods) == ["ce", "kd", "eskd", "at+kd", "one", "frskd", "byot", "tfd", "tfd_ls"]
    r = spec.paper.results["torchvision.resnet18"]
    assert (r["kd"], r["eskd"], r["at+kd"], r["one"], r["frskd"], r["byot"], r["tfd"], r["tfd_ls"]) == (
        70.66, 70.89, 70.78, 70.55, 70.17, 69.84, 70.55, 70.66)
    assert list(spec.paper.columns) == list(spec.grid[0].methods)
    assert spec.teachers["torchvision.resnet34@eskd"].endswith("epoch_35.pt")
    plan = expand_new_spec("imagenet")
    ck = {r.method: str(r.cfg.teacher.checkpoint) for r in plan.runs if r.teacher}
    assert ck["eskd"].endswith("epoch_35.pt") and ck["kd"] == ck["at+kd"] != ck["eskd"]
    # every method of the table uses one recipe: the runs differ only in the method section and the teacher
    base = {k: v for k, v in plan.runs[0].cfg.items() if k not in ("method", "teacher", "name")}
    assert all({k: v for k, v in r.cfg.items() if k not in ("method", "teacher", "name")} == base
               for r in plan.runs)


def test_selfkd_and_ablation_specs():
    from tfdistill.sweep.spec import load_spec

    s = load_spec(SPEC_DIR / "selfkd_cifar100.yaml")
    assert list(s.grid[0].methods) == ["ce", "tfd", "tfd_ls", "one", "byot", "frskd", "cskd", "tfkd_reg",
                                       "tfkd_self", "pskd"]
    assert list(s.seeds) == [0, 1, 2]
    plan = expand_new_spec("selfkd_cifar100")
    for r in plan.runs:  # Tf-KD_self's teacher is the student's own architecture
        if r.method == "tfkd_self":
            assert r.cfg.teacher.model == r.model
    plan = expand_new_spec("ablation_distance")
    assert sorted(str(r.cfg.method.tfd.distance) for r in plan.runs if r.method == "tfd") == sorted(
        ["l2", "sp", "at", "nst", "ab"] * 3)
    plan = expand_new_spec("ablation_single_loss")
    got = {r.variant: (r.cfg.method.tfd.alpha, r.cfg.method.tfd.beta, r.cfg.method.tfd.width_stages)
           for r in plan.runs if r.method == "tfd"}
    assert got == {"full": (5e-3, 4e-4, None), "depth_only": (5e-3, 0.0, None), "width_only": (0.0, 4e-4, None),
                   "width_last": (0.0, 4e-4, [-1])}


@pytest.mark.parametrize("over", [
    ["method.name=tfkd_reg"], ["method.name=tfd", "method.tfd.distance=sp"], ["method.name=cskd"], ["method.name=pskd"],
])
def test_new_methods_in_packed_seed_groups(tmp_path, over):
    """seeds=[0,1] trains one packed group (paired batches and per-sample memories included); each seed's run is
    bit-identical to the run trained alone."""
    from tfdistill.config import load_config
    from tfdistill.engine import load_checkpoint, train

    lines: list[str] = []
    res = train(load_config(None, [*SMALL, *over, f"out_dir={tmp_path}", "seeds=[0,1]", "name=g"]),
                echo=lines.append)
    assert [r.summary["status"] for r in res] == ["finished", "finished"]
    assert any("packed with 1 other run(s)" in line for line in lines), lines[:3]
    train(load_config(None, [*SMALL, *over, f"out_dir={tmp_path}", "seed=1", "name=alone"]), echo=lambda s: None)
    a, b = load_checkpoint(tmp_path / "g_s1" / "last.pt"), load_checkpoint(tmp_path / "alone" / "last.pt")
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for k, v in b[part].items():
            assert torch.equal(a[part][k], v), (part, k)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cskd", "tfkd_reg"])
def test_methods_under_two_ddp_processes(tmp_path, method):
    """Paired batches (cskd) and the virtual teacher under ``torchrun --nproc_per_node=2`` (gloo)."""
    import json

    from test_distributed import BASE, _ok, torchrun

    over = [*BASE, "model.name=resnet8", "epochs=1", "name=r", f"out_dir={tmp_path}", f"method.name={method}"]
    _ok(torchrun([str(tmp_path / "info"), "--", *over]))
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "finished" and s["world_size"] == 2
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert method in rows[0]["terms"]


def test_eskd_recipe_loads():
    from tfdistill.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "imagenet" / "resnet18_eskd.yaml", [])
    assert cfg.method.name == "eskd" and cfg.teacher.model == "torchvision.resnet34"
    assert str(cfg.teacher.checkpoint).endswith("epoch_35.pt") and cfg.epochs == 100
