"""A new user's first hour (issue 14): resume semantics, run-lifecycle records, messages and conventions."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, interrupt_in_epoch
from tfdistill.cli import main

CPU = [*TINY, "engine.device=cpu"]


def one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("tfdistill: error: ")
    for n in needles:
        assert n in err, (n, err)
    return err


# ------------------------------------------------------------------------------------------- 1. --resume
def test_bare_train_asks_for_a_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["train"], "needs a recipe", "tfdistill recipes", "demo")
    assert not any(tmp_path.iterdir())


def test_resume_with_nothing_to_resume_never_starts_a_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["train", "--resume"], "--resume needs the run")
    one_line_error(capsys, ["train", *CPU, "name=a", "--resume"], "nothing to resume", "does not exist")
    one_line_error(capsys, ["train", *CPU, "name=a", "--resume", "--dry-run"], "nothing to resume")
    one_line_error(capsys, ["train", "--resume", "runs/nope"], "nothing to resume", "runs/nope")
    (tmp_path / "runs" / "cfgonly").mkdir(parents=True)
    (tmp_path / "runs" / "cfgonly" / "config.yaml").write_text("epochs: 1\n")
    one_line_error(capsys, ["train", "--resume", "runs/cfgonly"], "no last.pt")
    assert not any(tmp_path.rglob("metrics.jsonl")) and not any(tmp_path.rglob("train.log"))


def test_resume_from_run_dir_or_last_pt_uses_stored_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the first run: 2 epochs; its per-epoch log proves where the resumed run starts
    assert main(["train", *CPU, "out_dir=runs", "name=r", "epochs=1", "schedule.name=multistep",
                 "schedule.milestones=[1]"]) == 0
    capsys.readouterr()
    rd = tmp_path / "runs" / "r"
    # a changed computation is refused with the diff, nothing written
    before = (rd / "train.log").read_text()
    one_line_error(capsys, ["train", "--resume", "runs/r", "optim.lr=0.1"], "optim.lr (0.05 -> 0.1)",
                   "engine.device")
    one_line_error(capsys, ["train", "--resume", "runs/r", "name=other"], "continues in")
    one_line_error(capsys, ["train", "--resume", "runs/r/best.pt"], "only a run's last.pt")
    assert (rd / "train.log").read_text() == before
    # a finished run resumed by its directory (no recipe retyped) from another cwd: nothing to do
    monkeypatch.chdir(tmp_path / "runs")
    assert main(["train", "--resume", "r", "engine.progress=false"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_retyped_resume_still_works(capsys, tmp_path):
    argv = ["train", *CPU, f"out_dir={tmp_path}", "name=r"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    # `--resume RECIPE key=value` (the flag first): the recipe is a recipe, not a run directory
    rec = tmp_path / "r.yaml"
    rec.write_text("epochs: 1\n")
    assert main(["train", "--resume", str(rec), *CPU, f"out_dir={tmp_path}", "name=r"]) == 0
    assert "already finished" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- 3. why a run stopped
def test_a_run_that_stops_says_why_in_train_log_and_is_marked_failed(tmp_path, monkeypatch):
    from tfdistill.config import load_config
    from tfdistill.engine import train
    from tfdistill.errors import DivergenceError
    from tfdistill.report.collect import read_run

    runs = tmp_path / "runs"
    with pytest.raises(DivergenceError):  # NaN in epoch 1: no checkpoint
        train(load_config(None, [*CPU, f"out_dir={runs}", "name=nan", "optim.lr=1e12", "epochs=3"]),
              echo=lambda s: None)
    log = (runs / "nan" / "train.log").read_text().splitlines()
    assert log[-1].startswith("stopped after epoch 0/3, before the first checkpoint: DivergenceError: loss became NaN")
    assert (runs / "nan" / "FAILED").read_text().startswith("DivergenceError: loss became NaN")
    assert read_run(runs / "nan").status == "diverged"  # the report counts it, not as unfinished

    interrupt_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):  # after a checkpoint: resumable, so not marked
        train(load_config(None, [*CPU, f"out_dir={runs}", "name=int", "epochs=3"]), echo=lambda s: None)
    last = (runs / "int" / "train.log").read_text().splitlines()[-1]
    assert last.startswith("stopped after epoch 1/3: interrupted") and "--resume" in last
    assert not (runs / "int" / "FAILED").exists() and read_run(runs / "int").status == "unfinished"

    interrupt_in_epoch(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):  # before a checkpoint: nothing to keep, the same command runs again
        train(load_config(None, [*CPU, f"out_dir={runs}", "name=int1"]), echo=lambda s: None)
    assert not (runs / "int1").exists()

    from tfdistill.engine.group import Group

    def crash(self, epoch, *args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Group, "train_epoch", crash)
    with pytest.raises(RuntimeError):
        train(load_config(None, [*CPU, f"out_dir={runs}", "name=oom"]), echo=lambda s: None)
    assert "RuntimeError: CUDA out of memory (simulated)" in (runs / "oom" / "train.log").read_text()
    assert read_run(runs / "oom").status == "failed"


# ------------------------------------------------------------------------------------------- 5. bad checkpoints
def test_unusable_checkpoints_are_one_line_each(capsys, tmp_path):
    import pickle
    import warnings

    import torch

    assert main(["train", *CPU, f"out_dir={tmp_path}", "name=r"]) == 0
    capsys.readouterr()
    good = (tmp_path / "r" / "last.pt").read_bytes()
    (tmp_path / "text.pt").write_text("hello\n")
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    torch.save({"ns": __import__("argparse").Namespace(a=1)}, tmp_path / "objects.pt")
    cases = {"text.pt": "a text file", "trunc.pt": "truncated", "empty.pt": "empty", "plain.pkl": "a plain pickle",
             "objects.pt": "argparse.Namespace", "missing.pt": "not found"}
    for name, needle in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no torch warning leaks out
            err = one_line_error(capsys, ["eval", str(tmp_path / name), "--device", "cpu"], name, needle)
        assert "weights_only=False" not in err and "Weights only load failed" not in err, err


def test_eval_of_a_run_directory_uses_its_best_then_last_checkpoint(capsys, tmp_path):
    assert main(["train", *CPU, f"out_dir={tmp_path}", "name=r"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("best.pt")
    (tmp_path / "r" / "best.pt").unlink()
    assert main(["eval", str(tmp_path / "r"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("last.pt")
    (tmp_path / "r" / "last.pt").unlink()
    one_line_error(capsys, ["eval", str(tmp_path / "r"), "--device", "cpu"], "neither best.pt nor last.pt")


# ------------------------------------------------------------------------------------------- 4. config messages
@pytest.mark.parametrize("argv, needles", [
    (["optim.lrr=0.1"], ["unknown config key 'optim.lrr'; did you mean 'optim.lr'?",
                         "Valid keys in optim: name, lr, momentum, nesterov, weight_decay"]),
    (["lr=0.1"], ["did you mean 'optim.lr'?", "Valid keys at the top level:"]),
    (["method.name=tfd", "method.tfd.alpah=1"], ["did you mean 'method.tfd.alpha'?", "beta"]),
    (["data.augment=crops"], ["unknown augmentation 'crops'", "valid: ", "crop, flip"]),
    (["data.augment=[crop,flipp]"], ["unknown augmentation 'flipp'"]),
    (["schedule.milestones=150"], ["'schedule.milestones': it takes a list"]),
])
def test_config_errors_suggest_and_list(capsys, tmp_path, argv, needles):
    err = one_line_error(capsys, ["train", *CPU, f"out_dir={tmp_path}", *argv], *needles)
    assert "OmegaConf" not in err and "AnyNode" not in err and "??" not in err
    assert not any(tmp_path.iterdir())


def test_augment_given_as_a_word_is_a_list(tmp_path):
    from tfdistill.config import load_config

    assert list(load_config(None, ["data.augment=flip"]).data.augment) == ["flip"]
    assert list(load_config(None, ["data.augment=crop,flip"]).data.augment) == ["crop", "flip"]


def test_broken_yaml_names_file_line_and_column(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nmodel:\n  name: [resnet8\noptim: {lr: 0.1}\n")
    err = one_line_error(capsys, ["train", str(bad)], f"{bad}:4:")
    bad.write_text("epochs: 1\n  model: x\n")
    one_line_error(capsys, ["train", str(bad)], f"{bad}:2:8: malformed YAML: mapping values are not allowed")


def test_did_you_mean_has_one_question_mark(capsys, tmp_path):
    from tfdistill.sweep.schema import _did_you_mean

    assert _did_you_mean("Key 'gird' not in 'Spec'. Did you mean 'grid'?") == " (did you mean 'grid'?)"
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nrecipe: demo\nsedes: [0]\ngrid:\n  methods: [ce]\n")
    err = one_line_error(capsys, ["sweep", str(spec), "--dry-run"], "unknown key 'sedes' (did you mean 'seeds'?)")
    assert "??" not in err


def test_print_config_and_dry_run_write_nothing(capsys, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main(["train", "demo", "optim.lr=0.2", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.2 and printed["data"]["name"] == "digits" and "engine" in printed
    assert main(["train", *CPU, "method.name=tfd", "name=d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "runs/d: resnet8 / tfd on synthetic (128 train images, 10 classes), 1 epoch of 4 steps" in out
    assert "student taps layer1, layer2, layer3" in out
    assert not any(tmp_path.iterdir())  # nothing written
    # a dry run finds what a real start would find
    one_line_error(capsys, ["train", *CPU, "method.name=tfd", "model.taps=[layer9]", "--dry-run"], "layer9")


# ------------------------------------------------------------------------------------------- 6. absolute paths
def test_relative_paths_are_stored_absolute_so_eval_works_from_elsewhere(capsys, tmp_path, monkeypatch):
    import numpy as np
    import yaml
    from PIL import Image

    work = tmp_path / "work"
    for split in ("train", "test"):
        for c, colour in (("a", 40), ("b", 200)):
            d = work / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((32, 32, 3), colour + i, np.uint8)).save(d / f"{i}.png")
    monkeypatch.chdir(work)
    common = ["data.name=imagefolder", "data.root=imgs", "data.batch_size=4", "data.eval_batch_size=4",
              "model.name=resnet8", "epochs=1", "engine.device=cpu", "engine.progress=false", "out_dir=runs"]
    assert main(["train", *common, "name=first"]) == 0
    assert main(["train", *common, "name=second", "model.init_checkpoint=runs/first/best.pt"]) == 0
    stored = yaml.safe_load((work / "runs" / "second" / "config.yaml").read_text())
    assert stored["data"]["root"] == str(work / "imgs")
    assert stored["model"]["init_checkpoint"] == str(work / "runs" / "first" / "best.pt")
    assert stored["teacher"]["checkpoint"] == ""  # empty stays empty
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "work/runs/second", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 8
    # and resuming from elsewhere: data.root is resume-free, the stored paths are found
    assert main(["train", "--resume", "work/runs/second"]) == 0
    assert "already finished" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- 2. extending a run
def test_extending_a_finished_multistep_run_equals_training_it_longer(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    ms = ["schedule.name=multistep", "schedule.milestones=[1,5]", "out_dir=runs"]
    assert main(["train", *CPU, *ms, "name=long", "epochs=2"]) == 0
    assert main(["train", *CPU, *ms, "name=ext", "epochs=1"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "runs/ext", "epochs=2"]) == 0
    ext, long = tmp_path / "runs" / "ext", tmp_path / "runs" / "long"
    a, b = torch.load(ext / "last.pt", weights_only=True), torch.load(long / "last.pt", weights_only=True)
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    rows = [json.loads(x) for x in (ext / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["lr"] == pytest.approx(0.05 * 0.1)  # milestone 1 in force: base lr x gamma
    assert json.loads((ext / "summary.json").read_text())["epochs"] == 2
    assert json.loads((ext / "summary.e1.json").read_text())["epochs"] == 1  # the 1-epoch result is kept
    assert "epochs: 2" in (ext / "config.yaml").read_text()
    assert "extending" in (ext / "train.log").read_text()


def test_extensions_that_would_change_the_past_are_refused(capsys, tmp_path):
    assert main(["train", *CPU, f"out_dir={tmp_path}", "name=cos", "epochs=2"]) == 0  # TINY: cosine
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "cos").iterdir())
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "cos"), "epochs=3"],
                   "epochs (2 -> 3)", "cosine schedule is a function of epochs", "model.init_checkpoint=")
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "cos"), "epochs=1"], "fewer than the run's 2")
    assert sorted(p.name for p in (tmp_path / "cos").iterdir()) == before
    assert main(["train", *CPU, f"out_dir={tmp_path}", "name=ms", "schedule.name=multistep",
                 "schedule.milestones=[1]"]) == 0
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "ms"), "epochs=3", "schedule.milestones=[2]"],
                   "schedule.milestones")  # moving a milestone already passed changes the past


# ------------------------------------------------------------------------------------------- 7. option names
def test_one_option_convention_with_old_spellings_kept(capsys, tmp_path, monkeypatch):
    from tfdistill.cli import build_parser

    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--out-dir", "elsewhere", "--device", "cpu", "name=r", "--print-config"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["out_dir"] == "elsewhere" and printed["engine"]["device"] == "cpu"
    p = build_parser()
    for old, new in ((["report", "runs", "--out", "x"], ["report", "runs", "--out-dir", "x"]),):
        assert p.parse_args(old).out == p.parse_args(new).out == "x"
    for cmd in (["demo"], ["sweep", "s.yaml"], ["report", "runs"]):  # every folder option is --out-dir
        assert p.parse_args([*cmd, "--out-dir", "d"]) is not None
    for cmd in (["eval", "x.pt"], ["cam", "--checkpoint", "x.pt", "--images", "test"], ["train"]):
        assert p.parse_args([*cmd, "--device", "cpu"]).device == "cpu"


# ------------------------------------------------------------------------------------------- 8. small things
def test_epoch_line_fits_100_columns_and_terms_go_to_train_log():
    from tfdistill.engine.progress import epoch_line

    worst = {"loss": 12.3456, "train_acc": 100.0, "epoch_seconds": 1234.5, "images_per_sec": 123456.0,
             "terms": {"ce": 1.0, "tfd_depth": 0.0123, "tfd_width": 0.000456}}
    line, terms = epoch_line(240, 240, 0.000125, worst, {"top1": 100.0}, 100.0, 240, 12 * 3600 + 3456)
    assert len(line) <= 100, (len(line), line)
    assert line.startswith("epoch 240/240") and "ETA 12:57:36" in line and "test 100.00% best 100.00%@240" in line
    assert terms == "    terms tfd_depth 0.0123 tfd_width 0.000456"
    short, none = epoch_line(1, 1, 0.05, {**worst, "terms": {"ce": 1.0, "kd": 0.5}, "loss": 1.0,
                                          "epoch_seconds": 1.0}, {"top1": 50.0}, 50.0, 1, 0)
    assert none is None and short.endswith("kd 0.5") and len(short) <= 100  # room: the term is on the line


def test_run_log_plurals_notes_and_one_result_line(capsys, tmp_path):
    assert main(["train", *CPU, f"out_dir={tmp_path}", "name=r", "schedule.name=multistep",
                 "schedule.milestones=[1,3]", "method.name=tfd"]) == 0
    out = capsys.readouterr().out
    assert ", 1 epoch, device" in out and "1 epochs" not in out
    assert "note: schedule.milestones [1, 3] never take effect in a run of 1 epoch" in out
    assert out.count("best top-1") == 1  # the result once, not twice
    assert max(len(x) for x in out.splitlines() if x.startswith("epoch ")) <= 100
    log = (tmp_path / "r" / "train.log").read_text()
    assert "    terms tfd_depth " in log and "tfd_width" in log


def test_train_subset_larger_than_the_data_is_an_error(capsys, tmp_path):
    one_line_error(capsys, ["train", *CPU, f"out_dir={tmp_path}", "data.train_subset=1000"],
                   "data.train_subset=1000", "only 128 train images")
    one_line_error(capsys, ["train", *CPU, f"out_dir={tmp_path}", "data.test_subset=65"], "only 64 test images")
    assert not any(tmp_path.iterdir())


def test_ctrl_c_in_a_sweep_leaves_no_run_marked_running(tmp_path, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "sw", "recipe": "demo", "out_dir": str(tmp_path / "runs"), "seeds": [0],
                                "models": ["resnet8"], "overrides": [o for o in CPU if not o.startswith("model.name=")],
                                "grid": {"methods": ["ce", "tfd"]}}))

    interrupt_in_epoch(monkeypatch, 0)
    assert main(["sweep", str(spec)]) == 130
    state = json.loads(next((tmp_path / "runs").rglob("sweep_state.json")).read_text())
    statuses = [r["status"] for r in state["runs"].values()]
    assert "running" not in statuses and "interrupted" in statuses, statuses


def test_top5_only_where_there_are_more_than_5_classes(tmp_path, capsys):
    """Top-5 of a 3-class data set is 100 % by construction: no column, no summary entry, no eval figure."""
    out = tmp_path / "runs"
    assert main(["train", *CPU, "data.synthetic_classes=3", f"out_dir={out}", "name=c3"]) == 0
    summary = json.loads((out / "c3" / "summary.json").read_text())
    assert "last_top5" not in summary and summary["last_top1"] is not None
    assert all("test_top5" not in json.loads(r) for r in (out / "c3" / "metrics.jsonl").read_text().splitlines())
    capsys.readouterr()
    assert main(["eval", str(out / "c3"), "--device", "cpu"]) == 0
    assert "top-5" not in capsys.readouterr().out
    assert main(["train", *CPU, f"out_dir={out}", "name=c10"]) == 0  # 10 classes: top-5 is measured
    assert "last_top5" in json.loads((out / "c10" / "summary.json").read_text())
