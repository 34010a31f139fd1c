"""The modern teacher-based methods of #31 -- DKD, DIST, logit standardization, ReviewKD -- against their authors'
code: values and gradients equal to the golden files ``tests/golden/{dkd,dist,logit_stand,reviewkd}.json``, which
``tests/golden/kd_modern_authors.py`` computed by running the authors' functions (outside the project, float64,
commits and patches in each file's ``provenance``). Each ``check_*`` compares one golden case through the public
path training uses (the pure loss and the registered component); ``tests/test_kd_modern_mutation.py`` shows that
each check fails when a term is changed. Also: presets, warm-ups, options, and one epoch of each preset through
the CLI with a tiny teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tfdistill.losses.dist import dist_loss
from tfdistill.losses.dkd import dkd_loss
from tfdistill.losses.reviewkd import ReviewFusion, hcl_loss
from tfdistill.losses.logit_stand import logit_stand_kd_loss, standardize_logits
from tfdistill.methods import BuildContext, FeatureInfo, StepOutputs, method_schema
from tfdistill.methods.dist import DIST
from tfdistill.methods.dkd import DKD
from tfdistill.methods.logit_stand import LogitStand
from tfdistill.methods.reviewkd import ReviewKD

GOLDEN = Path(__file__).parent / "golden"
RTOL, ATOL = 1e-9, 1e-12


def golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def ctx(num_classes: int, **kw) -> BuildContext:
    return BuildContext(num_classes=num_classes, num_train=64, epochs=2, **kw)


def close(got: torch.Tensor, want, what: str) -> None:
    torch.testing.assert_close(got.detach(), t64(want), rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def value_and_grad(fn, *leaves: torch.Tensor):
    leaves = [x.clone().requires_grad_(True) for x in leaves]
    v = fn(*leaves)
    grads = torch.autograd.grad(v, leaves)
    return v, grads


def outputs(zs, zt, targets=None) -> StepOutputs:
    n = zs.shape[0]
    y = targets if targets is not None else torch.zeros(n, dtype=torch.long)
    return StepOutputs(torch.zeros(n, 3, 4, 4), y, None, zs, logits_t=zt)


# =========================================================================== DKD
DKD_CASES = golden("dkd")["cases"]


def check_dkd(case: dict) -> None:
    zs, zt, y = t64(case["logits_s"]), t64(case["logits_t"]), torch.tensor(case["targets"])
    a, b, T = case["alpha"], case["beta"], case["T"]
    if not case["logit_stand"]:  # the pure loss (the standardized case is the component's option)
        v, (g,) = value_and_grad(lambda z: dkd_loss(z, zt, y, a, b, T), zs)
        close(v, case["value"], "dkd_loss value")
        close(g, case["grad_s"], "dkd_loss gradient")
    params = method_schema("dkd")().dkd
    params.alpha, params.beta, params.T, params.logit_stand = a, b, T, case["logit_stand"]
    comp = DKD(params, ctx(zs.shape[1]))
    comp.on_epoch_start(params.warmup)  # past the warm-up
    v, (g,) = value_and_grad(lambda z: sum(comp.terms(outputs(z, zt, y)).values()), zs)
    close(v, case["value"], "dkd component value")
    close(g, case["grad_s"], "dkd component gradient")


@pytest.mark.parametrize("case", DKD_CASES, ids=[f"N{len(c['targets'])}-K{len(c['logits_s'][0])}-a{c['alpha']}"
                                                  f"-b{c['beta']}-T{c['T']}{'-stand' if c['logit_stand'] else ''}"
                                                  for c in DKD_CASES])
def test_dkd_equals_authors_code(case):
    check_dkd(case)


def test_dkd_float32_and_warmup():
    case = DKD_CASES[0]
    zs, zt, y = t64(case["logits_s"]), t64(case["logits_t"]), torch.tensor(case["targets"])
    v32 = dkd_loss(zs.float(), zt.float(), y, case["alpha"], case["beta"], case["T"])
    assert v32.dtype == torch.float32 and v32.item() == pytest.approx(case["value"], rel=1e-5)
    comp = DKD(method_schema("dkd")().dkd, ctx(zs.shape[1]))  # CIFAR preset: warm-up over 20 epochs
    full = dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)
    for epoch, scale in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)]:
        comp.on_epoch_start(epoch)
        got = sum(comp.terms(outputs(zs, zt, y)).values())
        assert got.item() == pytest.approx(scale * full.item(), rel=1e-7), epoch  # (a float32 ramp)
    imagenet = DKD(method_schema("dkd_imagenet")().dkd, ctx(zs.shape[1]))
    imagenet.on_epoch_start(0)
    assert float(imagenet.ramp) == 1.0


# =========================================================================== DIST
DIST_CASES = golden("dist")["cases"]


def check_dist(case: dict) -> None:
    zs, zt = t64(case["logits_s"]), t64(case["logits_t"])
    beta, gamma, tau = case["beta"], case["gamma"], case["tau"]
    v, (g,) = value_and_grad(lambda z: dist_loss(z, zt, beta, gamma, tau), zs)
    close(v, case["value"], "dist_loss value")
    close(g, case["grad_s"], "dist_loss gradient")
    params = method_schema("dist")().dist
    params.weight, params.beta, params.gamma, params.tau = 1.0, beta, gamma, tau
    comp = DIST(params, ctx(zs.shape[1]))
    v, (g,) = value_and_grad(lambda z: sum(comp.terms(outputs(z, zt)).values()), zs)
    close(v, case["value"], "dist component value")
    close(g, case["grad_s"], "dist component gradient")


@pytest.mark.parametrize("case", DIST_CASES, ids=[f"B{len(c['logits_s'])}-K{len(c['logits_s'][0])}-b{c['beta']}"
                                                   f"-g{c['gamma']}-tau{c['tau']}" for c in DIST_CASES])
def test_dist_equals_authors_code(case):
    check_dist(case)


def test_dist_preset_weight_and_batch_coupling():
    case = DIST_CASES[1]  # tau 4, as the CIFAR preset
    zs, zt = t64(case["logits_s"]), t64(case["logits_t"])
    comp = DIST(method_schema("dist")().dist, ctx(zs.shape[1]))
    terms = comp.terms(outputs(zs, zt))
    assert set(terms) == {"dist_inter", "dist_intra"}
    assert sum(terms.values()).item() == pytest.approx(2 * case["value"], rel=1e-12)  # kd_loss_weight 2
    assert method_schema("dist_imagenet")().dist.tau == 1.0
    # the inter-class term is a mean over samples; the intra-class term is not (it relates the batch's samples)
    half = [comp.terms(outputs(zs[i:i + 4], zt[i:i + 4])) for i in (0, 4)]
    assert (half[0]["dist_inter"] + half[1]["dist_inter"]).item() / 2 == pytest.approx(terms["dist_inter"].item(),
                                                                                       rel=1e-12)
    assert (half[0]["dist_intra"] + half[1]["dist_intra"]).item() / 2 != pytest.approx(terms["dist_intra"].item(),
                                                                                       rel=1e-3)


# =========================================================================== logit standardization
STAND_CASES = golden("logit_stand")["cases"]


def check_logit_stand(case: dict) -> None:
    zs, zt, T = t64(case["logits_s"]), t64(case["logits_t"]), case["T"]
    v, (g,) = value_and_grad(lambda z: logit_stand_kd_loss(z, zt, T), zs)
    close(v, case["value"], "logit_stand_kd_loss value")
    close(g, case["grad_s"], "logit_stand_kd_loss gradient")
    params = method_schema("logit_stand")().logit_stand
    params.weight, params.T = 1.0, T
    comp = LogitStand(params, ctx(zs.shape[1]))
    v, (g,) = value_and_grad(lambda z: sum(comp.terms(outputs(z, zt)).values()), zs)
    close(v, case["value"], "logit_stand component value")
    close(g, case["grad_s"], "logit_stand component gradient")


@pytest.mark.parametrize("case", STAND_CASES, ids=[f"N{len(c['logits_s'])}-K{len(c['logits_s'][0])}-T{c['T']}"
                                                    for c in STAND_CASES])
def test_logit_stand_equals_authors_code(case):
    check_logit_stand(case)


def test_logit_stand_paper_std_option_and_invariance():
    z = t64(STAND_CASES[1]["logits_s"])
    k = z.shape[1]
    s, pop = standardize_logits(z, "sample", eps=0.0), standardize_logits(z, "population", eps=0.0)
    torch.testing.assert_close(s, pop * ((k - 1) / k) ** 0.5)  # the code's sigma divides by K - 1
    torch.testing.assert_close(pop.pow(2).mean(1), torch.ones(z.shape[0], dtype=z.dtype))
    zt = t64(STAND_CASES[1]["logits_t"])
    # the point of the method: invariant to a shift and a positive scale of either network's logits
    a = logit_stand_kd_loss(z, zt, 2.0)
    assert logit_stand_kd_loss(3 * z + 1, 0.5 * zt - 2, 2.0).item() == pytest.approx(a.item(), rel=1e-6)
    with pytest.raises(ValueError, match="valid: sample, population"):
        standardize_logits(z, "biased")
    p = method_schema("logit_stand_imagenet")()
    assert (p.ce_weight, p.logit_stand.weight, p.logit_stand.T) == (1.0, 9.0, 2.0)
    assert method_schema("logit_stand")().ce_weight == 0.1


# =========================================================================== ReviewKD
_RK = golden("reviewkd")
REVIEW_CASES = _RK["cases"] + _RK["hcl_cases"]  # full (ABF fusion + HCL) cases, then HCL alone on single maps


def _levels(stages, n):
    return [(c, h, h) for c, h in stages] + [(stages[-1][0], 1, 1)]


def _load(fusion: ReviewFusion, params: dict) -> None:
    state = fusion.state_dict()
    for k, v in params.items():
        state[f"abfs.{k}"] = t64(v)
    fusion.load_state_dict(state)


def check_reviewkd(case: dict) -> None:
    if "fs" in case:  # the hierarchical context loss alone
        v, (g,) = value_and_grad(lambda a: hcl_loss([a], [t64(case["ft"])]), t64(case["fs"]))
        close(v, case["value"], "hcl_loss value")
        close(g, case["grad"], "hcl_loss gradient")
        return
    feats_s = [t64(f) for f in case["feats_s"]] + [t64(case["emb_s"])]
    feats_t = [t64(f) for f in case["feats_t"]]
    emb_t = t64(case["emb_t"])
    n = feats_s[0].shape[0]
    s_lv, t_lv = _levels(case["student_stages"], n), _levels(case["teacher_stages"], n)
    info_s = FeatureInfo([f"s{i}" for i in range(len(s_lv) - 1)], s_lv[:-1], s_lv[-1][0])
    info_t = FeatureInfo([f"t{i}" for i in range(len(t_lv) - 1)], t_lv[:-1], t_lv[-1][0])
    params = method_schema("reviewkd")().reviewkd
    params.weight = 1.0
    comp = ReviewKD(params, ctx(10, student=info_s, teacher=info_t)).double().train()
    _load(comp.fusion, case["params"])
    comp.on_epoch_start(params.warmup)  # past the warm-up
    leaves = [f.clone().requires_grad_(True) for f in feats_s]
    out = StepOutputs(torch.zeros(n, 3, 4, 4), torch.zeros(n, dtype=torch.long), None, torch.zeros(n, 10),
                      feats_s=leaves[:-1], emb_s=leaves[-1], logits_t=torch.zeros(n, 10), feats_t=feats_t, emb_t=emb_t)
    v = comp.terms(out)["reviewkd"]
    names = [k for k, _ in comp.fusion.named_parameters()]
    grads = torch.autograd.grad(v, leaves + list(comp.fusion.parameters()))
    close(v, case["value"], "reviewkd value")
    results = comp.fusion([f.detach() for f in feats_s[:-1]] + [feats_s[-1][:, :, None, None]])
    close(torch.stack([r.sum() for r in results]), case["results_sum"], "ABF outputs (sums)")
    for i, (g, want) in enumerate(zip(grads, case["grad_feats_s"] + [case["grad_emb_s"]])):
        close(g, want, f"gradient of student level {i}")
    compared = 0
    for name, g in zip(names, grads[len(leaves):]):
        key = name[len("abfs."):]
        if key in case["grad_params"]:
            close(g, case["grad_params"][key], f"gradient of ABF parameter {key}")
            compared += 1
    assert compared == len(case["grad_params"]), "an ABF parameter of the golden file has no counterpart"


@pytest.mark.parametrize("case", REVIEW_CASES, ids=[
    (f"abf-N{len(c['feats_s'][0])}-s{'x'.join(str(h) for _, h in c['student_stages'])}"
     f"-t{'x'.join(str(h) for _, h in c['teacher_stages'])}") if "feats_s" in c else
    f"hcl-{len(c['fs'])}x{len(c['fs'][0])}x{len(c['fs'][0][0])}" for c in REVIEW_CASES])
def test_reviewkd_equals_authors_code(case):
    check_reviewkd(case)


def test_reviewkd_warmup_and_presets():
    info = FeatureInfo(["a", "b"], [(4, 8, 8), (8, 4, 4)], 8)
    comp = ReviewKD(method_schema("reviewkd")().reviewkd, ctx(10, student=info, teacher=info))
    seen = []
    for e in (0, 1, 10, 20, 30):
        comp.on_epoch_start(e)
        seen.append(float(comp.ramp))
    # the authors' CIFAR-100 script: min(1, epoch / 20) with 0-based epochs
    assert seen == pytest.approx([0.0, 1 / 20, 10 / 20, 1.0, 1.0])
    p = method_schema("reviewkd")().reviewkd
    p.warmup_offset = 1  # mdistiller's count from 1
    comp = ReviewKD(p, ctx(10, student=info, teacher=info))
    comp.on_epoch_start(0)
    assert float(comp.ramp) == pytest.approx(1 / 20)
    im = method_schema("reviewkd_imagenet")()
    assert (im.ce_weight, im.reviewkd.weight, im.reviewkd.warmup) == (1.0, 1.0, 0)
    # the ABFs are the component's trainable parameters, sized from the tapped shapes
    assert [tuple(a.conv2[0].weight.shape[:2]) for a in comp.fusion.abfs] == [(4, 8), (8, 8), (8, 8)]
    assert comp.fusion.abfs[-1].att_conv is None and comp.fusion.abfs[0].att_conv is not None


# =========================================================================== coupling, as declared
def test_per_sample_methods_split_exactly():
    """DKD and logit standardization are declared per-sample: the mean of two half-batches' terms is the full batch's
    (what makes gradient accumulation exact); DIST's intra-class term is not (test above)."""
    case = DKD_CASES[1]
    zs, zt, y = t64(case["logits_s"]), t64(case["logits_t"]), torch.tensor(case["targets"])
    for comp in (DKD(method_schema("dkd_logit_stand")().dkd, ctx(zs.shape[1])),
                 LogitStand(method_schema("logit_stand")().logit_stand, ctx(zs.shape[1]))):
        comp.on_epoch_start(100)
        full = sum(comp.terms(outputs(zs, zt, y)).values())
        halves = [sum(comp.terms(outputs(zs[i:i + 4], zt[i:i + 4], y[i:i + 4])).values()) for i in (0, 4)]
        assert ((halves[0] + halves[1]) / 2).item() == pytest.approx(full.item(), rel=1e-6), type(comp).__name__
        assert comp.coupling == "per-sample"
    assert DIST.coupling == "batch-coupled" and ReviewKD.coupling == "per-sample"


def test_reviewkd_fusion_is_trained_with_the_student():
    """The ABFs are the component's parameters: in the main stage's trainable parameters, with gradients after a
    step's backward, and in the component state the engine checkpoints."""
    from test_baselines import batch, build

    m, student, _ = build("reviewkd_imagenet")
    m.train()
    m.on_epoch_start(0)
    fusion = m.distillers["reviewkd"].fusion
    ids = {id(p) for p in m.trainable_parameters("main")}
    assert all(id(p) in ids for p in fusion.parameters())
    x, y, idx = batch()
    _, terms = m(x, y, idx)
    assert set(terms) == {"ce", "reviewkd"}
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())
    assert any(k.startswith("reviewkd.fusion.abfs.") for k in m.component_state_dict())
