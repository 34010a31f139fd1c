"""Accelerate with the plain API (issue #28; docs/integrations/accelerate.md): create_method, prepare (a real wrapper:
a dynamo backend), method.bind(prepared), accumulate, save_state/load_state with the method registered."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

accelerate = pytest.importorskip("accelerate")
from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

import tfdistill  # noqa: E402
from integ_nets import NUM_CLASSES, TinyConv, assert_differs, assert_same, params_of, tiny_data  # noqa: E402

X, Y, IDX = tiny_data(16)


def fresh_state():
    """Accelerate keeps its state process-wide (a second Accelerator ignores a new dynamo backend): every run here
    starts from a fresh one, as accelerate's own tests do."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _fresh():
    yield
    fresh_state()


def train(method="tfd", steps=2, batch=8, n=16, accum=1, backend=None, settings=None, teacher=None, plain=False,
          save=None, load=None, seed=0, epochs=1, skip=0):
    fresh_state()
    acc = Accelerator(cpu=True, gradient_accumulation_steps=accum, dynamo_backend=backend or "no")
    torch.manual_seed(seed)
    model = TinyConv()
    kw = dict(num_train=n, epochs=epochs) if method == "pskd" else {}
    m = None if plain else tfdistill.create_method(method, model, teacher=teacher, example=X[:2],
                                                    num_classes=NUM_CLASSES, **kw, **(settings or {}))
    opt = torch.optim.SGD(m.trainable_parameters() if m else model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(X[:n], Y[:n], IDX[:n]), batch_size=batch, shuffle=False)
    wrapped, opt, loader = acc.prepare(model, opt, loader)
    if m is not None:
        m.bind(wrapped)  # the student's forward passes go through the prepared (here: compiled) model
        acc.register_for_checkpointing(m.distillers)  # the method's state in save_state / load_state
    if load:
        acc.load_state(load)
    losses, done = [], 0
    for epoch in range(epochs):
        if m is not None:
            m.on_epoch_start(epoch)
        for x, y, idx in loader:
            if done < skip:
                done += 1
                continue
            with acc.accumulate(wrapped):
                if plain:
                    loss = F.cross_entropy(wrapped(x), y)
                else:
                    _, terms = m(x, y, idx)
                    loss = sum(terms.values())
                acc.backward(loss)
                opt.step()
                opt.zero_grad()
            losses.append(float(loss.detach()))
            done += 1
            if done == steps * accum:
                break
        if save and epoch == 0:
            acc.save_state(save)
    return losses, params_of(model), wrapped


@pytest.mark.parametrize("method", ["tfd", "kd"])
def test_trains_20_steps_with_finite_decreasing_loss(method):
    losses, _, _ = train(method, steps=20, epochs=10, teacher=TinyConv(8) if method == "kd" else None)
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("method,settings", [("tfd", dict(tfd=dict(alpha=0.0, beta=0.0))),
                                             ("kd", dict(ce_weight=1.0, kd=dict(weight=0.0)))])
def test_zero_weights_give_the_plain_update(method, settings):
    _, plain, _ = train(plain=True, steps=2)
    _, got, _ = train(method, steps=2, settings=settings, teacher=TinyConv(8) if method == "kd" else None)
    assert_differs(params_of(TinyConv()), got)
    assert_same(plain, got, atol=0, rtol=0)


@pytest.mark.parametrize("method,settings", [("ce", None), ("kd", None), ("tfd", dict(tfd=dict(beta=0.0)))])
def test_accumulation_over_half_batches_equals_one_full_batch(method, settings):
    teacher = TinyConv(8) if method == "kd" else None
    _, full, _ = train(method, steps=1, n=8, settings=settings, teacher=teacher)
    _, acc, _ = train(method, steps=1, n=8, batch=4, accum=2, settings=settings, teacher=teacher)
    assert_same(full, acc)


def test_prepared_with_a_dynamo_backend_equals_eager():
    _, eager, _ = train("tfd", steps=2)
    _, comp, wrapped = train("tfd", steps=2, backend="aot_eager")
    assert type(wrapped).__name__ == "OptimizedModule"
    assert_same(eager, comp)


def test_save_state_load_state_continue_with_pskd(tmp_path):
    kw = dict(n=8, batch=4, epochs=2, steps=4)
    _, whole, _ = train("pskd", **kw)
    train("pskd", save=tmp_path / "ckpt", **{**kw, "steps": 2})
    _, resumed, _ = train("pskd", load=tmp_path / "ckpt", skip=2, seed=5, **kw)
    assert_same(whole, resumed)
