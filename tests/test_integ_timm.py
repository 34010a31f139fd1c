"""tfdistill.integrations.timm.DistillTask (issue #28): timm's task API with any method -- the task's criterion plus
the method's terms, zero weights = ClassificationTask, accumulation, compile() keeps the taps, task state round trip."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

pytest.importorskip("timm", minversion="1.0.20")
task_mod = pytest.importorskip("timm.task")

from tfdistill.errors import ConfigError, UnknownNameError  # noqa: E402
from tfdistill.integrations.timm import DistillTask  # noqa: E402
from integ_nets import NUM_CLASSES, TinyConv, assert_differs, assert_same, params_of, tiny_data  # noqa: E402

X, Y, IDX = tiny_data(16)


def student(seed=0):
    torch.manual_seed(seed)
    return TinyConv()


def task_for(method="tfd", model=None, **kw):
    model = model if model is not None else student()
    return DistillTask(model, method, example=X[:2], num_classes=NUM_CLASSES, verbose=False, **kw)


def run(task, steps=2, batch=8, accum=1, start=0, opt=None, index=False):
    """timm's train-loop shape: loss / accum per micro-batch, one optimizer step per ``accum`` micro-batches."""
    if opt is None:
        params = list(task.get_trainable_module().parameters())
        extra = task.extra_parameters() if isinstance(task, DistillTask) else []
        opt = torch.optim.SGD(params + extra, lr=0.1)
    task.train()
    losses = []
    for step in range(start, start + steps):
        if isinstance(task, DistillTask):
            task.set_epoch(step // 2)  # two steps an epoch
        rows = torch.arange(step * batch, (step + 1) * batch) % len(X)
        opt.zero_grad()
        for part in rows.chunk(accum):
            kw = {"index": IDX[part]} if index else {}
            out = task(X[part], Y[part], **kw)
            (out["loss"] / accum).backward()
        losses.append(float(out["loss"].detach()))
        opt.step()
    return losses, opt


@pytest.mark.parametrize("method", ["tfd", "kd"])
def test_trains_20_steps_with_finite_decreasing_loss(method):
    task = task_for(method, teacher=TinyConv(8) if method == "kd" else None)
    losses, _ = run(task, steps=20)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    out = task(X[:4], Y[:4])
    assert {"loss", "output", "ce"} <= set(out) and (("tfd_depth" in out) if method == "tfd" else ("kd" in out))


def test_teacher_by_timm_name():
    pytest.importorskip("timm")
    x = torch.randn(2, 3, 32, 32)
    task = DistillTask(student(), "kd", teacher="test_resnet", example=x, num_classes=NUM_CLASSES, verbose=False)
    assert type(task.method.teacher).__name__ == "ResNet"
    assert torch.isfinite(task(x, torch.tensor([0, 1]))["loss"])


@pytest.mark.parametrize("method,settings", [("tfd", dict(tfd=dict(alpha=0.0, beta=0.0))),
                                             ("kd", dict(ce_weight=1.0, kd=dict(weight=0.0)))])
def test_zero_weights_give_the_plain_tasks_update(method, settings):
    plain = student()
    run(task_mod.ClassificationTask(plain, verbose=False), steps=3)
    got = student()
    run(task_for(method, got, teacher=TinyConv(8) if method == "kd" else None, method_settings=settings), steps=3)
    assert_differs(params_of(student()), params_of(got))
    assert_same(params_of(plain), params_of(got), atol=0, rtol=0)


@pytest.mark.parametrize("method,settings", [("ce", None), ("kd", None), ("tfd", dict(tfd=dict(beta=0.0)))])
def test_accumulation_over_half_batches_equals_one_full_batch(method, settings):
    teacher = TinyConv(8) if method == "kd" else None
    full, acc = student(), student()
    run(task_for(method, full, teacher=teacher, method_settings=settings), steps=1)
    run(task_for(method, acc, teacher=teacher, method_settings=settings), steps=1, accum=2)
    assert_differs(params_of(student()), params_of(full))
    assert_same(params_of(full), params_of(acc))


def test_compile_keeps_the_taps_and_equals_eager():
    eager, comp = student(), student()
    run(task_for("tfd", eager), steps=2)
    task = task_for("tfd", comp)
    task.compile(backend="aot_eager")
    assert type(task.trainable_module).__name__ == "OptimizedModule"
    run(task, steps=2)
    assert_same(params_of(eager), params_of(comp))


@pytest.mark.parametrize("method", ["tfd", "pskd", "fitnet"])
def test_task_state_save_load_continue(method):
    kw = dict(num_train=16, epochs=3) if method == "pskd" else {}
    if method == "fitnet":
        kw["teacher"] = TinyConv(8)
    if method == "tfd":
        kw["method_settings"] = dict(tfd=dict(ramp_epochs=3))
    index = method == "pskd"
    whole = task_for(method, student(), **kw)
    run(whole, steps=4, index=index)
    first = task_for(method, student(), **kw)
    _, opt = run(first, steps=2, index=index)
    saved = {**first.get_checkpoint_state(), "opt": opt.state_dict()}
    if method == "pskd":
        assert saved["task_state"]["tfdistill_method"]["pskd.memory"].abs().sum() > 0
    second = task_for(method, student(seed=3), **kw)
    second.load_checkpoint_state(saved["state_dict"], saved.get("task_state"))
    opt2 = torch.optim.SGD(list(second.get_trainable_module().parameters()) + second.extra_parameters(), lr=0.1)
    opt2.load_state_dict(saved["opt"])
    run(second, steps=2, start=2, opt=opt2, index=index)
    assert_same(params_of(whole.trainable_module), params_of(second.trainable_module))
    assert_same(whole.method.component_state_dict(), second.method.component_state_dict())


def test_wrong_use_is_one_line(monkeypatch):
    for kwargs, exc, match in [
        (dict(method="tfdd"), UnknownNameError, "tfd"),
        (dict(method="kd", teacher=TinyConv(num_classes=7)), ConfigError, "same classes"),
        (dict(method="kd", teacher="no_such_net"), ConfigError, "unknown timm model"),
        (dict(method="pskd"), ConfigError, "needs num_train="),
    ]:
        with pytest.raises(exc, match=match) as info:
            task_for(**kwargs)
        assert "\n" not in str(info.value), str(info.value)
    task = task_for("fitnet", teacher=TinyConv(8))
    with pytest.raises(ConfigError, match="would not average"):
        task.prepare_distributed()
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.delitem(sys.modules, "tfdistill.integrations.timm")
    with pytest.raises(ImportError, match=r"needs timm>=1.0.31: pip install 'timm>=1.0.31'"):
        importlib.import_module("tfdistill.integrations.timm")
