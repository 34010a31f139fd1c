"""Packed groups: K runs in one process (one loop, one step runner) equal the K separate runs bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY
from tfdistill.config import load_config
from tfdistill.engine import build_group, load_checkpoint, train
from tfdistill.runs import pack_key, run_name, seed_configs
from tfdistill.errors import ConfigError, DivergenceError, RunDirError

# 2 epochs x 2 steps; dropout makes every step draw random numbers from the global stream (per-run RNG swapping)
RUN = ["epochs=2", "data.synthetic_train=64", "engine.max_steps_per_epoch=2", "engine.device=cpu"]


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b):
    """Two run directories hold bit-identical training state (weights, BatchNorm statistics, method modules and
    buffers, momentum buffers, schedule) and the same metrics."""
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for part in ("model", "method"):
        assert ca[part].keys() == cb[part].keys()
        for k, v in ca[part].items():
            assert torch.equal(v, cb[part][k]), (a.name, part, k)
    ma = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
    mb = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
    assert len(ma) == len(mb) > 0 and all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert ca["sched"] == cb["sched"] and ca["epoch"] == cb["epoch"]
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        for key in ("loss", "terms", "train_acc", "test_top1", "test_loss", "stage", "stage_loss"):
            assert x.get(key) == y.get(key), (a.name, key)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A resnet14 teacher trained with the CLI (one epoch of the tiny synthetic task)."""
    from tfdistill.cli import main

    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", *TINY, "data.synthetic_train=64", "model.name=resnet14", f"out_dir={out}", "name=t",
                 "engine.device=cpu"]) == 0
    return out / "t" / "best.pt"


CASES = {
    "ce": ["method.name=ce", "model.dropout=0.3"],
    "tfd": ["method.name=tfd", "model.dropout=0.3"],
    "kd": ["method.name=kd"],
    "fitnet": ["method.name=fitnet", "method.fitnet.init_epochs=1"],  # with its hint pre-stage
    "crd": ["method.name=crd"],  # negatives drawn from the global random stream every step
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_group_equals_separate_runs(case, tiny, tmp_path, request):
    over = [*tiny, *RUN, *CASES[case]]
    if case in ("kd", "fitnet", "crd"):
        ckpt = request.getfixturevalue("teacher_ckpt")
        over += ["teacher.model=resnet14", f"teacher.checkpoint={ckpt}"]
    lines: list[str] = []
    res = train(load_config(None, [*over, "seeds=[0,1]", "name=g"]), echo=lines.append)
    assert [r.run_dir.name for r in res] == ["g_s0", "g_s1"]
    assert any("packed with 1 other run(s) (g_s0, g_s1)" in line for line in lines)
    for seed in (0, 1):
        train(load_config(None, [*over, f"seed={seed}", f"name=alone{seed}"]), echo=lambda s: None)
        assert_same_run(tmp_path / "runs" / f"g_s{seed}", tmp_path / "runs" / f"alone{seed}")
        s = json.loads((tmp_path / "runs" / f"g_s{seed}" / "summary.json").read_text())
        assert s["seed"] == seed and s["pack"]["size"] == 2 and s["pack"]["runs"] == ["g_s0", "g_s1"]
        assert load_config(tmp_path / "runs" / f"g_s{seed}" / "config.yaml").seeds is None
    # the two seeds really differ (a group that trained one model twice would pass the comparison above too)
    a, b = (load_checkpoint(tmp_path / "runs" / f"g_s{s}" / "last.pt")["model"] for s in (0, 1))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    if case == "fitnet":  # the pre-stage wrote its metrics rows (before the main epochs) and the report reads them
        got = rows(tmp_path / "runs" / "g_s0")
        assert [r["epoch"] for r in got] == [0, 1, 2] and got[0]["stage"] and "stage" not in got[1]
        assert got[0]["stage_loss"] > 0 and "loss" not in got[0]  # the curves of the main loss skip it
        from tfdistill.report import make_report
        from tfdistill.report.collect import read_run

        assert read_run(tmp_path / "runs" / "g_s0").epochs_done == 2
        assert make_report(tmp_path / "runs", out_dir=tmp_path / "rep", plots=False).markdown


def test_a_compiled_packed_group_equals_separate_compiled_runs(tiny, tmp_path, monkeypatch):
    """engine.compile=true in a packed group (what configs/reproduce/cifar10_table1.yaml runs): every member runs its
    compiled step (traced by dynamo + AOTAutograd, the ``aot_eager`` backend: fast, on every torch of the matrix)
    and ends bit-identical to its separate compiled run -- TFD, whose loss region joins the outer graph."""
    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "aot_eager")
    over = [*tiny, *RUN, "method.name=tfd", "engine.compile=true"]
    res = train(load_config(None, [*over, "seeds=[0,1]", "name=g"]), echo=lambda s: None)
    for seed, r in zip((0, 1), res):
        assert r.summary["pack"]["size"] == 2 and r.summary["status"] == "finished"
        assert r.summary["step_mode"] == "compiled" and r.summary["pack"]["step"] == "sequential_compiled"
        train(load_config(None, [*over, f"seed={seed}", f"name=alone{seed}"]), echo=lambda s: None)
        assert_same_run(tmp_path / "runs" / f"g_s{seed}", tmp_path / "runs" / f"alone{seed}")


def test_a_group_of_different_methods_and_students(tiny, tmp_path):
    """CE on resnet8 and TFD on resnet14 (other seed, other lr) in one group: each equals its separate run."""
    runs = {"ce8": ["method.name=ce", "model.name=resnet8", "seed=0"],
            "tfd14": ["method.name=tfd", "model.name=resnet14", "seed=1", "optim.lr=0.02"]}
    cfgs = [load_config(None, [*tiny, *RUN, *o, f"name={n}"]) for n, o in runs.items()]
    results = build_group(cfgs, echo=lambda s: None).fit()
    assert [r.summary["status"] for r in results] == ["finished", "finished"]
    for n, o in runs.items():
        train(load_config(None, [*tiny, *RUN, *o, f"name=alone_{n}"]), echo=lambda s: None)
        assert_same_run(tmp_path / "runs" / n, tmp_path / "runs" / f"alone_{n}")


def test_a_diverged_member_stops_alone(tiny, tmp_path):
    """A run whose loss overflows stops in epoch 1 (no checkpoint, the reason in its train.log, --overwrite's old run
    restored); its partner finishes with exactly its separate run's weights."""
    ok = ["method.name=tfd", "seed=0", "name=ok"]
    boom = ["method.name=tfd", "seed=1", "name=boom", "method.tfd.alpha=1e38", "method.tfd.beta=1e38"]
    dropped = []
    cfgs = [load_config(None, [*tiny, *RUN, *o]) for o in (boom, ok)]
    res = build_group(cfgs, echo=lambda s: None, on_drop=lambda i, e: dropped.append(i)).fit()
    assert isinstance(res[0], DivergenceError) and "NaN/inf in epoch 1" in str(res[0]) and dropped == [0]
    assert res[1].summary["status"] == "finished"
    assert not (tmp_path / "runs" / "boom" / "last.pt").exists()
    assert "DivergenceError: loss became NaN/inf in epoch 1" in (tmp_path / "runs" / "boom" / "train.log").read_text()
    train(load_config(None, [*tiny, *RUN, *ok[:-1], "name=alone"]), echo=lambda s: None)
    assert_same_run(tmp_path / "runs" / "ok", tmp_path / "runs" / "alone")
    # train(list of configs) (what `train seeds=[...]` does): the others run to the end, then the error names who stopped
    cfgs = [load_config(None, [*tiny, *RUN, *o[:-1], f"{o[-1]}2"]) if o is ok else
            load_config(None, [*tiny, *RUN, *boom[:2], "name=boom2", *boom[3:]]) for o in (ok, boom)]
    with pytest.raises(DivergenceError, match=r"1 of 2 runs stopped \(boom2\).*the other runs ran to the end"):
        train(cfgs, echo=lambda s: None)
    assert (tmp_path / "runs" / "ok2" / "summary.json").is_file()


def test_run_names_and_what_may_be_packed(tiny):
    named = load_config(None, [*tiny, "seeds=[3,5]", "name=x"])
    assert [c.name for c in seed_configs(named)] == ["x_s3", "x_s5"]
    anon = load_config(None, [*tiny, "seeds=[3,5]", "method.name=tfd"])
    assert [c.name for c in seed_configs(anon)] == ["synthetic_resnet8_tfd_s3", "synthetic_resnet8_tfd_s5"]
    assert run_name(anon, 7) == "synthetic_resnet8_tfd_s7"
    with pytest.raises(ConfigError, match="twice"):
        seed_configs(load_config(None, [*tiny, "seeds=[1,1]"]))

    def key(*o):
        return pack_key(load_config(None, [*tiny, *o]))

    base = key()
    assert key("seed=3", "name=b", "method.name=tfd", "model.name=resnet14", "optim.lr=0.5",
               "schedule.name=multistep", "engine.progress=true") == base
    assert key("data.batch_size=16") != base and key("epochs=3") != base and key("engine.precision=bf16") != base
    cfgs = [load_config(None, [*tiny, "name=x"]), load_config(None, [*tiny, "name=y", "data.batch_size=16"])]
    with pytest.raises(ConfigError, match="data.batch_size"):
        build_group(cfgs)


def test_a_refused_run_costs_no_other_run_its_directory(tiny, tmp_path):
    """--overwrite over a group: every run directory is checked before any is replaced."""
    cfg = load_config(None, [*tiny, "seeds=[0,1]", "name=x", "data.synthetic_train=64"])
    train(cfg, echo=lambda s: None)
    keep = {f.name: f.read_bytes() for f in (tmp_path / "runs" / "x_s0").iterdir() if f.is_file()}
    shutil.rmtree(tmp_path / "runs" / "x_s1")
    (tmp_path / "runs" / "x_s1").mkdir()
    (tmp_path / "runs" / "x_s1" / "notes.txt").write_text("not a run")
    with pytest.raises(RunDirError, match="not a tfdistill run directory"):
        train(cfg, overwrite=True, echo=lambda s: None)
    assert {f.name: f.read_bytes() for f in (tmp_path / "runs" / "x_s0").iterdir() if f.is_file()} == keep
    # bad input found while building the second run: the first run's directory is not created (nor replaced)
    cfgs = [load_config(None, [*tiny, "name=fresh"]), load_config(None, [*tiny, "name=bad", "method.name=kd"])]
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_group(cfgs)
    assert not (tmp_path / "runs" / "fresh").exists() and not (tmp_path / "runs" / "bad").exists()


def test_one_teacher_object_serves_the_whole_group(teacher_ckpt, tiny):
    cfgs = [load_config(None, [*tiny, "method.name=kd", "teacher.model=resnet14", f"teacher.checkpoint={teacher_ckpt}",
                               f"seed={s}", f"name=t{s}"]) for s in (0, 1, 2)]
    group = build_group(cfgs, echo=lambda x: None)
    assert len({id(r.teacher) for r in group.runs}) == 1
    for r in group.runs:
        r.close()


# ------------------------------------------------------------------ resume of a packed group after SIGKILL
def _group_cmd(out, epochs):
    return [sys.executable, "-m", "tfdistill", "train", *TINY, f"out_dir={out}", "name=k", f"epochs={epochs}",
            "data.synthetic_train=128", "method.name=tfd", "model.dropout=0.2", "seeds=[0,1]", "engine.device=cpu"]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def test_resume_of_a_packed_group_after_sigkill_is_bit_identical(tmp_path):
    epochs = 5
    ref = subprocess.run(_group_cmd(tmp_path / "a", epochs), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_group_cmd(tmp_path / "b", epochs), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "b" / "k_s0" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the group ended before it could be killed: " + (proc.stderr.read() or "")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for s in (0, 1):
        assert not (tmp_path / "b" / f"k_s{s}" / "summary.json").exists()
    res = subprocess.run([*_group_cmd(tmp_path / "b", epochs), "--resume"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for s in (0, 1):
        a, b = tmp_path / "a" / f"k_s{s}", tmp_path / "b" / f"k_s{s}"
        assert_same_run(a, b)
        assert [r["epoch"] for r in rows(b)] == list(range(1, epochs + 1))
        assert json.loads((b / "summary.json").read_text())["resumed_from_epoch"] >= 1


def test_runs_of_a_group_at_different_epochs_catch_up(tiny, tmp_path, monkeypatch):
    """A kill between two runs' checkpoints leaves them at different epochs: on resume the laggard catches up alone,
    then the group goes on together; both end bit-identical to the uninterrupted group."""
    from tfdistill.engine import Run

    over = [*tiny, *RUN, "epochs=3", "method.name=tfd", "model.dropout=0.3", "seeds=[0,1]"]
    train(load_config(None, [*over, "name=ref"]), echo=lambda s: None)
    real = Run.save

    def killed(self, best):
        if self.name == "u_s1" and self.epoch == 2:
            raise KeyboardInterrupt  # after u_s0's checkpoint of epoch 2, before u_s1's
        real(self, best)

    monkeypatch.setattr(Run, "save", killed)
    cfg = load_config(None, [*over, "name=u"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, echo=lambda s: None)
    monkeypatch.setattr(Run, "save", real)
    assert [load_checkpoint(tmp_path / "runs" / f"u_s{s}" / "last.pt")["epoch"] for s in (0, 1)] == [2, 1]
    res = train(cfg, resume=True, echo=lambda s: None)
    assert [r.summary["resumed_from_epoch"] for r in res] == [2, 1]
    for s in (0, 1):
        assert_same_run(tmp_path / "runs" / f"u_s{s}", tmp_path / "runs" / f"ref_s{s}")


# ------------------------------------------------------------------ sweeps: --pack K
def sweep_spec(tmp_path, name, grid, seeds=(0, 1), extra=()):
    base = [o for o in TINY if not o.startswith("model.name=")] + [*RUN, *extra]
    spec = {"name": name, "recipe": "cifar100/paper", "out_dir": str(tmp_path / "runs"), "seeds": list(seeds),
            "models": ["resnet8"], "overrides": base, "grid": grid}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def test_sweep_packs_compatible_runs_in_this_process(tmp_path, capsys):
    """`tfdistill sweep SPEC --pack 4`: CE and TFD x 2 seeds train as one group; each run directory is what the
    plain sweep writes, with the weights of the run trained alone."""
    from tfdistill.cli import main

    path = sweep_spec(tmp_path, "sw", {"methods": ["ce", "tfd"]})
    assert main(["sweep", str(path), "--pack", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("packed: 4 runs in one group") == 1
    sweep_dir = tmp_path / "runs" / "sw"
    assert json.loads((sweep_dir / "sweep_state.json").read_text())["counts"] == {"finished": 4}
    for name in ("resnet8_ce_s0", "resnet8_ce_s1", "resnet8_tfd_s0", "resnet8_tfd_s1"):
        assert json.loads((sweep_dir / name / "summary.json").read_text())["pack"]["size"] == 4
    alone = train(load_config(sweep_dir / "resnet8_tfd_s1" / "config.yaml", ["name=alone", f"out_dir={tmp_path}"]),
                  echo=lambda s: None)
    assert_same_run(sweep_dir / "resnet8_tfd_s1", alone.run_dir)
    assert main(["sweep", str(path), "--pack", "4"]) == 0  # everything finished: nothing to train
    assert "0 to train" in capsys.readouterr().out
    # the old flags are aliases; bad values are refused with one line
    assert main(["sweep", str(path), "--batch-weights", "--batch-max", "2", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(path), "--batch-max", "2"]) == 2
    assert "--batch-max needs --batch-seeds or --batch-weights" in capsys.readouterr().err
    assert main(["sweep", str(path), "--pack", "-1"]) == 2
    assert "--pack -1: give the number of runs per group" in capsys.readouterr().err


def test_packed_groups_in_parallel_processes_and_a_diverged_run(tmp_path):
    """`--pack 2 --jobs 2`: each group of two runs trains in its own process; a run that diverges there is recorded
    with its own reason, its partner finishes; the next invocation retries only the failed runs."""
    from tfdistill.cli import main

    grid = [{"methods": ["tfd"], "variants": {"ok": ["method.tfd.alpha=0.005"],
                                              "boom": ["method.tfd.alpha=1e38", "method.tfd.beta=1e38"]}}]
    path = sweep_spec(tmp_path, "par", grid, extra=["epochs=1"])
    assert main(["sweep", str(path), "--pack", "2", "--jobs", "2"]) == 1
    sweep_dir = tmp_path / "runs" / "par"
    state = json.loads((sweep_dir / "sweep_state.json").read_text())
    assert state["counts"] == {"finished": 2, "failed": 2}
    for s in (0, 1):
        assert "loss became NaN/inf in epoch 1" in state["runs"][f"resnet8_tfd_boom_s{s}"]["error"]
        assert json.loads((sweep_dir / f"resnet8_tfd_ok_s{s}" / "summary.json").read_text())["pack"]["size"] == 2
        assert "DivergenceError: loss became NaN/inf" in (sweep_dir / f"resnet8_tfd_boom_s{s}" / "train.log").read_text()
    logs = sorted(p.name for p in (sweep_dir / "logs").glob("pack_*.log"))
    assert logs == ["pack_resnet8_tfd_ok_s0.log", "pack_resnet8_tfd_ok_s1.log"]
    assert main(["sweep", str(path), "--pack", "2", "--jobs", "2"]) == 1
    assert json.loads((sweep_dir / "sweep_state.json").read_text())["counts"] == {"finished": 2, "failed": 2}


def test_a_run_dropped_before_an_interrupt_stays_recorded_as_failed(tmp_path, monkeypatch):
    """The sweep records a diverged run the moment it stops: a sweep interrupted later in the same group keeps it
    as failed (--skip-failed then leaves it alone) and resumes the others."""
    from tfdistill.engine import Group
    from tfdistill.sweep import plan_sweep, run_sweep

    grid = [{"methods": ["tfd"], "variants": {"ok": ["method.tfd.alpha=0.005"],
                                              "boom": ["method.tfd.alpha=1e38", "method.tfd.beta=1e38"]}}]
    path = sweep_spec(tmp_path, "intr", grid, seeds=(0,))
    real = Group._epoch

    def interrupted(self, team, where, desc):
        if where == "in epoch 2":
            raise KeyboardInterrupt  # Ctrl-C in epoch 2, after "boom" stopped in epoch 1
        return real(self, team, where, desc)

    monkeypatch.setattr(Group, "_epoch", interrupted)
    plan = plan_sweep(path)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, pack=2, echo=lambda s: None)
    state = json.loads((plan.sweep_dir / "sweep_state.json").read_text())["runs"]
    assert state["resnet8_tfd_boom_s0"]["status"] == "failed" and "NaN/inf" in state["resnet8_tfd_boom_s0"]["error"]
    assert (plan.sweep_dir / "resnet8_tfd_boom_s0" / "FAILED").is_file()
    monkeypatch.setattr(Group, "_epoch", real)
    res = run_sweep(plan_sweep(path), retry_failed=False, pack=2, echo=lambda s: None)
    assert res.trained == ["resnet8_tfd_ok_s0"] and not (plan.sweep_dir / "resnet8_tfd_boom_s0" / "last.pt").exists()
    assert json.loads((plan.sweep_dir / "resnet8_tfd_ok_s0" / "summary.json").read_text())["resumed_from_epoch"] == 1


@pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)
def test_packed_cuda_graph_matches_separate_runs(tiny, tmp_path):
    """CUDA only: two CE runs packed into one graph (a stream per run) reach the weights of their separate
    CUDA-graph runs (same kernels; cuDNN may pick other algorithms per process, hence a tolerance)."""
    over = [*tiny, *RUN, "engine.device=cuda", "engine.cuda_graphs=true", "engine.max_steps_per_epoch=6",
            "data.synthetic_train=256", "epochs=2", "method.name=ce"]
    res = train(load_config(None, [*over, "seeds=[0,1]", "name=g"]), echo=lambda s: None)
    assert all(r.summary["pack"]["step"] == "packed_cuda_graph" for r in res)
    for s in (0, 1):
        train(load_config(None, [*over, f"seed={s}", f"name=a{s}"]), echo=lambda x: None)
        a = load_checkpoint(tmp_path / "runs" / f"g_s{s}" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "runs" / f"a{s}" / "last.pt")["model"]
        for k, v in b.items():
            torch.testing.assert_close(a[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
