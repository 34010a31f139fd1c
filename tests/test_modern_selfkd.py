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
    z, zw, y = torch.randn(6, 9, generator=g) * 3, torch.randn(6, 9, generator=g), torch.randint(0, 9, (6,), generator=g)
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


# =========================================================================================== mutations
def _uskd_target_without_batch_mean(logits, targets):
    s_t = F.softmax(logits, 1).gather(1, targets[:, None])
    return -((s_t ** 2 + 1).detach() * F.log_softmax(logits, 1).gather(1, targets[:, None])).sum(1).mean()


def _uskd_weak_unsmoothed(weak_logits, targets):
    return F.cross_entropy(weak_logits, targets)


def _uskd_zipf_shifted(scores, targets):
    n, k = scores.shape
    place = torch.argsort(torch.sort(scores, dim=1, descending=True)[1], dim=1)
    z = U._drop_target((1.0 / torch.arange(2, k + 2, dtype=scores.dtype)).expand(n, k).gather(1, place), targets)
    return z / z.sum(1, keepdim=True)


def _uskd_nontarget_all_classes(logits, targets, q):
    return -(q * U._drop_target(F.log_softmax(logits, 1), targets)).sum(1).mean()


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
    log_p = U._drop_target(F.log_softmax(logits.float(), 1), targets)
    return F.kl_div(log_p, q, reduction="none").sum(1).mean()


def _zipf_power_ignored(votes, targets, power=1.0):
    return _REAL_ZIPF_TARGETS(votes, targets, 1.0)


_REAL_ZIPF_TARGETS = Z.zipf_targets

MUTATIONS = {
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
    check = {"uskd": uskd_check, "zipf_ls": zipf_check}[method]
    cases = GOLDEN[method]
    assert all(check(c) == [] for c in cases)  # unmutated: every case passes
    if module is None:  # a setting changed rather than a function
        failed = [check(c, change) for c in cases if attr != "upsample" or c["upsample"] != "none"]
    else:
        monkeypatch.setattr(module, attr, change)
        failed = [check(c) for c in cases]
    assert any(failed), f"mutation {name!r} went unnoticed by the golden checks"


# =========================================================================================== presets, CLI
def test_presets_families_papers_and_coupling():
    from tfdistill.methods import resolve_preset
    from tfdistill.methods.registry import method_coupling, preset_family

    for name, coupling in (("zipf_ls", "per-sample"), ("zipf_ls_imagenet", "per-sample"), ("uskd", "batch-coupled"),
                           ("uskd_imagenet", "batch-coupled"), ("tfd+uskd", "batch-coupled")):
        p = resolve_preset(name)
        assert preset_family(name) == "self-distillation" and p.paper and "/" in p.reference, name
        assert method_coupling(name) == coupling, name
    assert resolve_preset("uskd").defaults["uskd"] == {"alpha": 0.1, "beta": 0.1, "mu": 0.1}
    assert resolve_preset("uskd_imagenet").defaults["uskd"] == {"alpha": 1.0, "beta": 0.1, "mu": 0.005}
    assert resolve_preset("zipf_ls").defaults["zipf_ls"]["upsample"] == "bilinear"
    assert resolve_preset("zipf_ls_imagenet").defaults["zipf_ls"]["upsample"] == "none"
    assert resolve_preset("tfd+uskd").components == ("tfd", "uskd")


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
