"""#29's rough edges of a new user's hour, each as it was met (the `cam --out` ones are in test_cam.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY
from tfdistill.cli import main
from tfdistill.config import load_config, to_yaml
from tfdistill.registry import closest, edit_distance


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def _train(capsys, *args: str) -> None:
    assert main(["train", *args]) == 0
    capsys.readouterr()


# ------------------------------------------------------------------ report: a torn metrics.jsonl
def test_report_names_a_torn_metrics_file(tmp_path, capsys):
    runs = tmp_path / "runs"
    _train(capsys, *TINY, "epochs=2", f"out_dir={runs}", "name=ce")
    metrics = runs / "ce" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    assert len(rows) == 2
    metrics.write_text(rows[0] + "\n" + rows[1][: len(rows[1]) // 2])  # the last write cut off by a kill
    assert main(["report", str(runs), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "1 run with a torn metrics file, curves end at the tear: ce: metrics.jsonl line 2 is torn" in out
    metrics.write_text("\n".join(rows) + "\n")  # whole again: no flag
    assert main(["report", str(runs), "--no-plots"]) == 0
    assert "torn metrics" not in capsys.readouterr().out


# ------------------------------------------------------------------ --resume while another process is in epoch 1
def test_resume_of_a_run_in_its_first_epoch_elsewhere_says_in_use(tmp_path, capsys):
    """The other process holds the run's lock (as the engine does from the start) and has no last.pt yet."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(load_config(None, [*TINY, f"out_dir={run.parent}", "name=r"])))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tfdistill.rundir import RunDir; RunDir(sys.argv[1]).lock(); "
                               "print('held', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["--resume", str(run)], [*TINY, f"out_dir={run.parent}", "name=r", "--resume"]):
            assert main(["train", *args]) == 2
            assert _one_line(capsys) == (
                f"tfdistill: error: run directory {run} is in use by another tfdistill process (pid {holder.pid}); "
                "wait for it to end or stop it (SIGTERM stops it gracefully), then --resume")
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(run)]) == 2  # released: the old message, which is right now
    assert "nothing to resume in" in _one_line(capsys)


# ------------------------------------------------------------------ a different number of classes on resume
def _folder(root, classes):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{k}.png")


def test_resume_with_data_of_another_class_count_names_the_class_counts(tmp_path, capsys):
    _folder(tmp_path / "two", ["a", "b"])
    _folder(tmp_path / "three", ["a", "b", "c"])
    runs = tmp_path / "runs"
    _train(capsys, *TINY, "data.name=imagefolder", f"data.root={tmp_path / 'two'}", "data.batch_size=8",
           f"out_dir={runs}", "name=r")
    (runs / "r" / "summary.json").unlink()  # as if stopped after its checkpoint: resumable
    # other data is refused by the data identity check first (fingerprint.json); past it, on purpose, the
    # checkpoint's class count is named as such
    assert main(["train", "--resume", str(runs / "r"), f"data.root={tmp_path / 'three'}"]) == 2
    assert "fingerprint.json" in _one_line(capsys)
    assert main(["train", "--resume", str(runs / "r"), f"data.root={tmp_path / 'three'}", "--accept-data-change"]) == 2
    assert _one_line(capsys) == (f"tfdistill: error: cannot resume {runs / 'r'}: it was trained on 2 classes, but "
                                 "the data given now has 3; resume it with the data it was trained on")


# ------------------------------------------------------------------ did-you-mean, the hidden _child, models
def test_did_you_mean_ranks_by_edit_distance_first(capsys):
    assert edit_distance("resnet2O", "resnet20") == 1 and edit_distance("resnet2O", "resnet32") == 2
    assert closest("resnet2O", ["resnet32", "resnet20", "resnet56"]) == ["resnet20"]
    assert closest("resnet2O", ["resnet32", "resnet20"], n=2) == ["resnet20", "resnet32"]
    assert closest("zzz", ["resnet20"]) == []
    assert main(["train", "demo", "model.name=resnet2O", "--dry-run"]) == 2
    assert "unknown model 'resnet2O' (did you mean 'resnet20'?)" in _one_line(capsys)


def test_the_internal_child_command_is_not_listed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evl"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'evl'" in err and "'eval'" in err and "_child" not in err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "_child" not in capsys.readouterr().out


def test_models_names_the_torchvision_and_timm_prefixes(capsys):
    assert main(["models"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("# beyond the zoo: any torchvision classification model as torchvision.<name>")
    assert "timm.<name>" in last


# ------------------------------------------------------------------ the lock file
def test_a_finished_run_leaves_no_lock_file_an_interrupted_one_keeps_its_folder_as_it_was(tmp_path, capsys,
                                                                                          monkeypatch):
    from conftest import interrupt_in_epoch

    runs = tmp_path / "runs"
    _train(capsys, *TINY, f"out_dir={runs}", "name=done")
    assert not (runs / "done" / ".lock").exists()
    assert sorted(p.name for p in (runs / "done").iterdir() if p.name.startswith(".")) == []
    restore = interrupt_in_epoch(monkeypatch, 1)
    assert main(["train", *TINY, "epochs=2", f"out_dir={runs}", "name=stopped"]) == 130
    restore()
    capsys.readouterr()
    assert (runs / "stopped" / "last.pt").is_file()  # resumable; its lock file is released (it may stay)
    _train(capsys, "--resume", str(runs / "stopped"))
    assert json.loads((runs / "stopped" / "summary.json").read_text())["epochs"] == 2
    assert not (runs / "stopped" / ".lock").exists()
