"""Multi-seed batched training: K seeds as one vmapped model give the K single runs' results."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import TINY, run_cli
from tfdistill.config import load_config
from tfdistill.engine import load_checkpoint, train
from tfdistill.engine.multiseed import MultiSeedTrainer, batching_blocker, run_name_for_seed, seed_configs
from tfdistill.evaluate import evaluate_checkpoint

# A slightly gentler lr than TINY's: float rounding differences between grouped and plain convolutions stay at
# the 1e-7 level after a step; a large lr on 128 images amplifies them over epochs.
RUN = ["method.name=tfd", "epochs=2", "optim.lr=0.01", "data.synthetic_train=64"]  # 2 steps per epoch


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def assert_state_close(a: dict, b: dict, what: str):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{what} {k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), f"{what} {k}"


def test_batched_seeds_equal_separate_runs(tiny, tmp_path):
    lines: list[str] = []
    res = train(load_config(None, [*tiny, *RUN, "seeds=[0,1]", "name=grp"]), echo=lines.append)
    assert [r.run_dir.name for r in res] == ["grp_s0", "grp_s1"]
    assert any("batched with seeds [0, 1]" in line for line in lines)
    for seed in (0, 1):
        train(load_config(None, [*tiny, *RUN, f"seed={seed}", f"name=alone_s{seed}"]), echo=lambda s: None)
        b, a = tmp_path / "runs" / f"grp_s{seed}", tmp_path / "runs" / f"alone_s{seed}"
        cb, ca = load_checkpoint(b / "last.pt"), load_checkpoint(a / "last.pt")
        # weights and BatchNorm running statistics (the state_dict holds both), momentum buffers, schedule
        assert_state_close(cb["model"], ca["model"], f"seed {seed} model")
        mb = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
        ma = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
        assert len(mb) == len(ma) > 0
        for x, y in zip(mb, ma):  # momentum ~ recent gradients, which amplify rounding far more than weights
            assert ((x - y).norm() / y.norm()).item() < 1e-2
        assert cb["sched"] == ca["sched"] and cb["epoch"] == ca["epoch"] == 2
        assert cb["optimizer"]["param_groups"][0]["lr"] == pytest.approx(ca["optimizer"]["param_groups"][0]["lr"])
        # per-seed metrics
        rb, ra = rows(b), rows(a)
        assert [r["epoch"] for r in rb] == [1, 2]
        for x, y in zip(rb, ra):
            for key in ("loss", "test_loss"):
                assert x[key] == pytest.approx(y[key], rel=1e-4), key
            for key in ("train_acc", "test_top1", "test_top5", "best_top1"):
                assert x[key] == pytest.approx(y[key], abs=1e-9), key
            assert set(x["terms"]) == set(y["terms"]) == {"ce", "tfd_depth", "tfd_width"}
            for key in x["terms"]:
                assert x["terms"][key] == pytest.approx(y["terms"][key], rel=1e-4), key
        # the run-directory contract, with the seed's own config
        for f in ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt", "train.log"):
            assert (b / f).is_file(), f
        cfg = load_config(b / "config.yaml")
        assert cfg.seed == seed and cfg.seeds is None
        s = json.loads((b / "summary.json").read_text())
        assert s["seed"] == seed and s["batched"]["seeds"] == [0, 1]
        assert s["last_top1"] == pytest.approx(json.loads((a / "summary.json").read_text())["last_top1"])
        # loadable by `tfdistill eval`
        ev = evaluate_checkpoint(b / "best.pt", device="cpu")
        assert ev["top1"] == pytest.approx(s["best_top1"])


def test_run_names(tiny):
    named = load_config(None, [*tiny, "seeds=[3,5]", "name=x"])
    assert [c.name for c in seed_configs(named)] == ["x_s3", "x_s5"]
    anon = load_config(None, [*tiny, "seeds=[3,5]", "method.name=tfd"])
    assert [c.name for c in seed_configs(anon)] == ["synthetic_resnet8_tfd_s3", "synthetic_resnet8_tfd_s5"]
    assert run_name_for_seed(anon, 7) == "synthetic_resnet8_tfd_s7"
    with pytest.raises(Exception, match="twice"):
        seed_configs(load_config(None, [*tiny, "seeds=[1,1]"]))


def test_blockers_from_the_config(tiny):
    assert batching_blocker(load_config(None, [*tiny, "seeds=[0,1]", "method.name=tfd_ls"])) is None
    assert batching_blocker(load_config(None, [*tiny, "seeds=[0,1]", "method.name=ls"])) is None
    assert "fp16" in batching_blocker(load_config(None, [*tiny, "seeds=[0,1]", "engine.precision=fp16"]))
    assert "dataloader" in batching_blocker(load_config(None, [*tiny, "seeds=[0,1]", "data.loader=dataloader"]))
    assert batching_blocker(load_config(None, [*tiny, "seeds=[0,1]", "method.name=kd"])) is None
    why = batching_blocker(load_config(None, [*tiny, "seeds=[0,1]", "method.name=crd"]))
    assert "['crd'] not verified" in why and "kd" in why and "tfd" in why


def test_resume_of_an_interrupted_batched_run(tiny, tmp_path, monkeypatch):
    cfg = load_config(None, [*tiny, *RUN, "epochs=3", "seeds=[0,1]", "name=r", "engine.eval_every=2"])
    train(cfg, echo=lambda s: None)
    ref = {s: load_checkpoint(tmp_path / "runs" / f"r_s{s}" / "last.pt")["model"] for s in (0, 1)}
    ref_rows = rows(tmp_path / "runs" / "r_s1")

    cut = load_config(None, [*tiny, *RUN, "epochs=3", "seeds=[0,1]", "name=k", "engine.eval_every=2"])
    real = MultiSeedTrainer.train_epoch

    def killed(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies in epoch 3, after the checkpoints of epoch 2
        return real(self, epoch)

    monkeypatch.setattr(MultiSeedTrainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cut, echo=lambda s: None)
    monkeypatch.setattr(MultiSeedTrainer, "train_epoch", real)
    for s in (0, 1):
        assert load_checkpoint(tmp_path / "runs" / f"k_s{s}" / "last.pt")["epoch"] == 2
        assert not (tmp_path / "runs" / f"k_s{s}" / "summary.json").exists()
    lines: list[str] = []
    res = train(cut, resume=True, echo=lines.append)
    assert any("resuming" in line and "batched" in line for line in lines)
    for s in (0, 1):
        got = load_checkpoint(tmp_path / "runs" / f"k_s{s}" / "last.pt")["model"]
        for key, v in ref[s].items():
            assert torch.equal(v, got[key]), key  # same computation, same order: bit-identical
    got_rows = rows(tmp_path / "runs" / "k_s1")
    assert [r["epoch"] for r in got_rows] == [1, 2, 3]
    assert [r["test_top1"] for r in got_rows] == [r["test_top1"] for r in ref_rows]
    assert [r.summary["resumed_from_epoch"] for r in res] == [2, 2]


def test_seeds_at_different_epochs_resume_one_after_another(tiny, tmp_path):
    cfg = load_config(None, [*tiny, "seeds=[0,1]", "name=u", "data.synthetic_train=64"])
    train(cfg, echo=lambda s: None)
    shutil.rmtree(tmp_path / "runs" / "u_s1")  # e.g. killed before seed 1's first checkpoint
    lines: list[str] = []
    res = train(cfg, resume=True, echo=lines.append)
    assert any("one after another" in line and "different epochs" in line for line in lines)
    assert [r.summary["status"] for r in res] == ["finished", "finished"]
    assert json.loads((tmp_path / "runs" / "u_s1" / "summary.json").read_text())["epochs"] == 1


def test_unbatchable_recipe_falls_back_to_sequential_runs(tiny, tmp_path):
    lines: list[str] = []
    res = train(load_config(None, [*tiny, "seeds=[0,1]", "name=f", "model.dropblock_prob=0.1",
                                   "data.synthetic_train=64"]), echo=lines.append)
    assert sum("one after another" in line for line in lines) == 1
    assert [r.run_dir.name for r in res] == ["f_s0", "f_s1"]
    assert all("batched" not in r.summary for r in res)


def test_cli_trains_all_seeds_in_one_command(tmp_path):
    out = tmp_path / "cli"
    res = run_cli(["train", *TINY, f"out_dir={out}", "name=c", "seeds=[0,1]", "method.name=tfd",
                   "data.synthetic_train=64"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("finished: best top-1") == 2  # the result of each seed, once
    assert (out / "c_s0" / "summary.json").is_file() and (out / "c_s1" / "summary.json").is_file()


def test_sweep_batches_the_seeds_of_each_group(tmp_path, capsys):
    """`tfdistill sweep SPEC --batch-seeds`: each group of runs differing by seed is one batched model; the run
    directories are those the plain sweep writes (same names, same configs), so report and resume work as usual."""
    from tfdistill.cli import main

    base = [o for o in TINY if not o.startswith("model.name=")] + ["data.synthetic_train=64"]
    spec = {"name": "sw", "recipe": "cifar100/paper", "out_dir": str(tmp_path / "runs"), "seeds": [0, 1],
            "models": ["resnet8"], "overrides": base, "grid": {"methods": ["ce", "tfd"]}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["sweep", str(path), "--batch-seeds"]) == 0
    out = capsys.readouterr().out
    assert out.count("batched with seeds [0, 1]") == 4  # 2 groups x 2 seeds, one "run ..." line each
    sweep_dir = tmp_path / "runs" / "sw"
    for name in ("resnet8_ce_s0", "resnet8_ce_s1", "resnet8_tfd_s0", "resnet8_tfd_s1"):
        s = json.loads((sweep_dir / name / "summary.json").read_text())
        assert s["batched"]["seeds"] == [0, 1] and s["status"] == "finished"
    state = json.loads((sweep_dir / "sweep_state.json").read_text())
    assert state["counts"] == {"finished": 4}
    assert main(["sweep", str(path), "--batch-seeds"]) == 0  # everything finished: nothing to train
    assert "0 to train" in capsys.readouterr().out


def test_divergence_stops_the_group_and_names_the_seeds(tiny, tmp_path):
    from tfdistill.errors import DivergenceError

    # lr 1e12 sends at least one of the two seeds to NaN in epoch 1 (which ones depends on the float rounding)
    pattern = r"([12]) of 2 seed runs stopped \((d_s0, d_s1|d_s0|d_s1)\): loss became NaN/inf in epoch 1 .*no checkpoint"
    with pytest.raises(DivergenceError, match=pattern) as info:
        train(load_config(None, [*tiny, "seeds=[0,1]", "name=d", "optim.lr=1e12", "data.synthetic_train=64"]),
              echo=lambda s: None)
    stopped = [n.strip() for n in str(info.value).split("(", 1)[1].split(")", 1)[0].split(",")]
    for name in ("d_s0", "d_s1"):  # each run either stopped alone (no checkpoint, the reason in its log) or finished
        run = tmp_path / "runs" / name
        if name in stopped:
            assert not (run / "last.pt").exists() and not (run / "summary.json").exists()
            assert "NaN/inf" in (run / "train.log").read_text()
        else:
            assert json.loads((run / "summary.json").read_text())["status"] == "finished"


# ------------------------------------------------------------------ runs that differ in loss weights (alpha/beta grid)
def test_batch_key_ignores_seed_name_and_batchable_weights(tiny):
    from tfdistill.engine.multiseed import batch_key

    def key(*o):
        return batch_key(load_config(None, [*tiny, "method.name=tfd", *o]))

    base = key("seed=0", "name=a")
    assert key("seed=3", "name=b", "method.tfd.alpha=0.05", "method.tfd.beta=0.0012") == base
    assert key("method.tfd.alpha=0") != base  # a zero weight switches the term off: another structure
    assert key("optim.lr=0.5") != base and key("method.tfd.direction=bottom_up") != base
    assert key("method.tfd.ramp_epochs=2") != base


def test_runs_differing_in_alpha_beta_equal_separate_runs(tiny, tmp_path):
    """Two TFD runs with other alpha/beta (and seeds) as one batched model give the two single runs' weights."""
    settings = [("w_a", 0, "method.tfd.alpha=0.005", "method.tfd.beta=0.0004"),
                ("w_b", 1, "method.tfd.alpha=0.5", "method.tfd.beta=0.04")]
    cfgs = [load_config(None, [*tiny, *RUN, f"seed={s}", f"name={n}", a, b]) for n, s, a, b in settings]
    lines: list[str] = []
    group = MultiSeedTrainer(cfgs, echo=lines.append)
    res = group.fit()
    assert any("batched with 2 runs (w_a, w_b)" in line for line in lines)
    assert [r.summary["batched"]["runs"] for r in res] == [["w_a", "w_b"]] * 2
    for n, s, a, b in settings:
        train(load_config(None, [*tiny, *RUN, f"seed={s}", f"name=alone_{n}", a, b]), echo=lambda x: None)
        cb = load_checkpoint(tmp_path / "runs" / n / "last.pt")
        ca = load_checkpoint(tmp_path / "runs" / f"alone_{n}" / "last.pt")
        assert_state_close(cb["model"], ca["model"], n)
        for x, y in zip(rows(tmp_path / "runs" / n), rows(tmp_path / "runs" / f"alone_{n}")):
            for key in x["terms"]:
                assert x["terms"][key] == pytest.approx(y["terms"][key], rel=1e-4), (n, key)
    # the terms really used each run's own weights (they differ by 100x between the two runs)
    ta, tb = (rows(tmp_path / "runs" / n)[0]["terms"]["tfd_depth"] for n in ("w_a", "w_b"))
    assert tb > 10 * ta


def test_mismatched_runs_are_refused(tiny):
    from tfdistill.errors import ConfigError

    cfgs = [load_config(None, [*tiny, "method.name=tfd", "name=x"]),
            load_config(None, [*tiny, "method.name=tfd", "name=y", "optim.lr=0.3"])]
    with pytest.raises(ConfigError, match="differ only in seed"):
        MultiSeedTrainer(cfgs)


def test_sweep_batches_an_alpha_grid_and_a_diverged_run_stops_alone(tmp_path, capsys):
    """`--batch-weights`: the variants of an alpha grid (x seeds) train as one batched model; a variant whose loss
    overflows is recorded as failed (diverged) while the others finish with the single runs' weights."""
    from tfdistill.cli import main

    base = [o for o in TINY if not o.startswith("model.name=")] + RUN[1:]
    spec = {"name": "ab", "recipe": "cifar100/paper", "out_dir": str(tmp_path / "runs"), "seeds": [0, 1],
            "models": ["resnet8"], "overrides": base,
            "grid": [{"methods": ["tfd"], "variants": {"a1": ["method.tfd.alpha=0.005"],
                                                       "a2": ["method.tfd.alpha=0.05"],
                                                       "boom": ["method.tfd.alpha=1e38", "method.tfd.beta=1e38"]}}]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["sweep", str(path), "--batch-weights"]) == 1  # a failed run -> non-zero exit
    out = capsys.readouterr().out
    assert out.count("batched: 6 runs as one model") == 1
    assert "diverged in epoch 1" in out and "redone for the other 4" in out
    sweep_dir = tmp_path / "runs" / "ab"
    state = json.loads((sweep_dir / "sweep_state.json").read_text())
    assert state["counts"] == {"finished": 4, "failed": 2}
    assert all("NaN/inf" in state["runs"][f"resnet8_tfd_boom_s{s}"]["error"] for s in (0, 1))
    alone = train(load_config(sweep_dir / "resnet8_tfd_a2_s1" / "config.yaml",
                              ["name=alone", f"out_dir={tmp_path / 'alone'}"]), echo=lambda x: None)
    assert_state_close(load_checkpoint(sweep_dir / "resnet8_tfd_a2_s1" / "last.pt")["model"],
                       load_checkpoint(alone.run_dir / "last.pt")["model"], "a2_s1")
    from tfdistill.report import make_report

    rep = make_report(sweep_dir, out_dir=tmp_path / "rep", plots=False)
    assert "diverged" in rep.markdown
    # --batch-max splits the groups; the flags are refused where they cannot work
    assert main(["sweep", str(path), "--batch-weights", "--batch-max", "2", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(path), "--batch-max", "2"]) == 2
    assert "--batch-max needs --batch-seeds or --batch-weights" in capsys.readouterr().err
    assert main(["sweep", str(path), "--batch-weights", "--batch-max", "-1"]) == 2
    assert "--batch-max -1: give a positive number" in capsys.readouterr().err


def test_batched_groups_in_parallel_processes(tmp_path, capsys):
    """`--batch-weights --jobs 2 --batch-max 2`: each group of two runs trains as one batched model in its own process;
    a run that diverges inside a process is recorded with its own reason, its partner finishes."""
    from tfdistill.cli import main

    base = [o for o in TINY if not o.startswith("model.name=")] + RUN[1:] + ["epochs=1"]
    spec = {"name": "par", "recipe": "cifar100/paper", "out_dir": str(tmp_path / "runs"), "seeds": [0, 1],
            "models": ["resnet8"], "overrides": base,
            "grid": [{"methods": ["tfd"], "variants": {"ok": ["method.tfd.alpha=0.005"],
                                                       "boom": ["method.tfd.alpha=1e38", "method.tfd.beta=1e38"]}}]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["sweep", str(path), "--batch-weights", "--jobs", "2", "--batch-max", "2"]) == 1
    sweep_dir = tmp_path / "runs" / "par"
    state = json.loads((sweep_dir / "sweep_state.json").read_text())
    assert state["counts"] == {"finished": 2, "failed": 2}
    for s in (0, 1):
        assert "loss became NaN/inf in epoch 1" in state["runs"][f"resnet8_tfd_boom_s{s}"]["error"]
        summary = json.loads((sweep_dir / f"resnet8_tfd_ok_s{s}" / "summary.json").read_text())
        assert summary["batched"]["runs"] == [f"resnet8_tfd_ok_s{s}"]  # what was left of its group after the drop
    logs = sorted(p.name for p in (sweep_dir / "logs").glob("batch_*.log"))
    assert logs == ["batch_resnet8_tfd_ok_s0.log", "batch_resnet8_tfd_ok_s1.log"]
    assert "diverged in epoch 1" in (sweep_dir / "logs" / logs[0]).read_text()
    assert "output in batch_resnet8_tfd_ok_s0.log" in (sweep_dir / "logs" / "resnet8_tfd_boom_s0.log").read_text()
    # the failed runs are retried by the next invocation (and fail again the same way); the finished ones are kept
    assert main(["sweep", str(path), "--batch-weights", "--jobs", "2"]) == 1
    assert json.loads((sweep_dir / "sweep_state.json").read_text())["counts"] == {"finished": 2, "failed": 2}


# ------------------------------------------------------------------ teacher-based methods: one shared frozen teacher
@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A resnet14 teacher trained with the CLI (one epoch of the tiny synthetic task)."""
    from tfdistill.cli import main

    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", *TINY, "data.synthetic_train=64", "model.name=resnet14", f"out_dir={out}", "name=t"]) == 0
    return out / "t" / "best.pt"


BATCHABLE_WITH_TEACHER = ["kd", "fitnet", "at", "sp", "nst", "pkt", "rkd", "cc", "vid", "fsp", "tfd+kd"]


@pytest.mark.parametrize("preset", BATCHABLE_WITH_TEACHER)
def test_teacher_methods_batched_equal_separate_runs(preset, teacher_ckpt, tiny, tmp_path):
    """Every component marked batchable gives, batched over two seeds with one shared frozen teacher, the two single
    runs' weights (its own regressors/embeddings included) and loss terms. SP (weight 3000) and RKD amplify float
    rounding the most, hence tolerances 10x those of the teacher-free test."""
    base = [*tiny, *RUN, "epochs=1", f"method.name={preset}", "teacher.model=resnet14",
            f"teacher.checkpoint={teacher_ckpt}"]
    lines: list[str] = []
    train(load_config(None, [*base, "seeds=[0,1]", "name=b"]), echo=lines.append)
    assert any("batched with seeds [0, 1]" in line for line in lines), lines[:3]
    for seed in (0, 1):
        train(load_config(None, [*base, f"seed={seed}", f"name=a{seed}"]), echo=lambda x: None)
        cb = load_checkpoint(tmp_path / "runs" / f"b_s{seed}" / "last.pt")
        ca = load_checkpoint(tmp_path / "runs" / f"a{seed}" / "last.pt")
        for part in ("model", "method"):
            assert cb[part].keys() == ca[part].keys()
            for k, v in ca[part].items():
                if v.is_floating_point():
                    torch.testing.assert_close(cb[part][k], v, rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")
                else:
                    assert torch.equal(cb[part][k], v), k
        (x,), (y,) = rows(tmp_path / "runs" / f"b_s{seed}"), rows(tmp_path / "runs" / f"a{seed}")
        assert set(x["terms"]) == set(y["terms"])
        for key in x["terms"]:
            assert x["terms"][key] == pytest.approx(y["terms"][key], rel=1e-3), key


def test_one_teacher_object_serves_the_whole_group(teacher_ckpt, tiny):
    cfgs = [load_config(None, [*tiny, "method.name=kd", "teacher.model=resnet14", f"teacher.checkpoint={teacher_ckpt}",
                               f"seed={s}", f"name=t{s}"]) for s in (0, 1, 2)]
    group = MultiSeedTrainer(cfgs, echo=lambda x: None)
    assert len({id(t.teacher) for t in group.trainers}) == 1


def test_a_refused_seed_costs_no_other_seed_its_run(tiny, tmp_path):
    """--overwrite over several seeds: every run directory is checked before any is replaced."""
    from tfdistill.errors import RunDirError

    cfg = load_config(None, [*tiny, "seeds=[0,1]", "name=x", "data.synthetic_train=64"])
    train(cfg, echo=lambda s: None)
    keep = {f.name: f.read_bytes() for f in (tmp_path / "runs" / "x_s0").iterdir() if f.is_file()}
    shutil.rmtree(tmp_path / "runs" / "x_s1")
    (tmp_path / "runs" / "x_s1").mkdir()
    (tmp_path / "runs" / "x_s1" / "notes.txt").write_text("not a run")
    with pytest.raises(RunDirError, match="not a tfdistill run directory"):
        train(cfg, overwrite=True, echo=lambda s: None)
    assert {f.name: f.read_bytes() for f in (tmp_path / "runs" / "x_s0").iterdir() if f.is_file()} == keep


def test_a_run_dropped_before_an_interrupt_stays_recorded_as_failed(tmp_path, monkeypatch):
    """The sweep records a diverged run the moment it is dropped: a sweep interrupted later in the same group keeps
    it as failed (--skip-failed then leaves it alone) and resumes the others."""
    from tfdistill.engine.multiseed import batched_seeds_executor
    from tfdistill.sweep import plan_sweep, run_sweep

    base = [o for o in TINY if not o.startswith("model.name=")] + RUN[1:]  # 2 epochs
    spec = {"name": "intr", "recipe": "cifar100/paper", "out_dir": str(tmp_path / "runs"), "seeds": [0],
            "models": ["resnet8"], "overrides": base,
            "grid": [{"methods": ["tfd"], "variants": {"ok": ["method.tfd.alpha=0.005"],
                                                       "boom": ["method.tfd.alpha=1e38", "method.tfd.beta=1e38"]}}]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    real = MultiSeedTrainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C in epoch 2, after "boom" was dropped in epoch 1
        return real(self, epoch)

    monkeypatch.setattr(MultiSeedTrainer, "train_epoch", interrupted)
    plan = plan_sweep(path)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, executor=batched_seeds_executor(lambda s: None, weights=True), echo=lambda s: None)
    state = json.loads((plan.sweep_dir / "sweep_state.json").read_text())["runs"]
    assert state["resnet8_tfd_boom_s0"]["status"] == "failed" and "NaN/inf" in state["resnet8_tfd_boom_s0"]["error"]
    assert (plan.sweep_dir / "resnet8_tfd_boom_s0" / "FAILED").is_file()
    monkeypatch.setattr(MultiSeedTrainer, "train_epoch", real)
    res = run_sweep(plan_sweep(path), retry_failed=False, batch="weights", echo=lambda s: None)
    assert res.trained == ["resnet8_tfd_ok_s0"] and not (plan.sweep_dir / "resnet8_tfd_boom_s0" / "last.pt").exists()
    assert json.loads((plan.sweep_dir / "resnet8_tfd_ok_s0" / "summary.json").read_text())["resumed_from_epoch"] == 1


def test_resolve_device_makes_the_cuda_device_current(monkeypatch):
    """"cuda"/"auto" become the current CUDA device with its index (set_device needs one), "cuda:N" is checked
    against the device count; simulated, as this machine has no GPU."""
    from tfdistill.engine.loop import resolve_device
    from tfdistill.errors import ConfigError

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 0), torch.device("cuda", 0), torch.device("cuda", 1)]
    with pytest.raises(ConfigError, match="2 CUDA device"):
        resolve_device("cuda:5")
