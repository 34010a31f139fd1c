"""A new user's first hour (issue 14): resume semantics, run-lifecycle records, messages and conventions."""

from __future__ import annotations

import json

import pytest

from conftest import TINY
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
