"""USKD, Zipf's label smoothing and MixSKD (issue 31): value and gradients equal to the authors' code on the seeded
cases of ``tests/golden/modern_selfkd.npz`` (recomputed by ``tests/golden/modern_selfkd_authors.py`` from their
checkouts, outside the project; the patches to their code are listed there), a parametrised mutation test showing
every check fails when a term is changed, the documented departures, and one epoch of each method through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tfdistill.losses import uskd as U
from tfdistill.losses import zipf_ls as Z



def load_golden(path: Path) -> dict:
    """The flat ``.npz`` written by ``tests/golden/modern_selfkd_authors.py`` as ``{method: [case dict, ...]}``
    (arrays as tensors, 0-d numbers as Python numbers, strings as strings)."""
    out: dict = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            parts = key.split(".")
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            method, i, name = parts[0], int(parts[1]), parts[2]
            v = z[key]
            cases = out.setdefault(method, [])
            while len(cases) <= i:
                cases.append({})
            cases[i][name] = v.item() if v.ndim == 0 else torch.from_numpy(v.copy())
    return out


GOLDEN = load_golden(Path(__file__).parent / "golden" / "modern_selfkd.npz")
RTOL, ATOL = 1e-4, 1e-6  # float32, the authors' arithmetic in another order (e.g. our ranks on the device)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mismatches(pairs: dict[str, tuple[torch.Tensor | float, torch.Tensor | float]]) -> list[str]:
    """Names of the (ours, authors') pairs that differ beyond float tolerance."""
    bad = []
    for name, (ours, ref) in pairs.items():
        ours, ref = torch.as_tensor(ours, dtype=torch.float32), torch.as_tensor(ref, dtype=torch.float32)
        if ours.shape != ref.shape or not torch.allclose(ours, ref, rtol=RTOL, atol=ATOL):
            bad.append(name)
    return bad


# =========================================================================================== USKD
def uskd_check(case: dict, rank_from: str = "code") -> list[str]:
    logits = case["logits"].clone().requires_grad_()
    fea = case["fea_mid"].clone().requires_grad_()
    w, b = case["weight"].clone().requires_grad_(), case["bias"].clone().requires_grad_()
    terms = U.uskd_loss(logits, F.linear(fea, w, b), case["labels"], case["alpha"], case["beta"], case["mu"],
                        rank_from)
    value = torch.stack(list(terms.values())).sum()
    value.backward()
    return mismatches({"value": (value.item(), case["value"]), "grad_logits": (logits.grad, case["grad_logits"]),
                       "grad_fea_mid": (fea.grad, case["grad_fea_mid"]), "grad_weight": (w.grad, case["grad_weight"]),
                       "grad_bias": (b.grad, case["grad_bias"])})


@pytest.mark.parametrize("case", GOLDEN["uskd"], ids=lambda c: f"seed{c['seed']}-K{c['logits'].shape[1]}")
def test_uskd_equals_the_authors_code(case):
    assert uskd_check(case) == []


def test_uskd_code_ranks_by_log_probabilities_the_paper_by_probabilities():
    """The departure: the authors' code ranks by the reassigned log-softmax; ``rank_from="paper"`` by softmax."""
    g = torch.Generator().manual_seed(0)
    z, zw = torch.randn(6, 9, generator=g) * 3, torch.randn(6, 9, generator=g)
    y = torch.randint(0, 9, (6,), generator=g)
    w = zw.softmax(1)
    w_t = w.gather(1, y[:, None])
    for form, r in (("code", z.log_softmax(1)), ("paper", z.softmax(1))):
        want = w / (1 - w_t + 1e-6) + r / (1 - r.gather(1, y[:, None]) + 1e-6)
        torch.testing.assert_close(U.uskd_rank_scores(z, zw, y, form), want)
    assert any(uskd_check(c, "paper") for c in GOLDEN["uskd"])  # the two forms differ on the golden cases


# =========================================================================================== Zipf's LS
def zipf_check(case: dict, upsample: str | None = None) -> list[str]:
    logits = case["logits"].clone().requires_grad_()
    votes = Z.dense_votes(case["feature_map"], case["weight"], case["bias"], upsample or case["upsample"])
    ref_votes = torch.zeros_like(votes).scatter_add_(1, case["dense_argmax"], torch.ones_like(case["dense_argmax"]))
    value = Z.zipf_ls_loss(logits, case["feature_map"], case["weight"], case["bias"], case["labels"], case["power"],
                           upsample or case["upsample"])
    value.backward()
    return (["votes"] if not torch.equal(votes, ref_votes) else []) + mismatches(
        {"value": (value.item(), case["value"]), "grad_logits": (logits.grad, case["grad_logits"])})


@pytest.mark.parametrize("case", GOLDEN["zipf_ls"], ids=lambda c: f"seed{c['seed']}-K{c['logits'].shape[1]}")
def test_zipf_ls_equals_the_authors_code(case):
    assert zipf_check(case) == []


def test_zipf_ranks_share_the_smallest_rank_and_count_the_target():
    votes = torch.tensor([[5, 3, 3, 0, 1]])
    q = Z.zipf_targets(votes, torch.tensor([1]), power=1.0)  # ranks 1, 2, 2, 5, 4; target (class 1) removed
    want = torch.tensor([1.0, 1 / 2, 1 / 5, 1 / 4])
    torch.testing.assert_close(q, (want / want.sum())[None])


# =========================================================================================== MixSKD
from tfdistill.losses import mixskd as M  # noqa: E402


def mixskd_check(case: dict, mixup_ce: bool | None = None) -> list[str]:
    """Our terms (plus the last classifier's CE, the method's ``ce``) against the authors' total and gradients;
    ``mixup_ce`` defaults to the case's script (CIFAR: not added; ImageNet: added)."""
    logits = [t.clone().requires_grad_() for t in case["logits"]]
    feats = [t.clone().requires_grad_() for t in case["feats"]]
    ens, ens_mix = case["ens"].clone().requires_grad_(), case["ens_mix"].clone().requires_grad_()
    discs = []
    for s in range(len(feats)):
        d = M.Discriminator(feats[0].shape[1])
        with torch.no_grad():
            for k, p in enumerate(d.parameters()):
                p.copy_(case[f"disc_{k}"][s])
        discs.append(d)
    y, n = case["targets"], case["targets"].shape[0]
    terms = M.mixskd_terms(logits, feats, ens, ens_mix, y, case["perm"], torch.tensor(case["lam"]), discs, case["T"],
                           case["mixup_ce"] if mixup_ce is None else mixup_ce)
    value = F.cross_entropy(logits[-1][:n], y) + torch.stack(list(terms.values())).sum()
    value.backward()
    grad = lambda t: torch.zeros_like(t) if t.grad is None else t.grad  # noqa: E731
    pairs = {"value": (value.item(), case["value"]), "grad_logits": (torch.stack([grad(t) for t in logits]),
                                                                      case["grad_logits"]),
             "grad_feats": (torch.stack([grad(t) for t in feats]), case["grad_feats"]),
             "grad_ens": (grad(ens), case["grad_ens"]), "grad_ens_mix": (grad(ens_mix), case["grad_ens_mix"])}
    if case["script"] == "cifar":  # the mixup CE their CIFAR script computes (and leaves out): ours, computed alone
        alone = M.mixskd_terms(case["logits"], case["feats"], case["ens"], case["ens_mix"], y, case["perm"],
                               torch.tensor(case["lam"]), discs, case["T"], True)["mix_ce"]
        pairs["mix_ce"] = (alone.item(), case["value_mixcls"])
    return mismatches(pairs)


@pytest.mark.parametrize("case", GOLDEN["mixskd"], ids=lambda c: f"seed{c['seed']}-{c['script']}-S{len(c['logits'])}")
def test_mixskd_equals_the_authors_code(case):
    assert mixskd_check(case) == []


# =========================================================================================== mutations
def _uskd_target_without_batch_mean(logits, targets):
    s_t = F.softmax(logits, 1).gather(1, targets[:, None])
    return -((s_t ** 2 + 1).detach() * F.log_softmax(logits, 1).gather(1, targets[:, None])).sum(1).mean()


def _uskd_weak_unsmoothed(weak_logits, targets):
    return F.cross_entropy(weak_logits, targets)


def _uskd_zipf_shifted(scores, targets):
    n, k = scores.shape
    place = torch.argsort(torch.sort(scores, dim=1, descending=True)[1], dim=1)
    z = U.drop_target((1.0 / torch.arange(2, k + 2, dtype=scores.dtype)).expand(n, k).gather(1, place), targets)
    return z / z.sum(1, keepdim=True)


def _uskd_nontarget_all_classes(logits, targets, q):
    return -(q * U.drop_target(F.log_softmax(logits, 1), targets)).sum(1).mean()


def _zipf_ordinal_ranks(votes, targets, power=1.0):
    rank = torch.argsort(torch.argsort(-votes, dim=1, stable=True), dim=1) + 1  # ties broken, not shared
    keep = torch.ones_like(rank, dtype=torch.bool).scatter_(1, targets[:, None], False)
    d = (rank.double().reciprocal() ** power)[keep].view(votes.shape[0], -1)
    return (d / d.sum(1, keepdim=True)).float()


def _zipf_target_unranked(votes, targets, power=1.0):
    keep = torch.ones_like(votes, dtype=torch.bool).scatter_(1, targets[:, None], False)
    v = -votes[keep].view(votes.shape[0], -1).double()
    rank = torch.searchsorted(torch.sort(v, 1)[0], v.contiguous()) + 1
    d = rank.double().reciprocal() ** power
    return (d / d.sum(1, keepdim=True)).float()


def _zipf_kl_over_all_classes(logits, targets, q):
    log_p = U.drop_target(F.log_softmax(logits.float(), 1), targets)
    return F.kl_div(log_p, q, reduction="none").sum(1).mean()


def _zipf_power_ignored(votes, targets, power=1.0):
    return _REAL_ZIPF_TARGETS(votes, targets, 1.0)


_REAL_ZIPF_TARGETS = Z.zipf_targets

def _mixskd_kd_without_ensemble(*a, **k):
    terms = _REAL_MIXSKD_TERMS(*a, **k)
    logits, ens_mix, perm, lam = a[0], a[3], a[5], a[6]
    n = a[4].shape[0]
    terms["kd"] = terms["kd"] - kd_loss(M.interpolate(logits[-1][:n].float(), lam, perm), ens_mix.float(), a[8])
    return terms


def _mixskd_feat_summed(*a, **k):
    terms = _REAL_MIXSKD_TERMS(*a, **k)
    n = a[4].shape[0]
    terms["feat"] = sum(F.mse_loss(M.interpolate(f[:n], a[6], a[5]), f[n:], reduction="sum") for f in a[1])
    return terms


def _mixskd_adv_swapped(discriminators, first, second):
    return _REAL_ADV(discriminators, second, first)


def _mixskd_unmixed_partner(t, lam, perm):
    return lam * t + (1 - lam) * t


_REAL_MIXSKD_TERMS, _REAL_ADV = M.mixskd_terms, M.adversarial_loss
from tfdistill.losses.kd import kd_loss  # noqa: E402

MUTATIONS = {
    "mixskd: KD without the self-teacher term": ("mixskd", M, "mixskd_terms", _mixskd_kd_without_ensemble),
    "mixskd: feature MSE summed, not averaged": ("mixskd", M, "mixskd_terms", _mixskd_feat_summed),
    "mixskd: discriminator targets swapped": ("mixskd", M, "adversarial_loss", _mixskd_adv_swapped),
    "mixskd: interpolation without the partner": ("mixskd", M, "interpolate", _mixskd_unmixed_partner),
    "mixskd: mixup CE added to the CIFAR script": ("mixskd", None, "mixup_ce", True),
    "mixskd: mixup CE left out of the ImageNet script": ("mixskd", None, "mixup_ce", False),
    "uskd: soft target without the batch mean": ("uskd", U, "uskd_target_loss", _uskd_target_without_batch_mean),
    "uskd: weak labels not smoothed": ("uskd", U, "uskd_weak_loss", _uskd_weak_unsmoothed),
    "uskd: Zipf weights 1/(m+2)": ("uskd", U, "uskd_nontarget_targets", _uskd_zipf_shifted),
    "uskd: non-target log-softmax over all classes": ("uskd", U, "uskd_nontarget_loss", _uskd_nontarget_all_classes),
    "uskd: ranked by probabilities (the paper's form)": ("uskd", None, "rank_from", "paper"),
    "zipf: ties broken instead of shared": ("zipf_ls", Z, "zipf_targets", _zipf_ordinal_ranks),
    "zipf: target left out of the ranking": ("zipf_ls", Z, "zipf_targets", _zipf_target_unranked),
    "zipf: KL over all classes' softmax": ("zipf_ls", Z, "nontarget_kl", _zipf_kl_over_all_classes),
    "zipf: power ignored": ("zipf_ls", Z, "zipf_targets", _zipf_power_ignored),
    "zipf: votes without upsampling": ("zipf_ls", None, "upsample", "none"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_golden_check_fails_when_a_term_is_changed(name, monkeypatch):
    method, module, attr, change = MUTATIONS[name]
    check = {"uskd": uskd_check, "zipf_ls": zipf_check, "mixskd": mixskd_check}[method]
    cases = GOLDEN[method]
    assert all(check(c) == [] for c in cases)  # unmutated: every case passes
    if module is None:  # a setting changed rather than a function
        if attr == "upsample":
            cases = [c for c in cases if c["upsample"] != "none"]
        if attr == "mixup_ce":
            cases = [c for c in cases if c["mixup_ce"] != change]
        failed = [check(c, change) for c in cases]
    else:
        monkeypatch.setattr(module, attr, change)
        failed = [check(c) for c in cases]
    assert any(failed), f"mutation {name!r} went unnoticed by the golden checks"


# =========================================================================================== presets, CLI
def test_presets_families_papers_and_coupling():
    from tfdistill.methods import resolve_preset
    from tfdistill.methods.registry import method_coupling, preset_family

    for name, coupling in (("zipf_ls", "per-sample"), ("zipf_ls_imagenet", "per-sample"), ("uskd", "batch-coupled"),
                           ("uskd_imagenet", "batch-coupled"), ("tfd+uskd", "batch-coupled"),
                           ("mixskd", "batch-coupled"), ("mixskd_imagenet", "batch-coupled")):
        p = resolve_preset(name)
        assert preset_family(name) == "self-distillation" and p.paper and "/" in p.reference, name
        assert method_coupling(name) == coupling, name
    assert resolve_preset("uskd").defaults["uskd"] == {"alpha": 0.1, "beta": 0.1, "mu": 0.1}
    assert resolve_preset("uskd_imagenet").defaults["uskd"] == {"alpha": 1.0, "beta": 0.1, "mu": 0.005}
    assert resolve_preset("zipf_ls").defaults["zipf_ls"]["upsample"] == "bilinear"
    assert resolve_preset("zipf_ls_imagenet").defaults["zipf_ls"]["upsample"] == "none"
    assert resolve_preset("tfd+uskd").components == ("tfd", "uskd")
    assert resolve_preset("mixskd").defaults["mixskd"] == {"alpha": 0.4, "T": 3.0, "mixup_ce": False}
    assert resolve_preset("mixskd_imagenet").defaults["mixskd"] == {"alpha": 0.2, "T": 3.0, "mixup_ce": True}


def test_zipf_ls_refuses_a_classifier_that_does_not_read_the_pooled_last_tap():
    from tfdistill.errors import ConfigError
    from tfdistill.methods import build_method, method_schema

    class Net(torch.nn.Module):
        stage_names = ("a", "b")

        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.Conv2d(4, 6, 3, 2, 1)
            self.c = torch.nn.Conv2d(6, 6, 1)  # work after the last stage, before the pooling
            self.fc = torch.nn.Linear(6, 5)

        def forward(self, x):
            return self.fc(self.c(self.b(self.a(x))).mean((2, 3)))

    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ConfigError, match="does not read the global average"):
        build_method(Net(), method_schema("zipf_ls")(), example=x, num_classes=5, num_train=8, epochs=1)
    m = build_method(Net(), method_schema("zipf_ls")(), example=x, num_classes=5, num_train=8, epochs=1,
                     student_taps=["a", "c"])
    assert m.describe()["zipf_ls"] == {"classifier": "fc"}


@pytest.mark.parametrize("preset, terms", [
    ("zipf_ls", {"ce", "zipf_ls"}),
    ("uskd", {"ce", "uskd_target", "uskd_nontarget", "uskd_weak"}),
    ("mixskd", {"ce", "mixskd_aux_ce", "mixskd_kd", "mixskd_feat", "mixskd_adv"}),
    ("mixskd_imagenet", {"ce", "mixskd_aux_ce", "mixskd_kd", "mixskd_feat", "mixskd_adv", "mixskd_mix_ce"}),
    ("tfd+uskd", {"ce", "tfd_depth", "tfd_width", "uskd_target", "uskd_nontarget", "uskd_weak"}),
])
def test_one_epoch_through_the_cli(preset, terms, tmp_path):
    from conftest import TINY
    from tfdistill.cli import main

    over = [*TINY, "data.synthetic_train=64", "data.synthetic_test=32", f"method.name={preset}",
            f"out_dir={tmp_path}", "name=r"]
    assert main(["train", *over]) == 0
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and set(rows[0]["terms"]) == terms
    assert all(v == v and v > 0 for v in rows[0]["terms"].values())
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished"


# =========================================================================================== MixSKD in the engine
def test_mixskd_draws_come_from_the_seed_and_epoch():
    from tfdistill.methods import build_method, method_schema
    from test_baselines import NUM_CLASSES, NUM_TRAIN, TinyNet, batch

    def method(seed):
        torch.manual_seed(0)
        return build_method(TinyNet(), method_schema("mixskd")(), example=batch()[0], num_classes=NUM_CLASSES,
                            num_train=NUM_TRAIN, epochs=2, seed=seed).distillers["mixskd"]

    a, b, other = method(3), method(3), method(4)
    draws = {}
    for name, comp in (("a", a), ("b", b), ("other", other)):
        comp.on_epoch_start(1)
        draws[name] = [comp.draw_mix(8, torch.device("cpu")) for _ in range(3)]
    for (la, pa), (lb, pb) in zip(draws["a"], draws["b"]):
        assert torch.equal(la, lb) and torch.equal(pa, pb)
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(draws["a"], draws["other"]))
    assert all(0 <= float(lam) <= 1 and sorted(p.tolist()) == list(range(8)) for lam, p in draws["a"])
    a.on_epoch_start(2)
    assert not torch.equal(a.draw_mix(8, torch.device("cpu"))[1], draws["a"][0][1])
    assert type(a).host_draws and method_schema("mixskd")().mixskd.mixup_ce is False


def test_mixskd_method_trains_on_both_halves_and_is_never_captured():
    from tfdistill.methods import build_method, method_schema
    from test_baselines import NUM_CLASSES, NUM_TRAIN, TinyNet, batch

    torch.manual_seed(0)
    net = TinyNet()
    m = build_method(net, method_schema("mixskd")(), example=batch()[0], num_classes=NUM_CLASSES, num_train=NUM_TRAIN,
                     epochs=2, seed=0)
    assert not m.capturable()
    m.train()
    m.on_epoch_start(0)
    x, y, idx = batch()
    seen = []
    h = net.register_forward_hook(lambda mod, a, o: seen.append(a[0].shape[0]))
    logits, terms = m(x, y, idx)
    h.remove()
    assert seen == [2 * x.shape[0]] and logits.shape[0] == x.shape[0]  # one forward pass over [x; x_mix]
    assert set(terms) == {"ce", "mixskd_aux_ce", "mixskd_kd", "mixskd_feat", "mixskd_adv"}
    frozen = set(m.frozen_in_main())
    assert any(".teacher." in n for n in frozen) and any(".discriminators." in n for n in frozen)
    m.eval()
    assert set(m(x, y, idx)[1]) == {"ce"}  # no mixing outside training


RUN = ["epochs=2", "data.synthetic_train=64", "data.synthetic_test=32", "engine.max_steps_per_epoch=2",
       "engine.device=cpu", "method.name=mixskd"]


def test_mixskd_packed_equals_alone(tmp_path):
    from conftest import TINY
    from test_pack import assert_same_run
    from tfdistill.config import load_config
    from tfdistill.engine import train

    over = [*TINY, *RUN, f"out_dir={tmp_path}"]
    train(load_config(None, [*over, "seeds=[0,1]", "name=g"]), echo=lambda s: None)
    for seed in (0, 1):
        train(load_config(None, [*over, f"seed={seed}", f"name=alone{seed}"]), echo=lambda s: None)
        assert_same_run(tmp_path / f"g_s{seed}", tmp_path / f"alone{seed}")


@pytest.mark.slow
def test_mixskd_resume_after_sigkill_is_bit_identical(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, TINY
    from test_pack import assert_same_run

    def cmd(out):
        return [sys.executable, "-m", "tfdistill", "train", *TINY, f"out_dir={out}", "name=k", "epochs=4",
                "data.synthetic_train=128", "method.name=mixskd", "engine.device=cpu"]

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    ref = subprocess.run(cmd(tmp_path / "a"), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(cmd(tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "b" / "k" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + (proc.stderr.read() or "")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "k" / "summary.json").exists()
    res = subprocess.run([*cmd(tmp_path / "b"), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_same_run(tmp_path / "a" / "k", tmp_path / "b" / "k")
    assert json.loads((tmp_path / "b" / "k" / "summary.json").read_text())["resumed_from_epoch"] >= 1


def test_mixskd_refuses_stages_that_do_not_feed_each_other():
    from tfdistill.errors import ConfigError
    from tfdistill.methods import build_method, method_schema

    class Net(torch.nn.Module):
        stage_names = ("a", "b")

        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3, 1, 1), torch.nn.Conv2d(4, 6, 3, 1, 1)
            self.fc = torch.nn.Linear(6, 5)

        def forward(self, x):  # functional work between the stages: a copy of b cannot take a's output on
            return self.fc(self.b(F.max_pool2d(self.a(x), 2)).mean((2, 3)))

    with pytest.raises(ConfigError, match="do not run one after the other"):
        build_method(Net(), method_schema("mixskd")(), example=torch.randn(4, 3, 16, 16), num_classes=5,
                     num_train=8, epochs=1)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mixskd", "mixskd_imagenet"])
def test_mixskd_trains_under_ddp(preset, tmp_path):
    """Two gloo ranks: the frozen modules (discriminators; the self-teacher of the CIFAR script) are left out of the
    DDP wrapper and the run finishes with every term finite."""
    from test_distributed import BASE, _ok, torchrun

    over = [*BASE, "model.name=resnet8", "epochs=1", "name=m", f"out_dir={tmp_path}", f"method.name={preset}"]
    _ok(torchrun(["train", *over], module=True))
    rows = [json.loads(x) for x in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 1 and all(v == v for v in rows[-1]["terms"].values())
