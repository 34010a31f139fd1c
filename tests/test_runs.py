"""tfdistill.runs: the rules about runs (names, seeds, packing, start modes, resume), and the one front door."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tfdistill.config import load_config
from tfdistill.errors import ConfigError
from tfdistill.runs import (extension_problem, grid_run_name, pack_key, resume_changes, run_name, run_path,
                            run_status, seed_configs, start_mode)


def test_run_names_and_paths():
    anon = load_config(None, ["data.name=synthetic", "model.name=resnet8", "method.name=tfd+kd", "seed=4",
                              "out_dir=/tmp/r"])
    assert run_name(anon) == "synthetic_resnet8_tfd-kd_s4"  # '+' is not part of a folder name
    assert run_name(anon, 7) == "synthetic_resnet8_tfd-kd_s7"
    named = load_config(None, ["name=x", "seed=4", "out_dir=/tmp/r"])
    assert run_name(named) == "x" and run_name(named, 2) == "x_s2"
    assert str(run_path(named, 2)) == "/tmp/r/x_s2"
    assert grid_run_name("resnet20", "tfd", "", 3) == "resnet20_tfd_s3"
    assert grid_run_name("resnet20", "tfd+kd", "a=0.1 b", 0) == "resnet20_tfd-kd_a=0.1-b_s0"


def test_seed_configs_name_each_run_and_refuse_bad_seed_lists():
    cfg = load_config(None, ["seeds=[2,0]", "name=x"])
    out = seed_configs(cfg)
    assert [(int(c.seed), c.seeds, c.name) for c in out] == [(2, None, "x_s2"), (0, None, "x_s0")]
    for bad in ("seeds=[]", "seeds=[1,1]"):
        with pytest.raises(ConfigError):
            seed_configs(load_config(None, [bad]))


def test_pack_key_ignores_what_runs_of_a_group_may_differ_in():
    base = ["data.name=synthetic", "epochs=2"]
    key = pack_key(load_config(None, base))
    assert key == pack_key(load_config(None, [*base, "seed=3", "method.name=tfd", "optim.lr=0.1", "name=y",
                                              "engine.progress=false"]))
    assert key != pack_key(load_config(None, [*base, "data.batch_size=32"]))
    assert key != pack_key(load_config(None, ["data.name=synthetic", "epochs=3"]))


def test_start_mode_and_status_of_a_run_folder(tmp_path):
    run = tmp_path / "r"
    assert start_mode(run, 5).name == "new" and run_status(run, 5) == "new"
    run.mkdir()
    (run / "FAILED").write_text("boom\n")
    assert start_mode(run, 5).name == "new"  # only the marker: nothing to keep
    assert run_status(run, 5) == "failed"
    (run / "FAILED").unlink()
    (run / "config.yaml").write_text("{}\n")
    mode = start_mode(run, 5)
    assert (mode.name, mode.flags, mode.what) == ("overwrite", ["--overwrite"], "restart (no checkpoint yet)")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (0, 1, 2)))
    (run / "last.pt").write_bytes(b"")
    mode = start_mode(run, 5)
    assert (mode.name, mode.flags, mode.what) == ("resume", ["--resume"], "resume after epoch 2/5")
    (run / "summary.json").write_text("{}")
    assert run_status(run, 5) == "finished"


def test_resume_rules_allow_resume_free_keys_and_extensions_only():
    from tfdistill.config import to_dict

    stored = to_dict(load_config(None, ["epochs=10", "schedule.name=multistep", "schedule.milestones=[5]"]))
    same = to_dict(load_config(None, ["epochs=10", "schedule.name=multistep", "schedule.milestones=[5]",
                                      "engine.device=cpu", "engine.progress=false"]))
    assert resume_changes(stored, same) == []
    longer = to_dict(load_config(None, ["epochs=20", "schedule.name=multistep", "schedule.milestones=[5,15]"]))
    assert extension_problem(stored, longer) is None and resume_changes(stored, longer) == []
    moved = to_dict(load_config(None, ["epochs=20", "schedule.name=multistep", "schedule.milestones=[4]"]))
    assert "schedule.milestones" in resume_changes(stored, moved)  # a milestone already passed may not move
    assert "optim.lr" in resume_changes(stored, to_dict(load_config(None, ["epochs=10", "optim.lr=0.3",
                                                                          "schedule.name=multistep",
                                                                          "schedule.milestones=[5]"])))
    cosine = to_dict(load_config(None, ["epochs=10", "schedule.name=cosine"]))
    assert "cosine schedule is a function of epochs" in extension_problem(
        cosine, to_dict(load_config(None, ["epochs=20", "schedule.name=cosine"])))


def test_tfdistill_train_is_the_front_door_and_loads_no_engine_until_used():
    code = ("import sys, tfdistill; from tfdistill import TFDLoss; assert 'tfdistill.engine' not in sys.modules; "
            "import tfdistill.engine as e; assert tfdistill.train is e.train; "
            "from tfdistill.config import load_config; assert tfdistill.load_config is load_config; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
