"""`tfdistill sweep --executor slurm`: submitit jobs (tested with submitit's local executor: real submitit code, real
subprocesses), requeue after preemption with a bit-exact resume, no duplicate submissions, `--status`, and the
options' errors."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from tfdistill.cli import main
from tfdistill.engine.checkpoint import load_checkpoint
from tfdistill.sweep import plan_sweep, run_sweep

BASE = [o for o in TINY if not o.startswith("model.name=")]


def spec_file(tmp_path: Path, filename: str = "spec.yaml", **fields) -> Path:
    spec = {"name": "sl", "recipe": "cifar100/paper", "out_dir": str(tmp_path / "runs"), "seeds": [0],
            "models": ["resnet8"], "overrides": BASE, "grid": {"methods": ["ce", "tfd"]}}
    spec.update(fields)
    path = tmp_path / filename
    path.write_text(json.dumps(spec))
    return path


def one_line_error(capsys, argv, *needles, code=2):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def wait_for(cond, what: str, timeout: float = 150.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_requeued_job_resumes_bit_exactly_and_nothing_is_submitted_twice(capsys, tmp_path, monkeypatch):
    """Two identical runs (variants a and b, no overrides) as two submitit jobs; job a gets the preemption signal
    (SIGUSR2, what Slurm sends) after its first checkpoint: submitit requeues it, it resumes from last.pt and ends
    bit-identical to b, which was never interrupted."""
    pytest.importorskip("submitit")
    from tfdistill.sweep.slurm import LauncherOptions, SlurmExecutor

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs inherit it: both runs compute with one thread
    p = spec_file(tmp_path, overrides=[*BASE, "epochs=3", "engine.device=cpu"],
                  grid={"methods": ["tfd"], "variants": {"a": [], "b": []}})
    sweep = tmp_path / "runs" / "sl"
    a, b = sweep / "resnet8_tfd_a_s0", sweep / "resnet8_tfd_b_s0"
    options = LauncherOptions(time="10", gpus_per_job=0, cpus_per_job=1)
    ex = SlurmExecutor(options, cluster="local")
    res = run_sweep(plan_sweep(p), executor=ex, echo=print)
    assert sorted(res.submitted) == [a.name, b.name] and len(ex.jobs) == 2 and res.exit_code == 0
    out = capsys.readouterr().out
    assert "2 to submit as 2 job(s)" in out and "--status" in out
    jobs = json.loads((sweep / "jobs.json").read_text())["jobs"]
    job_a = next(j for j in jobs if j["runs"] == [a.name])

    # a second invocation while the jobs are queued or running submits nothing
    ex2 = SlurmExecutor(options, cluster="local")
    res2 = run_sweep(plan_sweep(p), executor=ex2, echo=print)
    assert res2.submitted == [] and ex2.jobs == []
    assert "2 in queued or running jobs, 0 to submit" in capsys.readouterr().out
    assert len(json.loads((sweep / "jobs.json").read_text())["jobs"]) == 2

    # preempt job a after its first checkpoint
    beat = Path(job_a["folder"]) / "job.json"
    wait_for(lambda: (a / "last.pt").is_file() and beat.is_file(), "job a's first checkpoint")
    assert not (a / "summary.json").exists(), "the run finished before it could be preempted (too fast)"
    os.kill(json.loads(beat.read_text())["pid"], signal.SIGUSR2)
    wait_for(lambda: (a / "summary.json").is_file() and (b / "summary.json").is_file(), "both runs to finish")
    wait_for(lambda: all(j.done() for j in ex.jobs), "the jobs to end", timeout=30)

    assert json.loads(beat.read_text())["attempts"] == 2  # requeued once, same job id
    log_a = (a / "train.log").read_text()
    assert "interrupted" in log_a and "resumed after epoch" in log_a and "resumed" not in (b / "train.log").read_text()
    assert not (a / "FAILED").exists()
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["epoch"] == cb["epoch"] and ca["model"].keys() == cb["model"].keys()
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    ra, rb = ([json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (a, b))
    assert [x["epoch"] for x in ra] == [1, 2, 3] and [x["loss"] for x in ra] == [x["loss"] for x in rb]

    assert main(["sweep", str(p), "--status"]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out and "jobs: 2 submitted" in out
    res3 = run_sweep(plan_sweep(p), executor=SlurmExecutor(options, cluster="local"), echo=print)
    assert res3.submitted == [] and "2 finished" in capsys.readouterr().out


def test_status_reads_the_folder_without_slurm(capsys, tmp_path):
    p = spec_file(tmp_path, seeds=[0, 1])
    assert main(["sweep", str(p), "--status"]) == 0
    out = capsys.readouterr().out
    assert "4 pending" in out and "resnet8_tfd_s1" in out
    sweep = tmp_path / "runs" / "sl"
    (sweep / "resnet8_ce_s0").mkdir(parents=True)
    (sweep / "resnet8_ce_s0" / "summary.json").write_text(json.dumps({"last_top1": 12.5, "best_top1": 13.0}))
    (sweep / "resnet8_tfd_s0").mkdir()
    (sweep / "resnet8_tfd_s0" / "FAILED").write_text("DivergenceError: loss became NaN\n")
    # a job that ended without finishing its run counts as failed (the local job id is a pid that is gone)
    (sweep / "jobs.json").write_text(json.dumps({"jobs": [
        {"id": "999999999", "cluster": "local", "runs": ["resnet8_tfd_s1"], "submitted_s": 0,
         "folder": str(sweep / "jobs" / "999999999")}]}))
    assert main(["sweep", str(p), "--status"]) == 1
    out = capsys.readouterr().out
    assert "1 done, 2 failed, 1 pending" in out
    assert "last 12.50%" in out and "loss became NaN" in out and "job 999999999 (failed) ended before" in out


def test_slurm_options_and_their_errors(capsys, tmp_path, monkeypatch):
    from tfdistill.sweep.slurm import launcher_options, parse_minutes

    p = spec_file(tmp_path, launcher={"partition": "gpu", "time": "2:00:00", "array_parallelism": 4})
    plan = plan_sweep(p)
    o = launcher_options(plan.spec.launcher, time="90", partition=None, cpus_per_job=4)
    assert (o.partition, o.time, o.array_parallelism, o.cpus_per_job, o.gpus_per_job) == ("gpu", "90", 4, 4, 1)
    assert [parse_minutes(t) for t in ("90", "1:30:00", "1-00:00:00", "0:30")] == [90, 90, 1440, 30]
    one_line_error(capsys, ["sweep", str(spec_file(tmp_path, "bad.yaml", launcher={"partiton": "x"})), "--dry-run"],
                   "unknown key 'launcher.partiton'")
    one_line_error(capsys, ["sweep", str(p), "--partition", "gpu"], "--partition", "--executor slurm")
    one_line_error(capsys, ["sweep", str(p), "--executor", "slurm", "--time", "soon"], "--time 'soon'", "H:MM:SS")
    one_line_error(capsys, ["sweep", str(p), "--executor", "slurm", "--gpus-per-job", "-1"], "--gpus-per-job -1")
    with pytest.raises(SystemExit):  # argparse: the valid choices
        main(["sweep", str(p), "--executor", "pbs"])
    assert "choose from 'local', 'slurm'" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    if "submitit" in sys.modules or _has_submitit():
        one_line_error(capsys, ["sweep", str(p), "--executor", "slurm"], "sbatch not found", "--executor local")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    one_line_error(capsys, ["sweep", str(p), "--executor", "slurm"], 'pip install -e ".[slurm]"')
    assert not list((tmp_path / "runs" / "sl").glob("*/config.yaml"))  # nothing trained or submitted


def _has_submitit() -> bool:
    try:
        import submitit  # noqa: F401
    except ImportError:
        return False
    return True


def test_hidden_child_command_checks_its_modes(capsys, tmp_path):
    one_line_error(capsys, ["_child", "a.yaml", "b.yaml", "--modes", "new"], "one mode per config", "new, resume")
    one_line_error(capsys, ["_child", "a.yaml", "--modes", "fresh"], "fresh")
