"""Self-distillation with auxiliary modules: ONE, BYOT, FRSKD.

Golden values: independent formulas written out here, and values of the authors' released code on the same fixed
inputs, obtained by running that code outside the project (the files are named at each test; the inputs are
rebuilt here exactly as they were there; ``tests/golden/selfdistill_authors.py`` recomputes them from checkouts of
the three repositories). Engine runs: one epoch of each method on the CPU, resume after an
interruption (bit-identical to an uninterrupted run, method state included), the exported student unchanged, the
training-only parameter count in summary.json, and ONE under DDP (gloo, 2 processes).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY, interrupt_in_epoch
from tfdistill.config import load_config
from tfdistill.engine import load_checkpoint, train
from tfdistill.errors import ConfigError
from tfdistill.losses.at import attention_map
from tfdistill.losses.byot import AuxClassifier, feature_hint_loss, soft_cross_entropy
from tfdistill.losses.frskd import SelfTeacher, check_pyramid, frskd_feature_loss
from tfdistill.losses.kd import kd_loss
from tfdistill.losses.one import Gate, gated_ensemble, one_kl_loss, sigmoid_rampup
from tfdistill.methods import BuildContext, FeatureInfo, build_method, method_schema
from tfdistill.methods.byot import BYOT, branch_channels
from tfdistill.methods.frskd import FRSKD
from tfdistill.models import create_model

METHODS = ["one", "byot", "frskd"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def det(shape, k=0.0, scale=3.0):
    """Deterministic inputs, as in the script that ran the authors' code: ``scale * sin(0.37 i + k)``."""
    n = math.prod(shape)
    return (torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + k) * scale).view(*shape).float()


S, E = det((4, 5), 0.0), det((4, 5), 1.0)


# =========================================================================== ONE
def test_one_kl_golden_and_authors_value():
    T = 3.0
    # independent: T^2 * KL(softmax(E/T) || softmax(S/T)), batch mean, written out with F.kl_div; eps = 0
    ref = F.kl_div(F.log_softmax(S / T, 1), F.softmax(E / T, 1), reduction="sum") / 4 * T * T
    assert one_kl_loss(S, E, T, eps=0.0).item() == pytest.approx(ref.item(), rel=1e-6)
    # Lan1991Xu/ONE_NeurIPS2018 loss/kl_loss.py KLLoss()(S, E) (T = 3, target + 1e-7)
    assert one_kl_loss(S, E).item() == pytest.approx(0.5236457586288452, rel=1e-6)


def test_one_gate_ensemble_and_ramp():
    torch.manual_seed(0)
    gate = Gate(6, 3).eval()
    x = torch.randn(4, 6, 5, 5)
    g = gate(x)
    pooled = x.mean((2, 3))
    bn = gate.bn
    z = (pooled @ gate.fc.weight.T + gate.fc.bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    expect = torch.softmax(torch.relu(z * bn.weight + bn.bias), 1)
    torch.testing.assert_close(g, expect)
    logits = [torch.randn(4, 7) for _ in range(3)]
    ens = gated_ensemble(logits, g)
    manual = sum(g[:, b:b + 1] * logits[b] for b in range(3))
    torch.testing.assert_close(ens, manual)
    # utils/ramps.py sigmoid_rampup with --consistency_rampup 80
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(80, 80) == 1.0 and sigmoid_rampup(200, 80) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def _build(name: str, model: str = "resnet8", classes: int = 10, **over):
    torch.manual_seed(0)
    student = create_model(model, num_classes=classes)
    p = method_schema(name)()
    for k, v in over.items():
        setattr(getattr(p, name), k, v)
    x = torch.randn(4, 3, 32, 32)
    m = build_method(student, p, example=x, num_classes=classes, num_train=64, epochs=2)
    return m, student


def test_one_branch_zero_is_the_student_and_terms_match_the_formula():
    m, student = _build("one")
    comp = m.distillers["one"]
    n_stage3 = sum(p.numel() for p in student.layer3.parameters())
    n_fc = sum(p.numel() for p in student.fc.parameters())
    assert len(comp.branch) == 2
    assert all(sum(p.numel() for p in b.parameters()) == n_stage3 + n_fc for b in comp.branch)
    assert m.describe()["aux_params"] == 2 * (n_stage3 + n_fc) + (32 * 3 + 3) + 2 * 3
    # the copies are re-initialised: no two branches start with the same weights
    w = [student.layer3[0].conv1.weight] + [b[0][0].conv1.weight for b in comp.branch]
    assert w[0].shape == w[1].shape and not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    fcs = [student.fc.weight] + [b[1].layers[-1].weight for b in comp.branch]
    assert not torch.equal(fcs[0], fcs[1]) and not torch.equal(fcs[1], fcs[2])
    m.train()
    m.on_epoch_start(0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    # independently (train-mode BatchNorm, as the method's pass): shared features = layer2's output (the input of
    # layer3), the branches and the gate on them
    with torch.no_grad():
        h = student.relu(student.bn1(student.conv1(x)))
        shared = student.layer2(student.layer1(h))
        own = student.fc(student.layer3(shared).mean((2, 3)))
        branches = [own] + [b(shared) for b in comp.branch]
        gate = comp.gate(shared)
        ens = sum(gate[:, i:i + 1] * branches[i] for i in range(3))
        ce = sum(F.cross_entropy(z, y) for z in branches[1:]) + F.cross_entropy(ens, y)
        ramp = math.exp(-5.0)
        kl = sum(F.kl_div(F.log_softmax(z / 3, 1), F.softmax(ens / 3, 1) + 1e-7, reduction="sum") / 6 * 9
                 for z in branches)
    m.load_state_dict(state)  # undo the BatchNorm statistics update of that pass
    logits, terms = m(x, y)
    assert set(terms) == {"ce", "one_ce", "one_kl"}
    torch.testing.assert_close(logits.detach(), own, rtol=1e-5, atol=1e-5)
    assert terms["one_ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["one_kl"].item() == pytest.approx(ramp * kl.item(), rel=1e-4)
    torch.stack(list(terms.values())).sum().backward()
    assert all(p.grad is not None for p in comp.parameters())


class FunctionalHead(nn.Module):
    """Work after the last stage done by a functional op (doubling): ONE cannot copy it as modules."""

    stage_names = ("layer1", "layer2")

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(2.0 * self.layer2(self.layer1(x)).mean((2, 3)))


class PooledHead(FunctionalHead):
    """A functional global average pooling before the classifier (as torchvision's MobileNetV2): supported."""

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


def test_one_refuses_a_head_it_cannot_copy():
    p = method_schema("one")()
    with pytest.raises(ConfigError, match="one cannot branch FunctionalHead.*'layer2'"):
        build_method(FunctionalHead(), p, example=torch.randn(2, 3, 16, 16), num_classes=10, num_train=8, epochs=1)
    torch.manual_seed(0)
    model = PooledHead()
    m = build_method(model, p, example=torch.randn(2, 3, 16, 16), num_classes=10, num_train=8, epochs=1)
    branch = m.distillers["one"].branch[0].eval()
    x = torch.randn(3, 4, 16, 16)
    with torch.no_grad():  # the branch computes the model's own head: fc(mean(layer2(x))) with its own weights
        expect = branch[1].layers[0](branch[0](x).mean((2, 3)))
        torch.testing.assert_close(branch(x), expect)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", ["wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV2"])
def test_methods_build_on_other_zoo_families(method, model):
    m, student = _build(method, model)
    m.train()
    m.on_epoch_start(0)
    logits, terms = m(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert len(terms) >= 3 and all(torch.isfinite(v) for v in terms.values())
    torch.stack(list(terms.values())).sum().backward()
    assert m.describe()["aux_params"] > 0
    assert all(p.grad is not None for p in m.distillers.parameters() if p.requires_grad and p.dim() > 1)


# =========================================================================== BYOT
def test_byot_losses_golden_and_authors_values():
    T = 3.0
    ent = -(F.softmax(E / T, 1) * F.log_softmax(E / T, 1)).sum(1).mean()
    kl = F.kl_div(F.log_softmax(S / T, 1), F.softmax(E / T, 1), reduction="batchmean")
    assert soft_cross_entropy(S, E, T).item() == pytest.approx((kl + ent).item(), rel=1e-6)  # CE = KL + H
    # ArchipLab-LinfengZhang/pytorch-self-distillation-final train.py CrossEntropy(S, E) with temperature 3
    assert soft_cross_entropy(S, E, T).item() == pytest.approx(1.618349552154541, rel=1e-6)
    fa, fb = det((4, 6), 2.0), det((4, 6), 3.0)
    assert feature_hint_loss(fa, fb).item() == pytest.approx(math.sqrt(((fa - fb) ** 2).sum().item()), rel=1e-6)
    assert feature_hint_loss(fa, fb).item() == pytest.approx(10.137761116027832, rel=1e-6)  # torch.dist, as train.py
    z = fa.clone().requires_grad_()
    feature_hint_loss(z, fa).backward()  # zero distance: a finite (zero) gradient, not NaN
    assert torch.equal(z.grad, torch.zeros_like(fa))


def _ctx(shapes, emb, classes):
    info = FeatureInfo([f"s{i}" for i in range(len(shapes))], [tuple(s) for s in shapes], emb)
    return BuildContext(num_classes=classes, num_train=10, epochs=1, student=info)


RESNET18_SHAPES = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


def test_byot_branches_match_the_authors_resnet18_layout():
    assert [branch_channels(RESNET18_SHAPES, i) for i in range(3)] == [[128, 256, 512], [256, 512], [512]]
    comp = BYOT(method_schema("byot")().byot, _ctx(RESNET18_SHAPES, 512, 100))
    # resnet.py (ResNet-18, 100 classes): scala1-3 + attention1-3 + fc1-3 + the three Linear(512, 512) adaptation
    # layers train.py adds = 1,851,180 parameters; the one train.py never uses (see below) is not built here
    assert sum(p.numel() for p in comp.parameters()) == 1851180 - (512 * 512 + 512)
    assert comp.hinted == [0, 1]  # train.py: no feature term for outputs[1], the classifier on layer3
    assert comp.aux[2].adapt is None
    every = BYOT(method_schema("byot")().byot.__class__(hint_all=True), _ctx(RESNET18_SHAPES, 512, 100))
    assert sum(p.numel() for p in every.parameters()) == 1851180 and every.hinted == [0, 1, 2]


def test_byot_terms_match_the_formula():
    m, student = _build("byot")
    comp = m.distillers["byot"]
    m.train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    out = m.outputs(x, y)
    terms = comp.terms(out)
    assert set(terms) == {"byot_ce", "byot_kd", "byot_feat"}
    res = [aux(f) for aux, f in zip(comp.aux, out.feats_s)]  # train-mode BN: the same outputs for the same input
    t = F.softmax(out.logits_s.detach() / 3, 1)
    ce = sum(F.cross_entropy(z, y) for z, _, _ in res)
    kd = sum(-(t * F.log_softmax(z / 3, 1)).sum(1).mean() for z, _, _ in res)
    feat = torch.dist(res[0][2], out.emb_s.detach())  # resnet8: two aux classifiers, the first one hinted
    assert len(res) == 2 and res[0][1].shape == (6, 64) and res[0][2].shape == out.emb_s.shape
    assert terms["byot_ce"].item() == pytest.approx(0.7 * ce.item(), rel=1e-5)
    assert terms["byot_kd"].item() == pytest.approx(0.3 * kd.item(), rel=1e-5)
    assert terms["byot_feat"].item() == pytest.approx(0.03 * feat.item(), rel=1e-5)
    torch.stack(list(terms.values())).sum().backward()
    assert all(p.grad is not None for p in comp.parameters())


def test_byot_needs_two_stages_that_halve():
    with pytest.raises(ConfigError, match="byot needs at least two tapped stages"):
        BYOT(method_schema("byot")().byot, _ctx([(8, 4, 4)], 8, 10))
    with pytest.raises(ConfigError, match="byot cannot build an auxiliary classifier on 's0'.*halving"):
        BYOT(method_schema("byot")().byot, _ctx([(8, 12, 12), (16, 8, 8)], 16, 10))


# =========================================================================== FRSKD
def test_frskd_losses_golden_and_authors_value():
    g_s = [det((4, 3, 8, 8), 0.5), det((4, 6, 4, 4), 1.5)]
    g_t = [det((4, 6, 8, 8), 2.5), det((4, 12, 4, 4), 3.5)]

    def q(f):  # written out: l2-normalised channel mean of f^2
        a = (f ** 2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    at = sum(((q(s) - q(t)) ** 2).mean() for s, t in zip(g_s, g_t))
    assert frskd_feature_loss(g_s, g_t).item() == pytest.approx(at.item(), rel=1e-6)
    assert torch.allclose(attention_map(g_s[0]), q(g_s[0]))
    total = 2.0 * kd_loss(S, E, 4.0) + 100.0 * frskd_feature_loss(g_s, g_t)
    # MingiJi/FRSKD classification/distill_loss/AT.py Attention(alpha=2, beta=100, temperature=4)(S, E, g_s, g_t)
    assert total.item() == pytest.approx(1.7239607572555542, rel=1e-6)


def _canonical_params(t: SelfTeacher) -> list[nn.Parameter]:
    """Parameters in the order of the authors' BiFPNc (lat_conv, lat_conv2, up_conv, up_weight, down_conv,
    down_weight, down_sample, up_sample, fc)."""
    groups = [t.lat, t.lat2, t.up_conv, t.up_w, t.down_conv, t.down_w, t.down, t.up, t.fc]
    return [p for g in groups for p in g.parameters()]


def test_self_teacher_reproduces_the_authors_bifpnc():
    """Same weights (filled in the authors' parameter order) and inputs as the script that ran MingiJi/FRSKD
    classification/models/bifpnc.py BiFPNc([16, 32, 64], 10; repeat 1, depth 2 2 2, width 2) in eval mode."""
    t = SelfTeacher([16, 32, 64], 10, width=2, depth=(2, 2, 2)).eval()
    params = _canonical_params(t)
    assert len(params) == len(list(t.parameters()))
    assert sum(p.numel() for p in t.parameters()) == 101715  # BiFPNc's parameter count
    fusion = {id(p) for g in (t.up_w, t.down_w) for p in g.parameters()}
    with torch.no_grad():
        for k, p in enumerate(params):
            g = torch.Generator().manual_seed(1000 + k)
            p.copy_(torch.rand(tuple(p.shape), generator=g) + 0.1 if id(p) in fusion
                    else torch.randn(tuple(p.shape), generator=g) * 0.3)
        feats = [torch.randn(s, generator=torch.Generator().manual_seed(i))
                 for i, s in enumerate([(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)])]
        refined, logits = t(feats)
    assert [list(r.shape) for r in refined] == [[2, 32, 8, 8], [2, 64, 4, 4], [2, 128, 2, 2]]
    authors_logits = [0.246644, 0.480507, 0.070103, 0.817571, -0.433602, 1.219778, 0.685386, -0.548922, 0.432654,
                      -1.083006, 0.143752, 0.388797, 0.206272, 0.864531, -0.523219, 1.234815, 0.599093, -0.607211,
                      0.364894, -1.108716]
    torch.testing.assert_close(logits.flatten(), torch.tensor(authors_logits), rtol=0, atol=2e-6)
    sums = [float(r[i].double().sum()) for r in refined for i in range(2)]
    assert sums == pytest.approx([205.3252, 205.1811, 137.4321, 138.2281, 62.1128, 63.571], abs=2e-3)


def test_frskd_terms_and_gradients():
    m, student = _build("frskd")
    comp = m.distillers["frskd"]
    assert m.describe()["aux_params"] == 101715  # resnet8's stages 16/32/64 at 10 classes, as above
    m.train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    logits, terms = m(x, y)
    assert set(terms) == {"ce", "frskd_ce", "frskd_kd", "frskd_at"}
    torch.stack(list(terms.values())).sum().backward()
    assert all(p.grad is not None for p in comp.parameters())
    # the self-teacher's cross-entropy reaches the student through the stage maps; the KD and AT targets do not
    student.zero_grad()
    comp.zero_grad()
    out = m.outputs(x, y)
    comp.terms(out)["frskd_at"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in comp.parameters())


def test_frskd_refuses_stages_that_do_not_halve():
    assert check_pyramid([(32, 32), (16, 16), (8, 8)]) is None
    assert "halve" in check_pyramid([(32, 32), (8, 8)])
    with pytest.raises(ConfigError, match="frskd's self-teacher cannot use the stages.*halve"):
        FRSKD(method_schema("frskd")().frskd, _ctx([(8, 32, 32), (16, 8, 8)], 16, 10))


@pytest.mark.parametrize("method", METHODS)
def test_under_bf16_autocast(method):
    m, _ = _build(method)
    m.train()
    m.on_epoch_start(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, terms = m(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    torch.stack(list(terms.values())).sum().backward()


# =========================================================================== engine
SMALL = [*TINY, "data.synthetic_train=64", "data.synthetic_test=32", "data.batch_size=16",
         "engine.device=cpu", "engine.max_steps_per_epoch=2", "engine.tensorboard=false"]


def _keys(path):
    return sorted(load_checkpoint(path)["model"].keys())


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ce")
    train(load_config(None, [*SMALL, f"out_dir={out}", "name=ce"]), echo=lambda s: None)
    return out / "ce"


@pytest.mark.parametrize("method", METHODS)
def test_one_epoch_resume_export_and_summary(method, ce_run, tmp_path, monkeypatch):
    over = [*SMALL, f"method.name={method}", "epochs=2"]
    a = train(load_config(None, [*over, f"out_dir={tmp_path / 'a'}", "name=r"]), echo=lambda s: None)
    s = a.summary
    assert s["status"] == "finished"
    ck = load_checkpoint(a.run_dir / "last.pt")
    aux = sum(v.numel() for k, v in ck["method"].items() if v.is_floating_point() and "running_" not in k)
    assert s["method_info"]["aux_params"] > 0
    assert s["method_info"]["aux_params"] <= aux  # parameters (+ BN affine) are in the method state
    assert s["params"] == json.loads((ce_run / "summary.json").read_text())["params"]  # the student's own count
    # the deployed student: the same state_dict keys as a plain CE run, in best.pt and last.pt
    assert _keys(a.run_dir / "best.pt") == _keys(ce_run / "best.pt") == _keys(a.run_dir / "last.pt")
    rows = [json.loads(x) for x in (a.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {k for k in rows[0]["terms"] if k != "ce"} and all(math.isfinite(v) for v in rows[0]["terms"].values())

    # interrupted after epoch 1, resumed: bit-identical to the uninterrupted run (student and method state)
    restore = interrupt_in_epoch(monkeypatch, 1)
    cfg_b = load_config(None, [*over, f"out_dir={tmp_path / 'b'}", "name=r"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, echo=lambda s: None)
    assert load_checkpoint(tmp_path / "b" / "r" / "last.pt")["epoch"] == 1
    restore()
    b = train(cfg_b, resume=True, echo=lambda s: None)
    assert b.summary["resumed_from_epoch"] == 1
    cb = load_checkpoint(b.run_dir / "last.pt")
    for part in ("model", "method"):
        assert ck[part].keys() == cb[part].keys()
        for k in ck[part]:
            assert torch.equal(ck[part][k], cb[part][k]), (part, k)


def test_one_under_ddp_gloo(tmp_path):
    """ONE (a pre-hook on the student's last stage, branches and gate run inside the DDP forward) under 2
    processes: it trains, and the replicas of its branches and gate stay equal across ranks."""
    from test_distributed import BASE, _ok, _rows, torchrun

    over = [*BASE, "model.name=resnet8", "epochs=1", "name=one", f"out_dir={tmp_path}", "method.name=one",
            "engine.max_steps_per_epoch=2"]
    _ok(torchrun([str(tmp_path / "info"), "--dump", "--", *over]))
    s = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["method_info"]["aux_params"] > 0
    rows = _rows(tmp_path / "one")
    assert {"ce", "one_ce", "one_kl"} == set(rows[0]["terms"]) and math.isfinite(rows[0]["loss"])
    s0 = torch.load(tmp_path / "info" / "distillers_rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "info" / "distillers_rank1.pt", weights_only=True)
    assert any(k.startswith("one.branch.") for k in s0) and "one.gate.fc.weight" in s0
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k], rtol=1e-5, atol=1e-6, msg=k)
    ck = load_checkpoint(tmp_path / "one" / "best.pt")
    assert not any("branch" in k or "gate" in k for k in ck["model"])
    torch.testing.assert_close(ck["method"]["one.gate.fc.weight"], s0["one.gate.fc.weight"])


def _stacked_methods(name: str, k: int = 2):
    ms = []
    for seed in range(k):
        torch.manual_seed(seed)
        st = create_model("resnet8", num_classes=10).double()
        ms.append(build_method(st, method_schema(name)(), example=torch.randn(4, 3, 32, 32, dtype=torch.float64),
                               num_classes=10, num_train=64, epochs=2).double().train())
    return ms


@pytest.mark.parametrize("method", ["one", "byot", "frskd"])
def test_packed_seeds_equal_single_runs(method, tmp_path):
    """ONE, BYOT and FRSKD in a packed group (seeds=[0,1]): each seed's run -- student, auxiliary modules, loss terms
    -- is bit-identical to the run trained alone (each run keeps its own RNG streams, data order and modules)."""
    base = [*SMALL, f"out_dir={tmp_path}", f"method.name={method}", "engine.max_steps_per_epoch=3"]
    lines: list[str] = []
    train(load_config(None, [*base, "seeds=[0,1]", "name=b"]), echo=lines.append)
    assert any("packed with 1 other run(s)" in line for line in lines), lines[:3]
    for seed in (0, 1):
        train(load_config(None, [*base, f"seed={seed}", f"name=a{seed}"]), echo=lambda x: None)
        cb = load_checkpoint(tmp_path / f"b_s{seed}" / "last.pt")
        ca = load_checkpoint(tmp_path / f"a{seed}" / "last.pt")
        for part in ("model", "method"):
            assert cb[part].keys() == ca[part].keys() and ca[part]
            for k, v in ca[part].items():
                assert torch.equal(cb[part][k], v), (part, k)
        x = json.loads((tmp_path / f"b_s{seed}" / "metrics.jsonl").read_text().splitlines()[0])
        y = json.loads((tmp_path / f"a{seed}" / "metrics.jsonl").read_text().splitlines()[0])
        assert x["terms"] == y["terms"] and len(x["terms"]) >= 3


@pytest.mark.parametrize("over, msg", [
    (["method.name=one", "method.one.branches=1"], "method.one.branches must be >= 2"),
    (["method.name=byot", "method.byot.alpha=1.5"], "method.byot needs 0 <= alpha <= 1.*got alpha 1.5"),
    (["method.name=byot", "model.taps=[layer3]"], "byot needs at least two tapped stages"),
    (["method.name=frskd", "method.frskd.depth=[1,1]"], "depth as three integers"),
    (["method.name=frskd", "model.taps=[layer1,layer3]"], "32x32 is followed by 8x8; set model.taps"),
])
def test_bad_settings_are_one_clear_line_and_leave_no_run(over, msg, tmp_path, capsys):
    import re

    from tfdistill.cli import main

    assert main(["train", *SMALL, f"out_dir={tmp_path}", "name=r", *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(msg, err[0]), err
    assert not (tmp_path / "r").exists()
