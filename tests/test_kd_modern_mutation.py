"""Mutation test of the golden checks in ``tests/test_kd_modern.py``: each term of DKD, DIST, logit standardization
and ReviewKD is changed in turn (a weight scaled by 1.01, a term dropped, a constant, a normalisation or an
interpolation changed, by monkeypatching the implementation), and the golden comparison must then fail on every
golden case the change applies to. A check that still passed would not be checking that term."""

from __future__ import annotations

from typing import Callable

import pytest

import tfdistill.losses.dist as L_dist
import tfdistill.losses.dkd as L_dkd
import tfdistill.losses.logit_stand as L_stand
import tfdistill.losses.reviewkd as L_rk
import tfdistill.methods.dist as M_dist
import tfdistill.methods.dkd as M_dkd
import tfdistill.methods.logit_stand as M_stand
import tfdistill.methods.reviewkd as M_rk
from test_kd_modern import (DIST_CASES, DKD_CASES, REVIEW_CASES, STAND_CASES, check_dist, check_dkd,
                            check_logit_stand, check_reviewkd)

Mutation = tuple[str, Callable[[pytest.MonkeyPatch], None], Callable[[dict], bool]]


def wrap_terms(mp: pytest.MonkeyPatch, modules, name: str, change: Callable) -> None:
    """Replace function ``name`` in every module of ``modules`` by ``change(original(*a, **k))``."""
    original = getattr(modules[0], name)
    for m in modules:
        mp.setattr(m, name, lambda *a, **k: change(original(*a, **k)))


def dkd_terms_changed(change):
    return lambda mp: wrap_terms(mp, [L_dkd, M_dkd], "dkd_terms", change)


def without_t2(mp: pytest.MonkeyPatch, modules, name: str) -> None:
    """``name(..., T)`` (its last positional argument is the temperature) with its terms divided by ``T^2``."""
    original = getattr(modules[0], name)
    for m in modules:
        mp.setattr(m, name, lambda *a: tuple(x / (a[-1] * a[-1]) for x in original(*a)))


def always(case: dict) -> bool:
    return True


DKD_MUTATIONS: list[Mutation] = [
    ("tckd-weight", dkd_terms_changed(lambda t: (1.01 * t[0], t[1])), always),
    ("nckd-weight", dkd_terms_changed(lambda t: (t[0], 1.01 * t[1])), always),
    ("tckd-dropped", dkd_terms_changed(lambda t: (0 * t[0], t[1])), always),
    ("nckd-dropped", dkd_terms_changed(lambda t: (t[0], 0 * t[1])), always),
    ("target-class-kept-in-nckd", lambda mp: mp.setattr(L_dkd, "_SHIFT", 0.0), always),
    ("no-T-squared", lambda mp: without_t2(mp, [L_dkd, M_dkd], "dkd_terms"), lambda c: c["T"] != 1),
    ("no-logit-standardization", lambda mp: mp.setattr(M_dkd, "standardize_logits", lambda z, std: z),
     lambda c: c["logit_stand"]),
    ("population-std", lambda mp: mp.setattr(M_dkd, "standardize_logits", _population(M_dkd.standardize_logits)),
     lambda c: c["logit_stand"]),
]


def _population(fn):
    return lambda z, std="sample": fn(z, "population")


def dist_terms_changed(change):
    return lambda mp: wrap_terms(mp, [L_dist, M_dist], "dist_terms", change)


def _cosine(a, b, eps=L_dist.EPS):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


DIST_MUTATIONS: list[Mutation] = [
    ("inter-weight", dist_terms_changed(lambda t: (1.01 * t[0], t[1])), always),
    ("intra-weight", dist_terms_changed(lambda t: (t[0], 1.01 * t[1])), always),
    ("inter-dropped", dist_terms_changed(lambda t: (0 * t[0], t[1])), always),
    ("intra-dropped", dist_terms_changed(lambda t: (t[0], 0 * t[1])), always),
    ("intra-over-classes-not-batch", lambda mp: mp.setattr(L_dist, "intra_class_relation", L_dist.inter_class_relation),
     always),
    ("cosine-not-pearson", lambda mp: mp.setattr(L_dist, "pearson_correlation", _cosine), always),
    ("no-tau-squared", lambda mp: without_t2(mp, [L_dist, M_dist], "dist_terms"), lambda c: c["tau"] != 1),
]


def _standardize_with(**changed):
    original = L_stand.standardize_logits
    return lambda mp: mp.setattr(L_stand, "standardize_logits",
                                 lambda z, std="sample", eps=1e-7: original(z, **{"std": std, "eps": eps, **changed}))


def _scaled_loss(factor):
    original = L_stand.logit_stand_kd_loss
    return lambda mp: (mp.setattr(L_stand, "logit_stand_kd_loss", lambda *a, **k: factor(a) * original(*a, **k)),
                       mp.setattr(M_stand, "logit_stand_kd_loss", lambda *a, **k: factor(a) * original(*a, **k)))


STAND_MUTATIONS: list[Mutation] = [
    ("population-std", _standardize_with(std="population"), always),
    ("no-standardization", lambda mp: mp.setattr(L_stand, "standardize_logits", lambda z, std="sample": z), always),
    ("no-eps", _standardize_with(eps=0.0), always),
    ("weight", _scaled_loss(lambda a: 1.01), always),
    ("no-T-squared", _scaled_loss(lambda a: 1 / a[2] ** 2), lambda c: c["T"] != 1),
]


def full(case: dict) -> bool:
    """A ReviewKD case with the ABF fusion (not the HCL alone)."""
    return "feats_s" in case


def pyramid(case: dict) -> bool:
    """Some map of the case is larger than 1x1, so the HCL uses a pyramid level."""
    return full(case) or len(case["fs"][0][0]) > 1


def _hcl_map_scaled(mp):
    original = L_rk.hcl_map_loss
    mp.setattr(L_rk, "hcl_map_loss", lambda fs, ft: 1.01 * original(fs, ft))


def _fuse_swapped(mp):
    original = L_rk.fuse
    mp.setattr(L_rk, "fuse", lambda x, y, att: original(x, y, att.flip(1)))


def _embedding_dropped(mp):
    original = M_rk.hcl_loss
    mp.setattr(M_rk, "hcl_loss", lambda fs, ft: original(fs[:-1], ft[:-1]) + 0 * fs[-1].sum())


def _no_fusion(mp):
    mp.setattr(L_rk, "fuse", lambda x, y, att: x + 0 * (y * att[:, 1:2]))  # the residual's weight is 0


REVIEW_MUTATIONS: list[Mutation] = [
    ("hcl-weight", _hcl_map_scaled, always),
    ("pyramid-decay", lambda mp: mp.setattr(L_rk, "HCL_DECAY", 0.6), pyramid),
    ("pyramid-1x1-dropped", lambda mp: mp.setattr(L_rk, "HCL_LEVELS", (4, 2)), pyramid),
    ("pyramid-2x2-dropped", lambda mp: mp.setattr(L_rk, "HCL_LEVELS", (4, 1)),
     lambda c: full(c) or len(c["fs"][0][0]) > 2),
    ("embedding-level-dropped", _embedding_dropped, full),
    ("attention-swapped", _fuse_swapped, full),
    ("no-residual-fusion", _no_fusion, full),
    ("bilinear-resize", lambda mp: mp.setattr(L_rk, "UPSAMPLE_MODE", "bilinear"), full),
]

CHECKS = {"dkd": (check_dkd, DKD_CASES, DKD_MUTATIONS), "dist": (check_dist, DIST_CASES, DIST_MUTATIONS),
          "logit_stand": (check_logit_stand, STAND_CASES, STAND_MUTATIONS),
          "reviewkd": (check_reviewkd, REVIEW_CASES, REVIEW_MUTATIONS)}
PARAMS = [(method, m) for method, (_, _, muts) in CHECKS.items() for m in muts]


@pytest.mark.parametrize("method, mutation", PARAMS, ids=[f"{m}-{mut[0]}" for m, mut in PARAMS])
def test_golden_check_fails_when_a_term_changes(method, mutation, monkeypatch):
    check, cases, _ = CHECKS[method]
    name, patch, applies = mutation
    applicable = [c for c in cases if applies(c)]
    assert applicable, f"mutation {name} applies to no golden case of {method}"
    with monkeypatch.context() as mp:
        patch(mp)
        for case in applicable:
            with pytest.raises(AssertionError):
                check(case)
    check(applicable[0])  # and passes again once the implementation is restored


def test_checks_pass_unmutated():
    for check, cases, _ in CHECKS.values():
        for case in cases:
            check(case)
