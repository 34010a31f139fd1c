"""tfdistill.integrations.transformers.DistillTrainer on tiny models (issue #28): the method's terms added to the
model's own loss, accumulation scaled once, zero weights = the plain Trainer, compiled = eager, resume =
uninterrupted."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("transformers", minversion="5.0")
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.modeling_outputs import ImageClassifierOutput  # noqa: E402

import tfdistill  # noqa: E402
from tfdistill.errors import ConfigError, UnknownNameError  # noqa: E402
from tfdistill.integrations.transformers import DistillTrainer  # noqa: E402
from integ_nets import NUM_CLASSES, TinyConv, assert_differs, assert_same, params_of, tiny_data  # noqa: E402


class HFTiny(nn.Module):
    """A Hugging Face-style classifier: forward(pixel_values, labels=None) -> ImageClassifierOutput(loss, logits)."""

    stage_names = ["net.s1", "net.s2", "net.s3"]

    def __init__(self, width=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = TinyConv(width)

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def dataset(n=16, index=False):
    x, y, idx = tiny_data(n)
    return [dict(pixel_values=x[i], labels=y[i], **({"index": idx[i]} if index else {})) for i in range(n)]


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=0.1, optim="sgd",
                lr_scheduler_type="constant", weight_decay=0.0, max_steps=2, logging_steps=1, save_strategy="no",
                report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    return TrainingArguments(**{**base, **kw})


def trained(tmp_path, method="tfd", teacher=None, plain=False, n=16, index=False, **kw):
    model = HFTiny()
    a = args(tmp_path, **kw)
    if plain:
        tr = Trainer(model=model, args=a, train_dataset=dataset(n))
    else:
        settings = kw.pop("settings", None) if "settings" in kw else None
        tr = DistillTrainer(model=model, args=a, train_dataset=dataset(n, index), method=method, teacher=teacher,
                            method_settings=settings, num_classes=NUM_CLASSES)
    tr.train()
    return tr, params_of(model)


class StopAt(TrainerCallback):
    """Stops training after step ``n`` (an interrupted run: its schedule is the whole run's)."""

    def __init__(self, n):
        self.n = n

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.n:
            control.should_training_stop = True


def _trainer(tmp_path, method="tfd", teacher=None, settings=None, n=16, index=False, resume=None, stop=None, **kw):
    model = HFTiny()
    tr = DistillTrainer(model=model, args=args(tmp_path, **kw), train_dataset=dataset(n, index), method=method,
                        teacher=teacher, method_settings=settings, num_classes=NUM_CLASSES,
                        callbacks=[StopAt(stop)] if stop else None)
    tr.train(resume_from_checkpoint=resume)
    return tr, params_of(model)


@pytest.mark.parametrize("method", ["tfd", "kd"])
def test_trains_20_steps_with_finite_decreasing_loss(tmp_path, method):
    teacher = HFTiny(8, seed=1) if method == "kd" else None
    tr, _ = _trainer(tmp_path, method, teacher, max_steps=20)
    rows = [r for r in tr.state.log_history if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    assert ("tfd_depth" in rows[0] and "tfd_width" in rows[0]) if method == "tfd" else "kd" in rows[0]
    assert "ce" in rows[0]


@pytest.mark.parametrize("method,settings", [("tfd", dict(tfd=dict(alpha=0.0, beta=0.0))),
                                             ("kd", dict(ce_weight=1.0, kd=dict(weight=0.0)))])
def test_zero_weights_give_the_plain_trainers_update(tmp_path, method, settings):
    teacher = HFTiny(8, seed=1) if method == "kd" else None
    model = HFTiny()
    Trainer(model=model, args=args(tmp_path / "p", max_steps=3), train_dataset=dataset()).train()
    _, got = _trainer(tmp_path / "d", method, teacher, settings, max_steps=3)
    assert_differs(params_of(HFTiny()), got)
    assert_same(params_of(model), got, atol=0, rtol=0)


@pytest.mark.parametrize("method,settings", [("ce", None), ("kd", None), ("tfd", dict(tfd=dict(beta=0.0)))])
def test_accumulation_over_half_batches_equals_one_full_batch(tmp_path, method, settings):
    teacher = HFTiny(8, seed=1) if method == "kd" else None
    _, full = _trainer(tmp_path / "f", method, teacher, settings, n=8, max_steps=1)
    _, acc = _trainer(tmp_path / "a", method, teacher, settings, n=8, max_steps=1, per_device_train_batch_size=4,
                      gradient_accumulation_steps=2)
    assert_differs(params_of(HFTiny()), full)
    assert_same(full, acc)


def test_compiled_equals_eager(tmp_path):
    _, eager = _trainer(tmp_path / "e", "tfd", max_steps=2)
    tr, comp = _trainer(tmp_path / "c", "tfd", max_steps=2, torch_compile=True, torch_compile_backend="aot_eager")
    assert type(tr.model_wrapped).__name__ == "OptimizedModule"  # the Trainer's call ran compiled code, tapped
    assert_same(eager, comp)


def test_a_hugging_face_vision_model_is_tapped_and_trained(tmp_path):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    model = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                          num_labels=NUM_CLASSES))
    x, y, _ = tiny_data(16)
    x = nn.functional.interpolate(x, size=16)
    data = [dict(pixel_values=x[i], labels=y[i]) for i in range(16)]
    tr = DistillTrainer(model=model, args=args(tmp_path, max_steps=3, torch_compile=True,
                                               torch_compile_backend="aot_eager"), train_dataset=data)
    assert tr.method.student_tap.names == ["convnext.encoder.stages.0", "convnext.encoder.stages.1"]
    tr.train()
    rows = [r for r in tr.state.log_history if "tfd_depth" in r]
    assert len(rows) == 3 and all(r["tfd_depth"] > 0 for r in rows)


@pytest.mark.parametrize("method", ["tfd", "pskd"])
def test_save_load_continue_gives_the_same_steps(tmp_path, method):
    kw = dict(n=8, index=method == "pskd", max_steps=6, per_device_train_batch_size=4,
              remove_unused_columns=method != "pskd")
    _, whole = _trainer(tmp_path / "w", method, **kw)
    first, _ = _trainer(tmp_path / "r", method, save_strategy="steps", save_steps=4, stop=4, **kw)
    if method == "pskd":
        assert first.method.distillers["pskd"].memory.abs().sum() > 0
    _, resumed = _trainer(tmp_path / "r", method, resume=str(tmp_path / "r" / "out" / "checkpoint-4"), **kw)
    assert_same(whole, resumed)


def test_per_epoch_hook_moves_pskd_alpha(tmp_path):
    tr, _ = _trainer(tmp_path, "pskd", n=8, index=True, max_steps=6, per_device_train_batch_size=4,
                     remove_unused_columns=False)
    assert float(tr.method.distillers["pskd"].alpha) == pytest.approx(0.8)  # epoch 2 of 3: alpha_T * 3/3


def test_extra_parameters_are_trained(tmp_path):
    tr = DistillTrainer(model=HFTiny(), args=args(tmp_path, max_steps=2), train_dataset=dataset(), method="fitnet",
                        teacher=HFTiny(8, seed=1), num_classes=NUM_CLASSES)
    reg = tr.method.distillers["fitnet"].regressor
    before = params_of(reg)
    tr.train()
    in_opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in reg.parameters())
    assert_differs(before, params_of(reg))


def test_wrong_use_is_one_line(tmp_path, monkeypatch):
    a = args(tmp_path)
    for kwargs, exc, match in [
        (dict(method="tfdd"), UnknownNameError, "tfd"),
        (dict(method="kd", teacher=HFTiny(8) if False else _Other()), ConfigError, "same classes"),
        (dict(method="tfd_ls"), ConfigError, "label smoothing"),
        (dict(method="tfd", model=_MLP()), ConfigError, "."),
        (dict(method="pskd", train_dataset=dataset(index=True)), ConfigError, "remove_unused_columns=False"),
    ]:
        kwargs.setdefault("train_dataset", dataset())
        model = kwargs.pop("model", HFTiny())
        with pytest.raises(exc, match=match) as info:
            DistillTrainer(model=model, args=a, num_classes=NUM_CLASSES, **kwargs)
        assert "\n" not in str(info.value), str(info.value)
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "tfdistill.integrations.transformers")
    with pytest.raises(ImportError, match=r"pip install 'tfdistill\[transformers\]'"):
        importlib.import_module("tfdistill.integrations.transformers")


class _Other(HFTiny):
    def __init__(self):
        super().__init__()
        self.net.fc = nn.Linear(8, 7)


class _MLP(nn.Module):
    """No feature maps for a tap to find."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))

    def forward(self, pixel_values, labels=None):
        logits = self.fc(pixel_values)
        return ImageClassifierOutput(loss=nn.functional.cross_entropy(logits, labels), logits=logits)
