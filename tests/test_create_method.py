"""tfdistill.create_method: any registered method as a module for someone else's loop -- the Method the engine
trains, its needs asked by name, its extra parameters, state and per-epoch hooks (issue #28, item 3)."""

from __future__ import annotations

import pytest
import torch

import tfdistill
from tfdistill.errors import ConfigError, TfdError, UnknownNameError
from tfdistill.methods import Method, build_method, list_methods, method_schema, method_uses
from tfdistill.methods.create import method_needs
from integ_nets import NUM_CLASSES, TinyConv, assert_same, tiny_data

X, Y, IDX = tiny_data(16)


def make(name, seed=0, teacher=None, **settings):
    torch.manual_seed(seed)
    student = TinyConv()
    if teacher is None and method_uses(name).teacher:
        teacher = TinyConv(8)
    return tfdistill.create_method(name, student, teacher=teacher, example=X[:2], num_classes=NUM_CLASSES,
                                   num_train=16, epochs=4, **settings), student


@pytest.mark.parametrize("name", list_methods())
def test_every_method_steps_or_refuses_in_one_line(name):
    settings = {"crd": dict(nce_k=4)} if "crd" in name and "crd" in method_schema(name)().__dataclass_fields__ else {}
    try:
        m, _ = make(name, **settings)
    except TfdError as exc:  # e.g. cskd (paired batches), fsp / tfkd_self (teacher of another shape than here)
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(m, Method)
    logits, terms = m(X, Y, IDX)
    assert logits.shape == (16, NUM_CLASSES) and terms
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()


def test_same_method_as_the_engine_builds():
    m, student = make("tfd+kd", tfd=dict(alpha=0.01), ce_weight=0.5)
    p = method_schema("tfd+kd")()
    p.tfd.alpha, p.ce_weight = 0.01, 0.5
    torch.manual_seed(0)
    twin_s, twin_t = TinyConv(), TinyConv(8)
    ref = build_method(twin_s, p, example=X[:2], num_classes=NUM_CLASSES, num_train=16, epochs=4, teacher=twin_t)
    ref.on_epoch_start(0)
    (_, a), (_, b) = m(X, Y), ref(X, Y)
    assert a.keys() == b.keys() == {"ce", "kd", "tfd_depth", "tfd_width"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_capture_and_terms_from_give_the_forward_terms_without_ce():
    m, student = make("tfd+kd")
    _, terms = m(X, Y)
    with m.capture() as cap:
        logits = student(X)  # the caller's own forward pass
    got = m.terms_from(cap, logits, Y, images=X)
    assert set(got) == set(terms) - {"ce"}
    for k in got:
        torch.testing.assert_close(got[k], terms[k])
    with pytest.raises(ConfigError, match="saw no features of the student"):
        m.terms_from(tfdistill.methods.Captured(), student(X), Y, images=X)


def test_needs_are_named():
    assert method_needs("pskd") == ("num_train", "epochs", "index")
    assert method_needs("crd") == ("num_train", "index") and method_needs("tfd") == ()
    with pytest.raises(ConfigError, match=r"needs num_train= .* and epochs= .*; and each sample's dataset index"):
        tfdistill.create_method("pskd", TinyConv(), example=X[:2], num_classes=NUM_CLASSES)
    with pytest.raises(ConfigError, match="paired batches"):
        tfdistill.create_method("cskd", TinyConv(), example=X[:2], num_classes=NUM_CLASSES)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(name="tfdd"), UnknownNameError, "tfd"),
    (dict(name="tfd", tfd=dict(alpah=1.0)), ConfigError, "tfd has no setting.*alpha"),
    (dict(name="tfd", wieght=1.0), ConfigError, "no setting.*ce_weight"),
    (dict(name="kd", teacher=TinyConv(num_classes=7)), ConfigError, r"logits of shape \(2, 7\).*same classes"),
    (dict(name="kd"), ConfigError, "needs a teacher"),
    (dict(name="tfd", example=[1, 2]), ConfigError, "example="),
])
def test_wrong_use_is_one_line(kwargs, exc, match):
    name = kwargs.pop("name")
    kwargs.setdefault("example", X[:2])
    with pytest.raises(exc, match=match) as info:
        tfdistill.create_method(name, TinyConv(), num_classes=NUM_CLASSES, **kwargs)
    assert "\n" not in str(info.value)


def test_extra_parameters_reach_the_optimizer():
    m, student = make("fitnet")
    reg = list(m.distillers["fitnet"].regressor.parameters())
    ids = {id(p) for p in m.trainable_parameters()}
    assert reg and {id(p) for p in reg} <= ids and {id(p) for p in student.parameters()} <= ids
    assert {id(p) for p in m.extra_parameters()} == {id(p) for p in reg}


def test_per_epoch_hooks_move_tfd_ramp_and_pskd_alpha():
    m, _ = make("tfd", tfd=dict(ramp_epochs=4))
    w = m.distillers["tfd"].weights
    seen = []
    for epoch in range(5):
        m.on_epoch_start(epoch)
        seen.append(float(w[0]) / 5e-3)
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    p, _ = make("pskd")
    alphas = []
    for epoch in range(4):
        p.on_epoch_start(epoch)
        alphas.append(float(p.distillers["pskd"].alpha))
    assert alphas == pytest.approx([0.0, 0.4, 0.6, 0.8])  # alpha_T (t + 1) / T with T = 4 epochs; 0 in epoch 0


@pytest.mark.parametrize("name", ["pskd", "fitnet", "crd"])
def test_state_round_trips(name):
    settings = {"crd": dict(nce_k=4)} if name == "crd" else {}
    m, _ = make(name, **settings)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    for _ in range(2):
        torch.manual_seed(1)
        opt.zero_grad()
        sum(m(X, Y, IDX)[1].values()).backward()
        opt.step()
    m.on_epoch_start(1)
    state = m.state_dict()
    if name == "pskd":
        assert state["distillers.pskd.memory"].abs().sum() > 0
    twin, _ = make(name, seed=5, teacher=m.teacher, **settings)  # the teacher: frozen, not the method's state
    twin.load_state_dict(state)
    twin.on_epoch_start(1)
    torch.manual_seed(2)
    a = m(X, Y, IDX)[1]
    torch.manual_seed(2)
    b = twin(X, Y, IDX)[1]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
