"""The training engine: run directory contract, resume after SIGKILL, divergence, schedules, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY
from tfdistill.config import load_config
from tfdistill.engine import load_checkpoint, train
from tfdistill.engine.checkpoint import save_atomic
from tfdistill.engine.schedule import LRSchedule
from tfdistill.errors import CheckpointError, DivergenceError, RunDirError


def test_run_directory_contract(tiny, tmp_path):
    cfg = load_config(None, [*tiny, "method.name=tfd", "epochs=2", "name=r"])
    res = train(cfg, echo=lambda s: None)
    run = tmp_path / "runs" / "r"
    assert res.run_dir == run
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt", "train.log"):
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("lr", "loss", "terms", "train_acc", "test_top1", "test_top5", "epoch_seconds", "images_per_sec"):
        assert key in rows[0], key
    assert set(rows[0]["terms"]) == {"ce", "tfd_depth", "tfd_width"}
    total = sum(rows[0]["terms"].values())
    assert rows[0]["loss"] == pytest.approx(total, rel=1e-6)
    s = json.loads((run / "summary.json").read_text())
    for key in ("best_top1", "best_epoch", "last_top1", "last_top5", "wall_seconds", "params", "device", "torch",
                "git_commit", "seed"):
        assert key in s, key
    assert s["best_top1"] == max(r["test_top1"] for r in rows)
    assert s["last_top1"] == rows[-1]["test_top1"]
    assert s["params"] == sum(p.numel() for p in __import__("tfdistill.models", fromlist=["x"]).create_model("resnet8", 10).parameters())
    # checkpoints load with weights_only=True and hold everything needed to resume
    ck = torch.load(run / "last.pt", weights_only=True)
    for key in ("model", "method", "optimizer", "sched", "scaler", "epoch", "best_top1", "rng", "config_yaml"):
        assert key in ck, key
    assert ck["epoch"] == 2
    assert "optimizer" not in torch.load(run / "best.pt", weights_only=True)


def test_existing_run_dir_is_never_overwritten(tiny, tmp_path):
    cfg = load_config(None, [*tiny, "name=r"])
    train(cfg, echo=lambda s: None)
    before = (tmp_path / "runs" / "r" / "last.pt").read_bytes()
    with pytest.raises(RunDirError, match="already exists.*--resume.*--overwrite"):
        train(cfg, echo=lambda s: None)
    assert (tmp_path / "runs" / "r" / "last.pt").read_bytes() == before
    train(cfg, overwrite=True, echo=lambda s: None)
    # a folder that is not a run directory is never deleted
    other = tmp_path / "runs" / "notarun"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not a tfdistill run directory"):
        train(load_config(None, [*tiny, "name=notarun"]), overwrite=True, echo=lambda s: None)
    assert (other / "precious.txt").read_text() == "keep me"


def test_bad_input_found_while_building_leaves_no_folder_and_keeps_the_old_run(tiny, tmp_path):
    """The run directory is created -- or, with --overwrite, replaced -- only after the whole run was built: an
    error found while building (here: a class count the data does not have, a teacher method without a teacher)
    neither leaves an empty folder behind nor deletes the run that --overwrite would have replaced."""
    from tfdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="num_classes"):
        train(load_config(None, [*tiny, "name=fresh", "model.num_classes=7"]), echo=lambda s: None)
    assert not (tmp_path / "runs" / "fresh").exists()
    cfg = load_config(None, [*tiny, "name=r"])
    train(cfg, echo=lambda s: None)
    before = {f.name: f.read_bytes() for f in (tmp_path / "runs" / "r").iterdir() if f.is_file()}
    for bad in (["model.num_classes=7"], ["method.name=kd"]):
        with pytest.raises(ConfigError):
            train(load_config(None, [*tiny, "name=r", *bad]), overwrite=True, echo=lambda s: None)
        assert {f.name: f.read_bytes() for f in (tmp_path / "runs" / "r").iterdir() if f.is_file()} == before
    # notices issued while building (before the folder exists) still reach the new run's train.log
    train(load_config(None, [*tiny, "name=r", "engine.cuda_graphs=true"]), overwrite=True, echo=lambda s: None)
    log = (tmp_path / "runs" / "r" / "train.log").read_text()
    assert log.index("needs a CUDA device") < log.index("epoch   1/1")


def test_resume_of_a_finished_run_is_a_noop_and_config_must_match(tiny, tmp_path):
    cfg = load_config(None, [*tiny, "name=r", "epochs=2"])
    first = train(cfg, echo=lambda s: None).summary
    again = train(cfg, resume=True, echo=lambda s: None).summary
    assert again["best_top1"] == first["best_top1"]
    changed = load_config(None, [*tiny, "name=r", "epochs=2", "optim.lr=0.1"])
    with pytest.raises(CheckpointError, match="optim.lr"):
        train(changed, resume=True, echo=lambda s: None)


def _train_cmd(out, epochs):
    return [sys.executable, "-m", "tfdistill", "train", *TINY, f"out_dir={out}", "name=r", f"epochs={epochs}",
            "data.synthetic_train=256", "method.name=tfd", "model.dropout=0.2"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return env


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """Kill a run with SIGKILL mid-training, resume it, and compare with an uninterrupted run."""
    epochs = 6
    ref = subprocess.run(_train_cmd(tmp_path / "a", epochs), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen(_train_cmd(tmp_path / "b", epochs), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "b" / "r" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + (proc.stderr.read() or "")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "r" / "summary.json").exists()
    done = load_checkpoint(tmp_path / "b" / "r" / "last.pt")["epoch"]
    assert 1 <= done < epochs

    res = subprocess.run([*_train_cmd(tmp_path / "b", epochs), "--resume"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a = load_checkpoint(tmp_path / "a" / "r" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "r" / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))  # no duplicated epochs after the resume
    ra = [json.loads(x) for x in (tmp_path / "a" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_top1"] for r in rows] == [r["test_top1"] for r in ra]


def test_nan_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny, tmp_path):
    cfg = load_config(None, [*tiny, "name=r", "epochs=1"])
    train(cfg, echo=lambda s: None)
    good = (tmp_path / "runs" / "r" / "last.pt").read_bytes()
    bad = load_config(None, [*tiny, "name=r2", "optim.lr=1e12", "epochs=3"])
    with pytest.raises(DivergenceError, match="NaN/inf in epoch 1"):
        train(bad, echo=lambda s: None)
    assert not (tmp_path / "runs" / "r2" / "summary.json").exists()
    assert not (tmp_path / "runs" / "r2" / "last.pt").exists()
    assert (tmp_path / "runs" / "r" / "last.pt").read_bytes() == good


def test_atomic_save_leaves_no_partial_file(tmp_path):
    path = tmp_path / "x.pt"
    save_atomic({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        save_atomic({"a": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_corrupt_checkpoint_error(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable checkpoint .*bad.pt: a text file"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("name, expect", [
    ("multistep", {0: 1.0, 149 * 10: 1.0, 150 * 10: 0.1, 180 * 10: 0.01, 210 * 10 + 5: 0.001}),
    ("constant", {0: 1.0, 2399: 1.0}),
])
def test_schedules(name, expect):
    cfg = load_config(None, [f"schedule.name={name}"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    s = LRSchedule(opt, 0.05, epochs=240, steps_per_epoch=10, schedule=cfg.schedule)
    for step, factor in expect.items():
        assert s.lr(step) == pytest.approx(0.05 * factor)


def test_cosine_and_warmup():
    cfg = load_config(None, ["schedule.name=cosine", "schedule.warmup_epochs=2", "schedule.min_lr=0.001"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    s = LRSchedule(opt, 0.1, epochs=10, steps_per_epoch=5, schedule=cfg.schedule)
    assert s.lr(0) == pytest.approx(0.1 * 0.1 * (0.5 * (1 + 1) * (1 - 0.01) + 0.01))
    assert s.lr(25) == pytest.approx(0.001 + (0.1 - 0.001) * 0.5)
    assert s.lr(50) == pytest.approx(0.001)
    s.step_count = 3
    s.apply()
    assert opt.param_groups[0]["lr"] == pytest.approx(s.lr(3))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last(tiny, tmp_path, precision):
    cfg = load_config(None, [*tiny, "method.name=tfd", f"engine.precision={precision}", "engine.channels_last=true",
                             "name=r", "optim.nesterov=true", "schedule.warmup_epochs=1"])
    s = train(cfg, echo=lambda s: None).summary
    assert s["precision"] == precision and s["last_top1"] is not None
    ck = load_checkpoint(tmp_path / "runs" / "r" / "last.pt")
    assert ck["scaler"] is not None
    rows = [json.loads(x) for x in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(v == v for v in rows[0]["terms"].values())  # finite, not NaN


def test_tensorboard_events(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    train(load_config(None, [*tiny, "name=r", "engine.tensorboard=true"]), echo=lambda s: None)
    assert any((tmp_path / "runs" / "r" / "tb").glob("events.out.tfevents.*"))


def test_rng_state_keeps_only_the_training_devices_cuda_generator(monkeypatch):
    """Checkpoints hold the CUDA generator of the training device only (a run saved on an 8-GPU node resumes on a
    1-GPU node); older checkpoints with every GPU's state restore the entry of the training device's index."""
    from tfdistill.engine.checkpoint import rng_state, set_rng_state

    assert set(rng_state(torch.device("cpu"))) == {"torch", "python"}
    saved, restored = {}, []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved.setdefault("s", torch.tensor([int(device.index)])))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    dev = torch.device("cuda", 1)
    state = rng_state(dev)
    assert torch.equal(state["cuda_device"], torch.tensor([1]))
    set_rng_state(state, torch.device("cuda", 0))  # resumed on another GPU: the saved stream continues there
    assert restored == [(1, torch.device("cuda", 0))]
    legacy = {"torch": state["torch"], "python": state["python"], "cuda": [torch.tensor([10]), torch.tensor([11])]}
    set_rng_state(legacy, torch.device("cuda", 1))
    set_rng_state(legacy, torch.device("cuda", 5))  # fewer saved GPUs than this index: the last one
    assert restored[1:] == [(11, torch.device("cuda", 1)), (11, torch.device("cuda", 5))]
    set_rng_state(legacy, torch.device("cpu"))  # a CPU run ignores CUDA states
    assert len(restored) == 3


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tiny, tmp_path, monkeypatch):
    """--overwrite moves the old run aside and deletes it only after the new run's first checkpoint; a new run that
    stops before (a crash, Ctrl-C, a NaN in epoch 1) puts the old one back."""
    from tfdistill.engine import Group

    cfg = load_config(None, [*tiny, "name=r"])
    train(cfg, echo=lambda s: None)
    run = tmp_path / "runs" / "r"
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}

    def crash(self, team, where, desc):
        raise RuntimeError("CUDA out of memory (simulated)")

    real = Group._epoch
    monkeypatch.setattr(Group, "_epoch", crash)
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="out of memory"):
        train(load_config(None, [*tiny, "name=r", "optim.lr=0.2"]), overwrite=True, echo=lines.append)
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before
    assert not (tmp_path / "runs" / ".r.replaced").exists()
    assert any("is restored" in line for line in lines)
    monkeypatch.setattr(Group, "_epoch", real)
    train(load_config(None, [*tiny, "name=r", "optim.lr=0.2"]), overwrite=True, echo=lambda s: None)
    assert load_config(run / "config.yaml").optim.lr == 0.2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]  # the old run is gone now


def test_resume_of_nothing_says_so(tiny, tmp_path):
    lines: list[str] = []
    train(load_config(None, [*tiny, "name=fresh"]), resume=True, echo=lines.append)
    assert "nothing to resume" in lines[0] and "a new run starts" in lines[0]
    assert "nothing to resume" in (tmp_path / "runs" / "fresh" / "train.log").read_text()


def test_metrics_rows_carry_test_figures_only_for_evaluated_epochs(tiny, tmp_path):
    """eval_every=3, eval_last=2 over 7 epochs: evaluated after epochs 3, 6 (every 3rd), 6, 7 (the last 2) -- and
    the other rows carry no test figures (never a copy of an earlier evaluation); best/last come from evaluated
    epochs only, and the epoch line of an unevaluated epoch shows no test figure."""
    lines: list[str] = []
    cfg = load_config(None, [*tiny, "epochs=7", "engine.eval_every=3", "engine.eval_last=2", "name=r"])
    train(cfg, echo=lines.append)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["epoch"] for r in rows if "test_top1" in r]
    assert evaluated == [3, 6, 7]
    for r in rows:
        assert ("test_top5" in r) == ("test_loss" in r) == (r["epoch"] in evaluated)
    s = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert s["last_top1"] == rows[-1]["test_top1"]
    assert s["best_epoch"] in evaluated
    epoch_lines = [ln for ln in lines if ln.lstrip().startswith("epoch ")]
    assert len(epoch_lines) == 7
    assert "nan" not in epoch_lines[0] and "test " not in epoch_lines[0] and "no eval" in epoch_lines[0]
    assert "test " in epoch_lines[2]
