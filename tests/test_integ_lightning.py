"""tfdistill.integrations.lightning.DistillCallback on an unmodified LightningModule (issue #28): the method's terms
added to the step's own loss (before Lightning's accumulation scaling), zero weights = plain Lightning, compiled =
eager, checkpoint resume = uninterrupted, also for PS-KD's memory."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning", minversion="2.0")

from tfdistill.errors import ConfigError, UnknownNameError  # noqa: E402
from tfdistill.integrations.lightning import DistillCallback  # noqa: E402
from integ_nets import NUM_CLASSES, TinyConv, assert_differs, assert_same, params_of, tiny_data  # noqa: E402


class Module(L.LightningModule):
    """A plain classifier module: training_step returns the cross-entropy of self.net's logits."""

    def __init__(self, compile_backend=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = TinyConv()
        if compile_backend:
            self.net = torch.compile(self.net, backend=compile_backend)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n=16, batch=8, index=False):
    x, y, idx = tiny_data(n)
    return DataLoader(TensorDataset(x, y, idx) if index else TensorDataset(x, y), batch_size=batch, shuffle=False)


def fit(module, callbacks=(), n=16, batch=8, index=False, ckpt_path=None, **kw):
    opts = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, max_steps=2, num_sanity_val_steps=0)
    trainer = L.Trainer(callbacks=list(callbacks), **{**opts, **kw})
    trainer.fit(module, loader(n, batch, index), ckpt_path=ckpt_path)
    return trainer, params_of(module)


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("method", ["tfd", "kd"])
def test_trains_20_steps_with_finite_decreasing_loss(method):
    teacher = TinyConv(8) if method == "kd" else None
    seen = Losses()
    cb = DistillCallback(method, teacher=teacher, student="net")
    fit(Module(), [cb, seen], max_steps=20, max_epochs=20)
    assert len(seen.losses) == 20 and all(torch.isfinite(torch.tensor(seen.losses)))
    assert sum(seen.losses[-5:]) < sum(seen.losses[:5])
    _, terms = cb.method(tiny_data(4)[0], tiny_data(4)[1])
    assert ("tfd_depth" in terms) if method == "tfd" else ("kd" in terms)


@pytest.mark.parametrize("method,settings", [("tfd", dict(tfd=dict(alpha=0.0, beta=0.0))),
                                             ("kd", dict(ce_weight=1.0, kd=dict(weight=0.0)))])
def test_zero_weights_give_the_plain_update(method, settings):
    teacher = TinyConv(8) if method == "kd" else None
    _, plain = fit(Module(), max_steps=3)
    cb = DistillCallback(method, teacher=teacher, student="net", method_settings=settings)
    _, got = fit(Module(), [cb], max_steps=3)
    assert_differs(params_of(Module()), got)
    assert_same(plain, got, atol=0, rtol=0)


@pytest.mark.parametrize("method,settings", [("ce", {}), ("kd", {}), ("tfd", dict(tfd=dict(beta=0.0)))])
def test_accumulate_grad_batches_over_half_batches_equals_one_full_batch(method, settings):
    teacher = TinyConv(8) if method == "kd" else None

    def cb():
        return [DistillCallback(method, teacher=teacher, student="net", method_settings=settings)]

    _, full = fit(Module(), cb(), n=8, batch=8, max_steps=1)
    _, acc = fit(Module(), cb(), n=8, batch=4, max_steps=1, accumulate_grad_batches=2)
    assert_differs(params_of(Module()), full)
    assert_same(full, acc)


def test_compiled_equals_eager():
    _, eager = fit(Module(), [DistillCallback("tfd", student="net")], max_steps=2)
    _, comp = fit(Module("aot_eager"), [DistillCallback("tfd", student="net")], max_steps=2)
    assert_same(eager, {k.replace("_orig_mod.", ""): v for k, v in comp.items()})


@pytest.mark.parametrize("method", ["tfd", "pskd"])
def test_checkpoint_resume_gives_the_same_steps(tmp_path, method):
    index = method == "pskd"
    kw = dict(n=8, batch=4, index=index, max_epochs=3, max_steps=-1)

    def cb():
        if method == "tfd":
            return DistillCallback(method, student="net", method_settings=dict(tfd=dict(ramp_epochs=3)))
        return DistillCallback(method, student="net", epochs=3)  # the interrupted run's schedule is the whole run's

    _, whole = fit(Module(), [cb()], **kw)
    first = cb()
    trainer, _ = fit(Module(), [first], **{**kw, "max_epochs": 2})
    trainer.save_checkpoint(tmp_path / "e2.ckpt")
    if index:
        assert first.method.distillers["pskd"].memory.abs().sum() > 0
        assert torch.load(tmp_path / "e2.ckpt", weights_only=False)["callbacks"]
    second = cb()
    _, resumed = fit(Module(seed=7), [second], ckpt_path=tmp_path / "e2.ckpt", **kw)
    assert_same(whole, resumed)
    if index:
        assert float(second.method.distillers["pskd"].alpha) == pytest.approx(0.8)  # epoch 2 of 3: its hook ran


def test_wrong_use_is_one_line(monkeypatch):
    for cb, exc, match in [
        (DistillCallback("tfdd", student="net"), UnknownNameError, "tfd"),
        (DistillCallback("kd", teacher=TinyConv(num_classes=7), student="net"), ConfigError, "same classes"),
        (DistillCallback("tfd", student="nett"), ConfigError, "no student 'nett'"),
        (DistillCallback("tfd_ls", student="net"), ConfigError, "label smoothing"),
    ]:
        with pytest.raises(exc, match=match) as info:
            fit(Module(), [cb])
        assert "\n" not in str(info.value), str(info.value)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "tfdistill.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'tfdistill\[lightning\]'"):
        importlib.import_module("tfdistill.integrations.lightning")
