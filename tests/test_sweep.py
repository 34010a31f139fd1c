"""`tfdistill sweep`: spec validation, expansion, skip / resume / failure handling, and the shipped specs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED, TINY
from tfdistill.cli import main
from tfdistill.sweep import load_spec, missing_methods, plan_sweep
from tfdistill.sweep.spec import expand

# TINY minus the student, which the grid sets.
BASE = [o for o in TINY if not o.startswith("model.name=")]


def spec_file(tmp_path: Path, filename: str = "spec.yaml", **fields) -> Path:
    spec = {"name": "sw", "recipe": "cifar100/paper", "out_dir": str(tmp_path / "runs"), "seeds": [0, 1],
            "models": ["resnet8"], "overrides": BASE, "grid": {"methods": ["ce", "tfd"]}}
    spec.update(fields)
    path = tmp_path / filename
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def env_for_cli() -> dict:
    e = dict(os.environ)
    e["PYTHONUNBUFFERED"] = "1"
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def summaries(sweep_dir: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}


# ----------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fields, needles", [
    ({"grdi": {}}, ["unknown key 'grdi'"]),
    ({"grid": {"methods": ["ce"], "modles": ["resnet8"]}}, ["unknown key 'grid[0].modles'", "models"]),
    ({"grid": []}, ["key 'grid' is empty"]),
    ({"grid": [{"methods": ["ce"]}, {"methods": []}]}, ["'grid[1].methods' is empty"]),
    ({"models": [], "grid": {"methods": ["ce"]}}, ["'grid[0].models' is empty"]),
    ({"seeds": []}, ["'seeds' is empty"]),
    ({"seeds": ["zero"]}, ["'seeds[0]'"]),
    ({"models": ["resnet99"]}, ["'grid.models'", "unknown model 'resnet99'"]),
    ({"grid": {"methods": ["ce", "tfdd"]}}, ["'grid.methods'", "'tfdd' not registered"]),
    ({"recipe": "cifar100/nope"}, ["'recipe'", "cifar100/nope"]),
    ({"name": "a b"}, ["'name'"]),
    ({"overrides": [*BASE, "seed=3"]}, ["'overrides'", "'seed'", "seeds"]),
    ({"overrides": [*BASE, "optim.lrr=1"]}, ["run resnet8_ce_s0", "unknown config key 'optim.lrr'"]),
    ({"grid": [{"methods": ["tfd"], "variants": {"x": ["method.tfd.alpah=1"]}}]},
     ["resnet8_tfd_x_s0", "grid[0].variants.x", "unknown config key 'method.tfd.alpah'"]),
    ({"grid": [{"methods": ["tfd"], "variants": {"x": ["data.augment=[crop,flipp]"]}}]},
     ["resnet8_tfd_x_s0", "unknown augmentation 'flipp'"]),
    ({"grid": [{"methods": ["ce"]}, {"methods": ["ce"]}]}, ["resnet8_ce_s0 is produced twice"]),
    ({"per_model": {"resnet20": {"overrides": []}}}, ["'per_model.resnet20'", "not a model of the grid"]),
    ({"per_model": {"resnet8": {"teachr": "resnet20"}}}, ["unknown key 'per_model.resnet8.teachr'"]),
    ({"paper": {"results": {"resnet8": {"tfdd": 70.0}}}}, ["'paper.results.resnet8.tfdd'", "labels: ce, tfd"]),
    ({"paper": {"statistic": "best-of-three"}}, ["'paper.statistic'"]),
    ({"paper": {"results": {"resnet8": {"tfd": "high"}}}}, ["'paper.results.resnet8.tfd'", "number"]),
])
def test_spec_errors_are_one_line_and_name_the_key(capsys, tmp_path, fields, needles):
    one_line_error(capsys, ["sweep", str(spec_file(tmp_path, **fields)), "--dry-run"], *needles)
    assert not (tmp_path / "runs").exists()


def test_more_spec_errors(capsys, tmp_path):
    one_line_error(capsys, ["sweep", str(tmp_path / "none.yaml")], "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: [\n")
    one_line_error(capsys, ["sweep", str(bad)], "malformed YAML")
    one_line_error(capsys, ["sweep", str(spec_file(tmp_path)), "out_dir=x"], "--out-dir")
    one_line_error(capsys, ["sweep", str(spec_file(tmp_path)), "--only", "nothing*", "--dry-run"], "--only nothing*")
    one_line_error(capsys, ["sweep", str(spec_file(tmp_path)), "epochs=0", "--dry-run"], "'epochs'")


def test_teacher_methods_need_a_teacher_per_student(capsys, tmp_path):
    if missing_methods(load_spec(spec_file(tmp_path, grid={"methods": ["kd"]}))):
        pytest.skip("preset kd not registered yet")
    one_line_error(capsys, ["sweep", str(spec_file(tmp_path, grid={"methods": ["kd"]})), "--dry-run"],
                   "'per_model.resnet8.teacher'", "kd")
    p = spec_file(tmp_path, grid={"methods": ["ce", "kd"]}, per_model={"resnet8": {"teacher": "resnet20"}})
    one_line_error(capsys, ["sweep", str(p), "--dry-run"], "'teachers.resnet20'")
    ck = tmp_path / "t.pt"
    p = spec_file(tmp_path, grid={"methods": ["ce", "kd"]}, per_model={"resnet8": {"teacher": "resnet20"}},
                  teachers={"resnet20": str(ck)})
    plan = plan_sweep(p)
    kd = [r for r in plan.runs if r.method == "kd"]
    assert [r.teacher for r in kd] == ["resnet20", "resnet20"]
    assert kd[0].cfg.teacher.model == "resnet20" and kd[0].cfg.teacher.checkpoint == str(ck)
    assert all(r.cfg.teacher.model == "" for r in plan.runs if r.method == "ce")  # CE never gets the teacher
    # a missing teacher checkpoint stops a real sweep before anything trains; a dry run only notes it
    assert main(["sweep", str(p), "--dry-run"]) == 0
    assert "teacher checkpoint(s) not found yet" in capsys.readouterr().out
    one_line_error(capsys, ["sweep", str(p)], "teacher checkpoint(s) not found", str(ck), "--only")
    assert not (tmp_path / "runs" / "sw").exists() or not any((tmp_path / "runs" / "sw").glob("*/config.yaml"))


# ----------------------------------------------------------------------------------------------- expansion
def test_expansion_names_overrides_and_configs(tmp_path):
    p = spec_file(tmp_path, models=["resnet8", "resnet14"], seeds=[0, 1, 2], grid=[
        {"methods": ["ce", "tfd_ls"]},
        {"methods": ["tfd"], "seeds": [5], "variants": {"bu": ["method.tfd.direction=bottom_up"],
                                                        "a0.01": ["method.tfd.alpha=0.01"]}},
        {"methods": ["ls"], "models": ["resnet8"]},
    ], per_model={"resnet14": {"overrides": ["optim.lr=0.02"]}})
    plan = plan_sweep(p, ["epochs=2"], out_dir=tmp_path / "elsewhere")
    names = [r.name for r in plan.runs]
    assert len(names) == 2 * 2 * 3 + 2 * 2 * 1 + 3 == 19 and len(set(names)) == 19
    assert names[:3] == ["resnet8_ce_s0", "resnet8_ce_s1", "resnet8_ce_s2"]
    assert "resnet14_tfd_ls_s2" in names and "resnet8_tfd_bu_s5" in names and "resnet14_tfd_a0.01_s5" in names
    assert "resnet8_ls_s0" in names and "resnet14_ls_s0" not in names
    by = {r.name: r for r in plan.runs}
    bu = by["resnet14_tfd_bu_s5"]
    assert (bu.label, bu.method, bu.variant, bu.seed, bu.group) == ("tfd/bu", "tfd", "bu", 5, "resnet14_tfd_bu")
    assert bu.cfg.method.tfd.direction == "bottom_up" and bu.cfg.method.tfd.alpha == 0.005  # recipe's TFD kept
    assert bu.cfg.optim.lr == 0.02 and by["resnet8_tfd_bu_s5"].cfg.optim.lr == 0.05  # per-model override
    assert bu.cfg.epochs == 2 and bu.cfg.seed == 5 and bu.cfg.name == "resnet14_tfd_bu_s5"
    assert bu.overrides[-1] == "epochs=2" and "method.tfd.direction=bottom_up" in bu.overrides
    assert Path(bu.cfg.out_dir) == tmp_path / "elsewhere" / "sw" and bu.run_dir == tmp_path / "elsewhere" / "sw" / bu.name
    ce = by["resnet8_ce_s1"]
    assert ce.cfg.method.name == "ce" and "tfd" not in ce.cfg.method  # the recipe's tfd section dropped for ce
    assert by["resnet8_tfd_ls_s0"].cfg.method.label_smoothing == 0.1
    assert by["resnet8_tfd_a0.01_s5"].cfg.method.tfd.alpha == 0.01
    assert plan.select(["tfd/*"]) == [r for r in plan.runs if r.label.startswith("tfd/")]
    assert [r.name for r in plan.select(["resnet14_ce_*"])] == ["resnet14_ce_s0", "resnet14_ce_s1", "resnet14_ce_s2"]


def test_dry_run_lists_runs_without_training(capsys, tmp_path):
    p = spec_file(tmp_path, grid=[{"methods": ["ce"]}, {"methods": ["tfd"], "variants": {"bu": ["method.tfd.direction=bottom_up"]}}])
    assert main(["sweep", str(p), "--dry-run", "--only", "*_s0"]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 runs" in out and "dry run" in out
    assert re.search(r"\[1/2\] resnet8_ce_s0 +ce +new", out)
    assert re.search(r"\[2/2\] resnet8_tfd_bu_s0 +tfd/bu +new +\[method.tfd.direction=bottom_up\]", out)
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------- running
def test_sequential_sweep_then_skip_and_config_guard(capsys, tmp_path):
    p = spec_file(tmp_path)
    assert main(["sweep", str(p)]) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "runs" / "sw"
    done = summaries(sweep)
    assert sorted(done) == ["resnet8_ce_s0", "resnet8_ce_s1", "resnet8_tfd_s0", "resnet8_tfd_s1"]
    assert "in this process" in out and "4/4 finished (4 trained now)" in out and "ETA" in out
    assert out.index("start  resnet8_tfd_s0") < out.index("start  resnet8_ce_s1")  # seed-major order
    state = json.loads((sweep / "sweep_state.json").read_text())
    assert state["counts"] == {"finished": 4}
    assert all(st["attempts"] == 1 and st["status"] == "finished" for st in state["runs"].values())
    resolved = (sweep / "sweep.yaml").read_text()
    assert "label: tfd" in resolved and "name: resnet8_ce_s1" in resolved
    assert (sweep / "configs" / "resnet8_tfd_s1.yaml").is_file()

    # re-running trains nothing
    assert main(["sweep", str(p)]) == 0
    out = capsys.readouterr().out
    assert "4 finished, 0 to train" in out and "start" not in out
    assert summaries(sweep) == done
    # a changed recipe is refused instead of mixing configs in one folder
    one_line_error(capsys, ["sweep", str(p), "optim.lr=0.2"], "trained with another config", "optim.lr")
    assert main(["sweep", str(p), "--dry-run", "optim.lr=0.2"]) == 0
    assert "CONFIG DIFFERS" in capsys.readouterr().out
    # a run written before a config key existed (its config.yaml lacks it) is the planned run when the plan holds
    # that key at its default; at another value it is not
    import yaml

    stored = sweep / "resnet8_ce_s0" / "config.yaml"
    cfg = yaml.safe_load(stored.read_text())
    del cfg["schedule"]["power"], cfg["data"]["crop_size"]
    stored.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "CONFIG DIFFERS" not in out and "4 of 4 runs" in out
    assert main(["sweep", str(p), "--dry-run", "schedule.power=2.0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resnet8_ce_s0 +ce +finished \(CONFIG DIFFERS: schedule\.power\)", out), out


def test_parallel_sweep_with_jobs(capsys, tmp_path):
    p = spec_file(tmp_path)
    sweep = tmp_path / "runs" / "sw"
    proc = subprocess.Popen([sys.executable, "-m", "tfdistill", "sweep", str(p), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for_cli())
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (sweep / "sweep_state.json").is_file():
        time.sleep(0.05)
    if proc.poll() is None:  # a second sweep on the same folder is refused while the first works
        one_line_error(capsys, ["sweep", str(p)], "in use by another tfdistill sweep")
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout
    assert "2 processes at a time" in stdout and "4/4 finished" in stdout
    assert len(summaries(sweep)) == 4
    log = (sweep / "logs" / "resnet8_tfd_s1.log").read_text()
    assert "tfdistill _child --modes new" in log and "finished: best top-1" in log


def test_resume_after_sigkill_trains_each_run_exactly_once(capsys, tmp_path):
    p = spec_file(tmp_path, overrides=[*BASE, "epochs=2"])
    sweep = tmp_path / "runs" / "sw"
    proc = subprocess.Popen([sys.executable, "-m", "tfdistill", "sweep", str(p)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env_for_cli())
    second = sweep / "resnet8_tfd_s0"  # the second run in seed-major order
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not (second / "last.pt").is_file():
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.02)
        assert (second / "last.pt").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (second / "summary.json").exists()
    first = summaries(sweep)
    assert list(first) == ["resnet8_ce_s0"]
    state = json.loads((sweep / "sweep_state.json").read_text())
    assert state["runs"]["resnet8_tfd_s0"]["status"] == "running"  # what the killed sweep left behind

    assert main(["sweep", str(p)]) == 0  # the same command again
    out = capsys.readouterr().out
    assert "1 finished, 3 to train" in out and "resnet8_tfd_s0  (resume after epoch" in out
    after = summaries(sweep)
    assert len(after) == 4 and after["resnet8_ce_s0"] == first["resnet8_ce_s0"]
    for run in after:
        log = (sweep / run / "train.log").read_text()
        assert log.count("finished: best top-1") == 1, (run, log)
        rows = [json.loads(x) for x in (sweep / run / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [1, 2]
    assert "resumed after epoch" in (second / "train.log").read_text()
    assert json.loads((sweep / "sweep_state.json").read_text())["runs"]["resnet8_tfd_s0"]["attempts"] == 2


def test_failed_run_is_recorded_and_the_sweep_goes_on(capsys, tmp_path):
    p = spec_file(tmp_path, seeds=[0], grid=[{"methods": ["tfd"], "variants": {"boom": ["optim.lr=1e12"]}},
                                             {"methods": ["ce"]}])  # the failing run first, then one that works
    assert main(["sweep", str(p)]) == 1
    out = capsys.readouterr().out
    assert out.index("FAILED resnet8_tfd_boom_s0") < out.index("start  resnet8_ce_s0")
    sweep = tmp_path / "runs" / "sw"
    marker = sweep / "resnet8_tfd_boom_s0" / "FAILED"
    assert marker.is_file() and "NaN" in marker.read_text().splitlines()[0]
    assert "FAILED resnet8_tfd_boom_s0" in out and "1/2 finished, 1 FAILED" in out
    assert (sweep / "resnet8_ce_s0" / "summary.json").is_file()
    state = json.loads((sweep / "sweep_state.json").read_text())["runs"]["resnet8_tfd_boom_s0"]
    assert state["status"] == "failed" and "NaN" in state["error"]
    # --skip-failed leaves it; a plain re-run retries it (and it fails again, deterministically)
    assert main(["sweep", str(p), "--skip-failed"]) == 1
    assert "start" not in capsys.readouterr().out
    assert main(["sweep", str(p)]) == 1
    assert "start  resnet8_tfd_boom_s0" in capsys.readouterr().out
    assert json.loads((sweep / "sweep_state.json").read_text())["runs"]["resnet8_tfd_boom_s0"]["attempts"] == 2


def test_gpu_slots_and_a_packing_executor(tmp_path):
    """--gpus maps slots to CUDA_VISIBLE_DEVICES; an executor that packs gets groups of compatible runs (CE and TFD
    here: same data, engine settings and epochs), at most pack_size each, in seed-major order."""
    from tfdistill.sweep import Executor, Outcome, SubprocessExecutor, run_sweep
    from tfdistill.sweep.runner import StartMode

    ex = SubprocessExecutor(4, gpus=["0", "1"])
    assert [ex.environment(i)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "1", "0", "1"]
    assert "OMP_NUM_THREADS" not in ex.environment(0) or "OMP_NUM_THREADS" in os.environ
    assert SubprocessExecutor(2).environment(0)["OMP_NUM_THREADS"] == os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 2)))

    class Batched(Executor):  # stands in for "several runs as one packed group in one process"
        packs = True
        groups: list = []

        def run_group(self, runs, slot, hooks):
            self.groups.append([r.name for r in runs])
            for r in runs:
                hooks.started(r, StartMode())
                r.run_dir.mkdir(parents=True)
                summary = {"last_top1": 50.0, "best_top1": 51.0, "wall_seconds": 1.0}
                (r.run_dir / "summary.json").write_text(json.dumps(summary))
                hooks.finished(r, Outcome("finished", 0, summary=summary))

    plan = plan_sweep(spec_file(tmp_path))
    result = run_sweep(plan, executor=Batched(), echo=lambda s: None)
    assert Batched.groups == [["resnet8_ce_s0", "resnet8_tfd_s0", "resnet8_ce_s1", "resnet8_tfd_s1"]]
    assert result.exit_code == 0 and len(result.trained) == 4

    class Capped(Batched):  # at most 3 runs per group
        groups: list = []
        pack_size = 3

    run_sweep(plan_sweep(spec_file(tmp_path), out_dir=tmp_path / "big"), executor=Capped(), echo=lambda s: None)
    assert Capped.groups == [["resnet8_ce_s0", "resnet8_tfd_s0", "resnet8_ce_s1"], ["resnet8_tfd_s1"]]

    class BySeed(Batched):  # its own grouping rule
        groups: list = []

        def group_key(self, run):
            return str(run.seed)

    run_sweep(plan_sweep(spec_file(tmp_path), out_dir=tmp_path / "seed"), executor=BySeed(), echo=lambda s: None)
    assert BySeed.groups == [["resnet8_ce_s0", "resnet8_tfd_s0"], ["resnet8_ce_s1", "resnet8_tfd_s1"]]

    class SomeAlone(Batched):  # runs that may not be packed become one job each (parallel slots can take them)
        groups: list = []
        pack_size = 3

        def can_pack(self, run):
            return run.method != "ce"

    run_sweep(plan_sweep(spec_file(tmp_path), out_dir=tmp_path / "alone"), executor=SomeAlone(), echo=lambda s: None)
    assert sorted(SomeAlone.groups) == [["resnet8_ce_s0"], ["resnet8_ce_s1"], ["resnet8_tfd_s0", "resnet8_tfd_s1"]]


# ----------------------------------------------------------------------------------------------- shipped specs
SPECS = sorted((REPO / "configs" / "reproduce").glob("*.yaml"))
PAPER = SHARED / "paper" / "tfd-paper.txt"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_expand_and_validate(path):
    spec = load_spec(path)
    missing = missing_methods(spec)
    if missing:
        pytest.skip(f"{path.name}: presets not registered yet: {', '.join(missing)}")
    plan = expand(spec, spec_path=path)
    assert plan.runs and len({r.name for r in plan.runs}) == len(plan.runs)
    assert all(r.cfg.seed == r.seed and r.cfg.model.name == r.model for r in plan.runs)
    for r in plan.runs:
        assert bool(r.teacher) == bool(r.cfg.teacher.model)
    if PAPER.is_file():  # every number is copied verbatim from the paper's text
        text = PAPER.read_text()
        for student, entries in spec.paper.results.items():
            for label, value in entries.items():
                nums = [value] if isinstance(value, (int, float)) else [value.get("top1"), value.get("gain")]
                for x in nums:
                    if x is not None:
                        assert f"{x:.2f}" in text, (path.name, student, label, x)


def test_reproduce_specs_cover_the_paper():
    names = {p.stem for p in SPECS}
    assert {"teachers", "table1", "table2", "ablation_direction", "ablation_alpha_beta", "techniques", "imagenet",
            "gpu_slice"} <= names
    t1 = load_spec(REPO / "configs" / "reproduce" / "table1.yaml")
    assert list(t1.grid[0].methods) == ["ce", "fitnet", "at", "sp", "ab", "nst", "tfd", "tfd_ls"]
    assert t1.paper.statistic == "best-of-3" and t1.paper.results.resnet32.tfd == 72.73
    assert load_spec(REPO / "configs" / "reproduce" / "ablation_direction.yaml").paper.statistic == "mean-of-3"


@pytest.mark.slow
def test_gpu_slice_script_logic_on_cpu(tmp_path):
    """benchmarks/gpu_reproduce.sh in its CPU mode: dependency guard, data warm-up, throughput probe, epoch budget,
    the sweep under a time limit, the report printed last and copied to $OUT."""
    out = tmp_path / "out"
    out.mkdir()
    env = env_for_cli()
    env.update(OUT=str(out), GPU_SLICE_TINY="1", GPU_SLICE_SEEDS="0", GPU_SLICE_RUNS=str(tmp_path / "runs"),
               GPU_SLICE_DATA_ROOT=str(tmp_path / "no-data"), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_reproduce.sh")], capture_output=True, text=True,
                       timeout=400, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = re.search(r"probe: .*-> (\d+) epochs", r.stdout)
    assert m and 1 <= int(m.group(1)) <= 2, r.stdout
    assert "2/2 finished" in r.stdout
    tail = r.stdout[r.stdout.index("# tfdistill report"):]
    assert "| resnet20 | " in tail and tail.rstrip().splitlines()[-1].startswith("written:")
    assert {"report.md", "report.csv", "report.json", "sweep_state.json", "gains.png"} <= {p.name for p in out.iterdir()}


def test_cifar10_table1_spec_is_the_papers_recipe_on_cifar10():
    """#12: Table 1's four students x {CE, TFD} x 3 seeds x 240 epochs, batch 64, lr 0.05, momentum 0.9, wd 5e-4,
    milestones 150/180/210, on the CIFAR-10 JPEG copy (an image folder), engine settings left to auto, compiled."""
    plan = plan_sweep(REPO / "configs" / "reproduce" / "cifar10_table1.yaml")
    assert len(plan.runs) == 24
    assert {(r.model, r.method, r.seed) for r in plan.runs} == {
        (m, meth, s) for m in ("resnet20", "resnet32", "wrn_16_2", "wrn_40_1") for meth in ("ce", "tfd")
        for s in (0, 1, 2)}
    for r in plan.runs:
        c = r.cfg
        assert (c.epochs, c.data.batch_size, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == \
            (240, 64, 0.05, 0.9, 5e-4)
        assert list(c.schedule.milestones) == [150, 180, 210] and c.schedule.name == "multistep"
        assert c.data.name == "imagefolder" and c.data.root.endswith("cifar10-jpeg")
        assert (c.engine.precision, c.engine.channels_last, c.engine.cuda_graphs) == ("auto", "auto", "auto")
        assert c.engine.compile is True  # 1.28x on 8 packed runs (H100)
        if r.method == "tfd":
            assert (c.method.tfd.alpha, c.method.tfd.beta) == (0.005, 0.0004)


@pytest.mark.slow
def test_table1_slices_stop_report_and_resume_on_cpu(tmp_path):
    """TABLE1=1 benchmarks/gpu_reproduce.sh in its CPU mode: a slice stops at its time limit and prints the report;
    the same command again resumes the sweep (finished runs skipped) until it is done, with a report after it."""
    out = tmp_path / "out"
    out.mkdir()
    env = env_for_cli()
    env.update(OUT=str(out), TABLE1="1", GPU_SLICE_TINY="1", GPU_SLICE_RUNS=str(tmp_path / "runs"),
               GPU_SLICE_DATA_ROOT=str(tmp_path / "no-data"), PYTHON=sys.executable, TABLE1_SLICES="1")
    script = ["bash", str(REPO / "benchmarks" / "gpu_reproduce.sh")]
    first = subprocess.run(script, capture_output=True, text=True, timeout=300,
                           env={**env, "TABLE1_SLICE_S": "8"})  # too short to finish anything
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "table1 slice 1: stopped at the slice limit" in first.stdout
    assert "# tfdistill report" in first.stdout or "no report yet" in first.stdout
    second = subprocess.run(script, capture_output=True, text=True, timeout=400,
                            env={**env, "TABLE1_SLICE_S": "300"})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "table1 slice 1: the sweep is finished" in second.stdout and "2/2 finished" in second.stdout
    tail = second.stdout[second.stdout.index("# tfdistill report"):]
    assert "| resnet20 | " in tail and "Protocol: epochs 2;" in tail and "precision fp32" in tail
    assert {"report.md", "sweep_state.json"} <= {p.name for p in out.iterdir()}
