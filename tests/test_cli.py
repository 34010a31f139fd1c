"""End-to-end CLI runs on tiny data, and one clear line for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, run_cli
from tfdistill.cli import main


def one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("tfdistill: error: ")
    for n in needles:
        assert n in err, (n, err)
    return err


def test_train_eval_models_methods_end_to_end(tmp_path):
    out = tmp_path / "runs"
    r = run_cli(["train", *TINY, f"out_dir={out}", "name=cli", "method.name=tfd_ls"])
    assert r.returncode == 0, r.stderr
    assert "best top-1" in r.stdout and "epoch   1/1" in r.stdout
    ck = out / "cli" / "best.pt"
    assert ck.is_file()
    r = run_cli(["eval", str(ck), "--json"])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "cli" / "summary.json").read_text())
    assert res["top1"] == pytest.approx(summary["best_top1"])
    assert res["count"] == 64


def test_models_methods_recipes_help(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet32" in out and "wrn_40_1" in out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "tfd" in out and "tfd_ls" in out and "ce" in out
    assert main(["recipes"]) == 0
    assert "demo" in capsys.readouterr().out
    for cmd in ([], ["train"], ["eval"], ["demo"], ["models"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0


def test_yaml_recipe_with_overrides(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("epochs: 1\nmodel: {name: resnet8}\nmethod: {name: tfd, tfd: {alpha: 0.01}}\n")
    assert main(["train", str(cfg), *TINY, f"out_dir={tmp_path}", "name=y"]) == 0
    stored = (tmp_path / "y" / "config.yaml").read_text()
    assert "alpha: 0.01" in stored and "name: synthetic" in stored


@pytest.mark.parametrize("argv, needles", [
    (["model.name=resnet33"], ["unknown model 'resnet33'", "resnet32"]),
    (["method.name=tdf"], ["unknown method 'tdf'", "tfd"]),
    (["data.name=cifar11"], ["unknown dataset 'cifar11'", "cifar10"]),
    (["optim.lr=fast"], ["optim.lr"]),
    (["optim.lrr=0.1"], ["unknown config key 'optim.lrr'"]),
    (["method.name=tfd", "method.tfd.alpah=1"], ["unknown config key 'method.tfd.alpah'"]),
    (["engine.precision=fp8"], ["engine.precision", "bf16"]),
    (["oops"], ["bad override 'oops'"]),
    (["method.name=tfd", "model.taps=[layer3]"], ["at least two", "model.taps"]),
    (["model.taps=[layer9]", "method.name=tfd"], ["unknown module 'layer9'"]),
    (["method.name=kd"], ["needs a teacher", "teacher.model"]),
])
def test_bad_input_one_line(capsys, tmp_path, argv, needles):
    one_line_error(capsys, ["train", *TINY, f"out_dir={tmp_path}", *argv], *needles)
    assert not any(tmp_path.rglob("summary.json"))


def test_bad_yaml_and_missing_files(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n  model: {")
    one_line_error(capsys, ["train", str(bad)], "malformed YAML", "bad.yaml")
    one_line_error(capsys, ["train", str(tmp_path / "nope.yaml")], "config file not found")
    one_line_error(capsys, ["train", *TINY, "data.name=cifar100", f"data.root={tmp_path}"],
                   "data.download=true")
    one_line_error(capsys, ["eval", str(tmp_path / "missing.pt")], "checkpoint not found")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    one_line_error(capsys, ["eval", str(corrupt)], "unreadable checkpoint", "not a torch checkpoint")


def test_mismatched_checkpoints(capsys, tmp_path):
    assert main(["train", *TINY, f"out_dir={tmp_path}", "name=t"]) == 0
    ck = str(tmp_path / "t" / "best.pt")
    capsys.readouterr()
    # a teacher checkpoint of another architecture / another number of classes
    one_line_error(capsys, ["train", *TINY, f"out_dir={tmp_path}", "name=s", "method.name=kd",
                            "teacher.model=resnet20", f"teacher.checkpoint={ck}"], "does not match", "resnet8")
    one_line_error(capsys, ["train", *TINY, f"out_dir={tmp_path}", "name=s2", "method.name=kd",
                            "teacher.model=resnet8", f"teacher.checkpoint={ck}", "data.synthetic_classes=5"],
                   "10 classes", "5")
    one_line_error(capsys, ["eval", ck, "data.synthetic_classes=5"], "10 classes")
    # resuming with a different config
    one_line_error(capsys, ["train", *TINY, f"out_dir={tmp_path}", "name=t", "optim.lr=0.2", "--resume"],
                   "cannot resume", "optim.lr")
    one_line_error(capsys, ["train", *TINY, f"out_dir={tmp_path}", "name=t"], "already exists")


def test_debug_shows_traceback(tmp_path):
    r = run_cli(["--debug", "train", *TINY, f"out_dir={tmp_path}", "model.name=resnet33"])
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = run_cli(["train", *TINY, f"out_dir={tmp_path}", "model.name=resnet33"])
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_more_bad_input_is_one_line_before_anything_is_written(capsys, tmp_path):
    out = f"out_dir={tmp_path}"
    one_line_error(capsys, ["train", *TINY, out, "method.label_smoothing=1.5"], "method.label_smoothing", "[0, 1)")
    one_line_error(capsys, ["train", *TINY, out, "data.image_size=-4"], "data.image_size", ">= 0")
    one_line_error(capsys, ["train", *TINY, out, "data.train_subset=-5"], "data.train_subset")
    one_line_error(capsys, ["train", *TINY, out, "name=../escape"], "'name'", "out_dir")
    one_line_error(capsys, ["train", *TINY, out, "seeds=[]"], "seeds=[] is empty")
    one_line_error(capsys, ["train", *TINY, out, "method.tfd.alpha=0.1"], "'tfd' component", "method.name=tfd")
    one_line_error(capsys, ["train", "reproduce/table1"], "sweep spec", "tfdistill sweep")
    one_line_error(capsys, ["demo", "--epochs", "0"], "--epochs 0")
    assert not any(tmp_path.iterdir())  # none of them left a run directory
    # a method option without a method name applies to the default method (ce), as README says
    assert main(["train", *TINY, out, "name=ls", "method.label_smoothing=0.1"]) == 0
    assert "label_smoothing: 0.1" in (tmp_path / "ls" / "config.yaml").read_text()


def test_recipes_and_sweep_specs_are_listed_apart(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    train_part, sweep_part = out.split("# sweep specs")
    assert "cifar100/paper" in train_part and "reproduce/table1" not in train_part
    assert "reproduce/table1" in sweep_part


def test_sweep_gpus_without_cuda_is_refused(capsys, tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"name": "g", "recipe": "demo", "out_dir": str(tmp_path), "seeds": [0],
                                "models": ["resnet8"], "grid": {"methods": ["ce"]}}))
    one_line_error(capsys, ["sweep", str(spec), "--gpus", "0,1"], "--gpus 0,1", "no CUDA device")
    assert not (tmp_path / "g" / "resnet8_ce_s0").exists()


def test_demo_output_says_one_seed_and_machine_dependent(capsys, tmp_path):
    """The demo's own words (console and results.md): one seed, no verdict on TFD, numbers differ across machines."""
    from tfdistill.demo import run_demo

    out = run_demo(out_dir=tmp_path, epochs=1, extra=[t for t in TINY if not t.startswith("epochs=")]
                   + ["engine.device=cpu", "engine.tensorboard=false"])
    printed = capsys.readouterr().out
    written = (out["dir"] / "results.md").read_text()
    for text in (printed, written):
        assert "One seed" in text and "not evidence for or against TFD" in text
        assert "differ from machine to machine" in text


def test_demo_threads_leave_busy_cores_alone():
    from tfdistill.demo import demo_threads

    assert demo_threads(cores=2, load=0.1, current=2) == 2   # idle: every core
    assert demo_threads(cores=2, load=1.2, current=2) == 1   # one core busy (a background job): one thread
    assert demo_threads(cores=2, load=7.0, current=2) == 1   # a loaded machine: still one
    assert demo_threads(cores=16, load=3.0, current=8) == 8  # never more than torch's setting


def test_broken_pipe_is_quiet(tmp_path):
    """`tfdistill sweep SPEC --dry-run | head -3`: the reader goes away; no traceback, exit 141 (as for SIGPIPE)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([sys.executable, "-m", "tfdistill", "sweep", "reproduce/table1", "--dry-run",
                          "--out-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader is gone before the first line is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err
