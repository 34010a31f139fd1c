"""The fault matrix (docs/faults.md): how every run ends, for `train` (one run and a packed group) and `sweep`.

Each cell: a fault at a phase -> one line naming what happened (the stop reason as the last line of train.log where a
run exists), the documented exit code (tfdistill.errors), nothing lost (the last finished epoch resumes bit-exactly),
nothing half-written that looks finished, and `--resume` or the same command continuing.

SIGINT/SIGTERM are real signals sent to this process (``os.kill``) from a hook at the phase, so the CLI's handlers
run as they do in production; SIGKILL, and signals from another process, are subprocess tests.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli
from tfdistill.cli import main
from tfdistill.engine.group import Group

# 2 epochs of 2 steps, resnet8 on synthetic images: about a second in-process
FAST = ["data.name=synthetic", "data.synthetic_train=64", "data.synthetic_test=32", "data.batch_size=32",
        "data.eval_batch_size=32", "model.name=resnet8", "epochs=2", "engine.progress=false",
        "schedule.name=multistep", "schedule.milestones=[2]", "optim.lr=0.05", "engine.device=cpu"]
SIGNALS = {"SIGTERM": (signal.SIGTERM, 143), "SIGINT": (signal.SIGINT, 130)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDISTILL_CACHE", str(tmp_path / "cache"))


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs: one run ``r`` and a packed group of seeds 0 and 1 (``p_s0``, ``p_s1``)."""
    out = tmp_path_factory.mktemp("ref")
    os.environ.setdefault("TFDISTILL_CACHE", str(out / "cache"))
    assert main(["train", *FAST, f"out_dir={out}", "name=r"]) == 0
    assert main(["train", *FAST, f"out_dir={out}", "name=p", "seeds=[0,1]"]) == 0
    return out


def _names(packed: bool) -> list[str]:
    return ["p_s0", "p_s1"] if packed else ["r"]


def _cmd(out: Path, packed: bool) -> list[str]:
    return ["train", *FAST, f"out_dir={out}"] + (["name=p", "seeds=[0,1]"] if packed else ["name=r"])


def _kill_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.5)  # the handler raises here at the latest (it runs between two bytecodes of the main thread)
    raise AssertionError("the signal did not stop the run")


def _at_phase(monkeypatch, phase: str, sig) -> None:
    """Send ``sig`` to this process at ``phase`` of the first training (the hook removes itself)."""
    from tfdistill.engine import build, checkpoint, run, trainer

    fired = []

    def once() -> bool:
        if fired:
            return False
        fired.append(1)
        return True

    if phase == "data":
        for mod in (build, trainer):  # a run alone builds its data in build.py, a packed group in trainer.py
            real_build = mod.build_data

            def build(*a, _real=real_build, **k):
                if once():
                    _kill_self(sig)
                return _real(*a, **k)

            monkeypatch.setattr(mod, "build_data", build)
    elif phase in ("first_epoch", "mid_training"):
        real_epoch = Group.train_epoch
        at = 0 if phase == "first_epoch" else 1

        def train_epoch(self, epoch, *a, **k):
            if epoch == at and once():
                _kill_self(sig)
            return real_epoch(self, epoch, *a, **k)

        monkeypatch.setattr(Group, "train_epoch", train_epoch)
    elif phase == "evaluation":
        real_eval = run.Run.evaluate
        calls = []

        def evaluate(self):
            calls.append(1)
            if len(calls) == 2 and once():  # the evaluation after epoch 2 (of epoch 1 for the 2nd run of a pack)
                _kill_self(sig)
            return real_eval(self)

        monkeypatch.setattr(run.Run, "evaluate", evaluate)
    elif phase == "checkpoint":
        real_save = checkpoint.save_atomic
        calls = []

        def save(obj, path):
            calls.append(path)
            if len(calls) == 2 and once():  # epoch 1's last.pt, written after its best.pt: the signal arrives
                os.kill(os.getpid(), sig)   # between the two writes and waits until the epoch's writes are done
            return real_save(obj, path)

        monkeypatch.setattr(checkpoint, "save_atomic", save)
    else:
        raise ValueError(phase)


PHASES = ["data", "first_epoch", "mid_training", "evaluation", "checkpoint"]


def _cells():
    """SIGTERM at every phase of one run and of the group, SIGINT at mid-training; the rest of the matrix is slow."""
    for signame in SIGNALS:
        for phase in PHASES:
            for packed in (False, True):
                fast = (signame == "SIGTERM" and (not packed or phase in ("mid_training", "evaluation"))) or \
                    (signame == "SIGINT" and phase == "mid_training" and not packed)
                yield pytest.param(signame, phase, packed, id=f"{signame}-{phase}-{'pack' if packed else 'one'}",
                                   marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("signame,phase,packed", list(_cells()))
def test_signal_at_each_phase_of_train(signame, phase, packed, reference, tmp_path, monkeypatch, capsys):
    sig, code = SIGNALS[signame]
    out = tmp_path / "runs"
    _at_phase(monkeypatch, phase, sig)
    assert main(_cmd(out, packed)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfdistill: stopped by" if phase in ("data", "first_epoch")
                                               else "tfdistill: stopped after epoch"), err
    assert signame.split()[0] in err[0] and "Traceback" not in err[0]
    monkeypatch.undo()
    monkeypatch.setenv("TFDISTILL_CACHE", str(tmp_path / "cache"))
    for k, name in enumerate(_names(packed)):
        d = out / name
        assert not (d / "summary.json").exists()  # nothing looks finished
        # nothing to keep (no checkpoint yet): no folder, the same command (or --resume of its group) starts again;
        # in a group stopped during epoch 1's evaluation or checkpoint, the second run had no checkpoint yet
        if phase in ("data", "first_epoch") or (k == 1 and phase in ("evaluation", "checkpoint")):
            assert not d.exists(), list(d.iterdir())
            continue
        last = (d / "train.log").read_text().splitlines()[-1]
        done = torch.load(d / "last.pt", map_location="cpu", weights_only=False)["epoch"]
        assert last.startswith(f"stopped after epoch {done}/2: interrupted by {signame}"), last
        assert f"tfdistill train --resume {d}" in last
        assert not (d / "FAILED").exists()
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows][:done] == list(range(1, done + 1))
        if phase == "checkpoint":  # the writes that the signal fell into were completed first
            best = torch.load(d / "best.pt", map_location="cpu", weights_only=False)
            ckpt = torch.load(d / "last.pt", map_location="cpu", weights_only=False)
            assert best["epoch"] == ckpt["best_epoch"] == done
    resume = [] if phase in ("data", "first_epoch") else ["--resume"]
    assert main(_cmd(out, packed) + resume) == 0
    for name in _names(packed):
        assert (out / name / "summary.json").is_file()
        _same_weights(out / name, reference / name)


def test_sigterm_in_a_packed_sweep_and_the_same_command_continues(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "sw", "recipe": "demo", "out_dir": str(tmp_path / "runs"), "seeds": [0],
                                "models": ["resnet8"], "overrides": [o for o in FAST if not o.startswith("model.")],
                                "grid": {"methods": ["ce", "tfd"]}}))
    _at_phase(monkeypatch, "mid_training", signal.SIGTERM)
    assert main(["sweep", str(spec), "--pack", "2"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfdistill: sweep sw stopped by SIGTERM") and "re-run" in err[0]
    state = json.loads(next((tmp_path / "runs").rglob("sweep_state.json")).read_text())
    assert {r["status"] for r in state["runs"].values()} == {"interrupted"}
    for d in (tmp_path / "runs" / "sw").glob("resnet8_*"):
        assert "interrupted by SIGTERM" in (d / "train.log").read_text().splitlines()[-1]
    monkeypatch.undo()
    assert main(["sweep", str(spec), "--pack", "2"]) == 0
    state = json.loads(next((tmp_path / "runs").rglob("sweep_state.json")).read_text())
    assert {r["status"] for r in state["runs"].values()} == {"finished"}


# ------------------------------------------------------------------ the disk: full, read-only, vanishing
def _fail_last_pt_of_epoch(monkeypatch, epoch: int, exc: OSError) -> None:
    """The first write of a last.pt holding ``epoch`` fails with ``exc``."""
    from tfdistill.engine import checkpoint

    real, failed = checkpoint.save_atomic, []

    def save(obj, path):
        if Path(path).name == "last.pt" and obj.get("epoch") == epoch and not failed:
            failed.append(path)
            raise exc
        return real(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", save)


@pytest.mark.parametrize("packed", [False, True], ids=["one", "pack"])
def test_disk_full_at_a_checkpoint_write(packed, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    _fail_last_pt_of_epoch(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device", str(out / "last.pt")))
    assert main(_cmd(out, packed)) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0], err
    for name in _names(packed):
        d = out / name
        last = (d / "train.log").read_text().splitlines()[-1]
        assert last.startswith("stopped after epoch 1/") and "OSError: [Errno 28] No space left on device" in last
        assert f"--resume {d}" in last, last
        assert not (d / "summary.json").exists()
        assert not list(d.glob(".*.tmp*"))  # no torn temporary file left behind
    monkeypatch.undo()
    assert main(_cmd(out, packed) + ["--resume"]) == 0
    for name in _names(packed):
        _same_weights(out / name, reference / name)
        assert not (out / name / "FAILED").exists()


def test_disk_full_at_the_first_checkpoint_removes_the_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    _fail_last_pt_of_epoch(monkeypatch, 1, OSError(errno.ENOSPC, "No space left on device", str(out / "last.pt")))
    assert main(_cmd(out, False)) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "run the same command again" in err[0], err
    assert not (out / "r").exists()  # nothing to keep, nothing half-written
    monkeypatch.undo()
    assert main(_cmd(out, False)) == 0


def test_disk_full_at_the_summary_leaves_the_run_unfinished_and_resumable(reference, tmp_path, monkeypatch,
                                                                          capsys):
    from tfdistill.rundir import RunDir

    out = tmp_path / "runs"

    def full(self, summary):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.summary))

    monkeypatch.setattr(RunDir, "write_summary", full)
    assert main(_cmd(out, False)) == 4
    assert "No space left on device" in capsys.readouterr().err
    assert not (out / "r" / "summary.json").exists()
    monkeypatch.undo()
    assert main(_cmd(out, False) + ["--resume"]) == 0
    assert json.loads((out / "r" / "summary.json").read_text())["status"] == "finished"
    _same_weights(out / "r", reference / "r")


def test_run_directory_vanishing_mid_training(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    real = Group.train_epoch

    def vanish(self, epoch, *a, **k):
        if epoch == 1:
            shutil.rmtree(out)
        return real(self, epoch, *a, **k)

    monkeypatch.setattr(Group, "train_epoch", vanish)
    assert main(_cmd(out, False)) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No such file or directory" in err[0], err
    monkeypatch.undo()
    assert main(_cmd(out, False)) == 0  # nothing was left: the same command starts again


def _read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail with EROFS (root ignores permission bits, so it is injected where files are
    opened, created and renamed)."""
    import builtins
    import pathlib

    root = str(root.resolve())

    def under(p) -> bool:
        try:
            return os.path.abspath(os.fspath(p)).startswith(root)
        except TypeError:
            return False

    def erofs(p):
        return OSError(errno.EROFS, "Read-only file system", os.fspath(p))

    real_open, real_os_open, real_mkdir, real_replace = builtins.open, os.open, pathlib.Path.mkdir, os.replace

    def _open(file, mode="r", *a, **k):
        if under(file) and any(c in mode for c in "wax+"):
            raise erofs(file)
        return real_open(file, mode, *a, **k)

    def _os_open(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise erofs(path)
        return real_os_open(path, flags, *a, **k)

    def _mkdir(self, *a, **k):
        if under(self) and not self.is_dir():
            raise erofs(self)
        return real_mkdir(self, *a, **k)

    def _replace(src, dst, *a, **k):
        if under(dst) or under(src):
            raise erofs(dst)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(builtins, "open", _open)
    monkeypatch.setattr(os, "open", _os_open)
    monkeypatch.setattr(pathlib.Path, "mkdir", _mkdir)
    monkeypatch.setattr(os, "replace", _replace)


def test_read_only_output_is_one_line_in_every_subcommand(reference, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "sw", "recipe": "demo", "out_dir": str(ro), "seeds": [0],
                                "models": ["resnet8"], "overrides": [o for o in FAST if not o.startswith("model.")],
                                "grid": {"methods": ["ce"]}}))
    _read_only(monkeypatch, ro)
    cases = {
        "train": ["train", *FAST, f"out_dir={ro}", "name=r"],
        "train packed": ["train", *FAST, f"out_dir={ro}", "name=p", "seeds=[0,1]"],
        "sweep": ["sweep", str(spec)],
        "report": ["report", str(reference), "--out-dir", str(ro / "report")],
        "demo": ["demo", "--out-dir", str(ro), "--epochs", "1"],
    }
    try:
        import pytorch_grad_cam  # noqa: F401
        cases["cam"] = ["cam", "--checkpoint", str(reference / "r" / "last.pt"), "--images", "test", "--num", "2",
                        "--out", str(ro / "grid.png"), "--device", "cpu"]
    except ImportError:
        pass
    for what, argv in cases.items():
        assert main(argv) == 4, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tfdistill: error: Read-only file system"), (what, err)
    assert not list(ro.iterdir())


# ------------------------------------------------------------------ what is on the disk already
def _interrupted_run(out: Path, monkeypatch) -> Path:
    """A run stopped (SIGTERM) after epoch 1 of 3."""
    _at_phase(monkeypatch, "mid_training", signal.SIGTERM)
    assert main(_cmd(out, False)) == 143
    monkeypatch.undo()
    return out / "r"


def test_truncated_last_pt_is_one_line_and_overwrite_starts_again(tmp_path, monkeypatch, capsys):
    d = _interrupted_run(tmp_path / "runs", monkeypatch)
    capsys.readouterr()
    data = (d / "last.pt").read_bytes()
    (d / "last.pt").write_bytes(data[: len(data) // 2])
    assert main(_cmd(tmp_path / "runs", False) + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0] and "truncated" in err[0], err
    assert main(_cmd(tmp_path / "runs", False) + ["--overwrite"]) == 0


def test_last_pt_of_another_run_is_refused(tmp_path, monkeypatch, capsys, reference):
    d = _interrupted_run(tmp_path / "runs", monkeypatch)
    capsys.readouterr()
    shutil.copy(reference / "p_s1" / "last.pt", d / "last.pt")  # seed 1's checkpoint in seed 0's run
    assert main(_cmd(tmp_path / "runs", False) + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and "seed" in err[0], err


def test_torn_last_line_of_metrics_is_dropped_on_resume(tmp_path, monkeypatch, reference):
    d = _interrupted_run(tmp_path / "runs", monkeypatch)
    with open(d / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "lr": 0.05, "lo')  # a kill in the middle of the append
    assert main(_cmd(tmp_path / "runs", False) + ["--resume"]) == 0
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    _same_weights(d, reference / "r")


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path, monkeypatch, capsys):
    d = _interrupted_run(tmp_path / "runs", monkeypatch)
    capsys.readouterr()
    holder = subprocess.Popen(  # another process holding the run directory (as a training process does)
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.write(fd, b'4242'); print('held', flush=True); time.sleep(120)",
         str(d / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (d / "train.log").read_text()
        assert main(_cmd(tmp_path / "runs", False) + ["--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another tfdistill process (pid 4242)" in err[0], err
        assert (d / "train.log").read_text() == before  # the refused process wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert main(_cmd(tmp_path / "runs", False) + ["--resume"]) == 0


# ------------------------------------------------------------------ signals from another process
def _popen(args: list[str], env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO / "src") + os.pathsep
             + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "tfdistill", *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"ended early (exit {proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _rows(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def test_sigterm_from_outside_stops_train_gracefully_and_resume_is_bit_exact(tmp_path):
    """`timeout -s TERM N tfdistill train ...`: train.log ends in the stop reason, exit 143, and --resume finishes
    the run with the weights of the uninterrupted one."""
    out = tmp_path / "runs"
    assert main(["train", *FAST, "epochs=5", f"out_dir={tmp_path / 'ref'}", "name=r"]) == 0
    proc = _popen([*_cmd(out, False), "epochs=5"])
    _wait_for(lambda: _rows(out / "r" / "metrics.jsonl") >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    last = (out / "r" / "train.log").read_text().splitlines()[-1]
    assert last.startswith("stopped after epoch") and "interrupted by SIGTERM" in last, last
    assert stderr.strip() == f"tfdistill: {last}"
    res = run_cli(["train", "--resume", str(out / "r")])  # the run directory alone is enough
    assert res.returncode == 0, res.stderr
    _same_weights(out / "r", tmp_path / "ref" / "r")


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["one", "pack"])
@pytest.mark.parametrize("phase", ["data", "first_epoch", "mid_training"])
def test_sigkill_at_a_phase_then_resume_or_the_same_command_continues(phase, packed, reference, tmp_path):
    """SIGKILL leaves no stop line (nothing can run), but nothing half-written: the last finished epoch resumes
    bit-exactly; a run killed before its first checkpoint has nothing to resume (--resume says so in one line and
    names --overwrite, which starts it again)."""
    out = tmp_path / "runs"
    proc = _popen(_cmd(out, packed))
    first = out / _names(packed)[0]
    if phase == "data":
        time.sleep(1.0)  # torch is still importing, or the data is being built: nothing written yet
    elif phase == "first_epoch":
        _wait_for(lambda: (first / "config.yaml").is_file(), proc)
    else:  # every run has its first checkpoint (the metrics row is appended before last.pt is written)
        _wait_for(lambda: all((out / n / "last.pt").is_file() for n in _names(packed)), proc)
    proc.kill()
    proc.communicate()
    for name in _names(packed):
        assert not (out / name / "summary.json").exists()
    if phase == "first_epoch":
        res = run_cli([*_cmd(out, packed), "--resume"])
        assert res.returncode == 2 and "no last.pt" in res.stderr and "--overwrite" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = run_cli([*_cmd(out, packed), *{"data": [], "first_epoch": ["--overwrite"]}.get(phase, ["--resume"])])
    assert res.returncode == 0, res.stderr
    for name in _names(packed):
        _same_weights(out / name, reference / name)


@pytest.mark.slow
def test_two_train_processes_on_one_new_run_directory(tmp_path):
    out = tmp_path / "runs"
    procs = [_popen(_cmd(out, False)) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[2] == 2)
    assert len(loser[1].strip().splitlines()) == 1 and ("in use" in loser[1] or "already exists" in loser[1])
    assert (out / "r" / "summary.json").is_file()


@pytest.mark.slow
def test_sigterm_to_a_subprocess_sweep_stops_its_children_gracefully(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "sw", "recipe": "demo", "out_dir": str(tmp_path / "runs"), "seeds": [0],
                                "models": ["resnet8"], "overrides": [*[o for o in FAST if not o.startswith("model.")],
                                                                     "epochs=6"],
                                "grid": {"methods": ["ce", "tfd"]}}))
    proc = _popen(["sweep", str(spec), "--jobs", "2"])
    sw = tmp_path / "runs" / "sw"
    _wait_for(lambda: sum(_rows(p) for p in sw.glob("*/metrics.jsonl")) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("tfdistill: sweep sw stopped by SIGTERM")
    for d in sw.glob("resnet8_*"):
        if (d / "train.log").exists() and not (d / "summary.json").exists():
            assert "interrupted by SIGTERM" in (d / "train.log").read_text().splitlines()[-1]
    res = run_cli(["sweep", str(spec), "--jobs", "2"])
    assert res.returncode == 0, res.stdout + res.stderr
