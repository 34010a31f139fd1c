"""DistributedDataParallel on the CPU (gloo): ``torchrun --nproc_per_node=2`` against one process.

What is compared, and why it is exact enough
--------------------------------------------
``data.batch_size`` is the *global* batch: rank r trains on positions r::2 of every global batch (augmentation
drawn for the global batch), DDP averages the two ranks' gradients, and metric sums / eval counts are all-reduced.
For a model whose loss is a mean of per-sample terms, the gradient of the global-batch mean equals the average of
the two half-batch means, so a 2-process run is the *same computation* as a 1-process run up to float32
summation order (~1e-7 relative per step). BatchNorm breaks this (each rank normalises over its half batch), and
PyTorch's SyncBatchNorm is GPU-only, so the equality test uses a BatchNorm-free CNN (registered here) trained
with CE + TFD's depth term (alpha=1, beta=0: a per-sample mean through the feature taps; TFD's width term ranks
channels by a *batch* mean, which is not decomposable either). Final weights must agree to ~1e-5 and every
epoch's loss to 1e-4 relative; a real sharding or reduction bug (ranks seeing the same samples, gradients summed
instead of averaged, metrics from rank 0 only) moves weights by ~1e-2 and losses by percents, so it cannot pass.
The BatchNorm network (resnet8) is trained through the real ``torchrun -m tfdistill train`` entry point and must
stay close to the 1-process loss curve (not equal). Resume under 2 processes is checked bit for bit against the
uninterrupted 2-process run. CRD's memory bank must be bit-identical on both ranks after training, and the
all-gathered update on halves must equal the 1-process update on the whole batch.

This file is also the torchrun worker script (``__main__`` below).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLAIN_CNN = "test_plain_cnn"


class PlainCNN(nn.Module):
    """A tiny BatchNorm-free CNN (three stages at 32/16/8 px, then pooled features and a classifier)."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def register_plain_cnn() -> None:
    from tfdistill.models import MODELS, register_model

    if PLAIN_CNN not in MODELS:
        register_model(PLAIN_CNN)(lambda num_classes=10: PlainCNN(num_classes))


# Shared by the 1- and 2-process runs: 128 images, global batch 32 -> 4 steps per epoch.
BASE = [
    "data.name=synthetic", "data.synthetic_train=128", "data.synthetic_test=64", "data.batch_size=32",
    "data.eval_batch_size=32", "engine.progress=false", "engine.device=cpu", "engine.tensorboard=false",
    "schedule.name=cosine", "optim.lr=0.05",
]
EXACT = [*BASE, f"model.name={PLAIN_CNN}", "epochs=3", "method.name=tfd", "method.tfd.alpha=1.0",
         "method.tfd.beta=0.0", "name=r"]


def torchrun(args: list[str], nproc: int = 2, module: bool = False, timeout: float = 240):
    """``torchrun --standalone --nproc_per_node=N`` (as ``python -m torch.distributed.run``) on this file or
    ``-m tfdistill``; gloo on the CPU."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    target = ["-m", "tfdistill"] if module else [str(Path(__file__).resolve())]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target,
           *args]
    # its own process group: on a timeout the launcher *and* its workers are killed (a hung worker would otherwise
    # outlive the test and load the machine for the rest of the suite)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _one_process(overrides: list[str]):
    from tfdistill.config import load_config
    from tfdistill.engine import train

    register_plain_cnn()
    return train(load_config(None, overrides), echo=lambda s: None)


# ----------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def exact_runs(tmp_path_factory):
    """The BatchNorm-free recipe trained by one process (in this one) and by 2 torchrun processes."""
    tmp = tmp_path_factory.mktemp("ddp_exact")
    one = _one_process([*EXACT, f"out_dir={tmp / 'one'}"])
    _ok(torchrun([str(tmp / "info_a"), "--", *EXACT, f"out_dir={tmp / 'two'}"]))
    return tmp, one


def test_two_processes_equal_one_process(exact_runs):
    from tfdistill.engine import load_checkpoint
    from tfdistill.models import create_model

    tmp_path, one = exact_runs
    r1, r2 = tmp_path / "one" / "r", tmp_path / "two" / "r"

    # the same loss curve, accuracies and weights as one process with the same global batch
    a, b = _rows(r1), _rows(r2)
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert y["loss"] == _approx(x["loss"], 1e-4)
        assert set(y["terms"]) == {"ce", "tfd_depth"}
        for k in ("ce", "tfd_depth"):
            assert y["terms"][k] == _approx(x["terms"][k], 1e-4), k
        assert abs(y["train_acc"] - x["train_acc"]) <= 100 / 128 + 1e-9  # at most one borderline sample
        assert abs(y["test_top1"] - x["test_top1"]) <= 100 / 64 + 1e-9
        assert y["test_loss"] == _approx(x["test_loss"], 1e-4)
    ca, cb = load_checkpoint(r1 / "last.pt"), load_checkpoint(r2 / "last.pt")
    assert set(ca["model"]) == set(cb["model"])  # unwrapped: no "module." prefixes
    for k, v in ca["model"].items():
        torch.testing.assert_close(cb["model"][k], v, rtol=1e-4, atol=2e-5, msg=k)
    fresh = create_model(PLAIN_CNN, num_classes=10)
    fresh.load_state_dict(cb["model"], strict=True)

    # only rank 0 wrote the run directory: each epoch logged once, no stray files, world size recorded
    s = json.loads((r2 / "summary.json").read_text())
    assert s["world_size"] == 2 and one.summary["world_size"] == 1
    log = (r2 / "train.log").read_text()
    assert sum(line.startswith("epoch ") for line in log.splitlines()) == 3
    # (.lock: the run directory's flock, held by the one process that trains it)
    assert sorted(p.name for p in r2.iterdir() if p.name != ".lock") == [
        "best.pt", "config.yaml", "fingerprint.json", "last.pt", "metrics.jsonl", "summary.json", "train.log"]
    assert len(cb["rng_ranks"]) == 2
    info = [json.loads((tmp_path / "info_a" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in info] == [2, 2] and all(i["wrapped"] == "DistributedDataParallel" for i in info)
    assert [(i["batch"], i["steps"]) for i in info] == [(16, 4), (16, 4)]  # half of each global batch of 32
    assert info[0]["destroyed"] and info[1]["destroyed"]  # the process group is torn down at the end


def test_resume_under_two_processes_is_bit_identical(exact_runs, tmp_path):
    """Crash both ranks right after epoch 1's checkpoint, resume with 2 processes, compare bit for bit."""
    from tfdistill.engine import load_checkpoint

    cb = load_checkpoint(exact_runs[0] / "two" / "r" / "last.pt")
    b = _rows(exact_runs[0] / "two" / "r")
    crash = torchrun([str(tmp_path / "info_b"), "--stop-after", "1", "--", *EXACT, f"out_dir={tmp_path / 'res'}"])
    assert crash.returncode != 0
    r3 = tmp_path / "res" / "r"
    assert load_checkpoint(r3 / "last.pt")["epoch"] == 1 and not (r3 / "summary.json").exists()
    _ok(torchrun([str(tmp_path / "info_c"), "--resume", "--", *EXACT, f"out_dir={tmp_path / 'res'}"]))
    cc = load_checkpoint(r3 / "last.pt")
    assert cc["epoch"] == 3
    for k, v in cb["model"].items():
        assert torch.equal(cc["model"][k], v), k
    assert [r["epoch"] for r in _rows(r3)] == [1, 2, 3]
    assert [r["test_top1"] for r in _rows(r3)] == [r["test_top1"] for r in b]
    assert "resumed after epoch 1" in (r3 / "train.log").read_text()


def test_batchnorm_model_through_torchrun_cli(tmp_path):
    """The real entry point: ``torchrun -m tfdistill train`` with BatchNorm (close to one process, not equal)."""
    over = [*BASE, "model.name=resnet8", "epochs=2", "name=bn", "method.name=tfd"]
    one = _one_process([*over, f"out_dir={tmp_path / 'one'}"])
    proc = torchrun(["train", *over, f"out_dir={tmp_path / 'two'}"], module=True)
    _ok(proc)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("finished: best top-1")]
    assert len(summary) == 1  # the result line comes from rank 0 only
    a, b = _rows(tmp_path / "one" / "bn"), _rows(tmp_path / "two" / "bn")
    assert len(b) == 2
    for x, y in zip(a, b):
        assert abs(y["loss"] - x["loss"]) <= 0.05 * x["loss"], (x["loss"], y["loss"])
    assert b[-1]["loss"] < b[0]["loss"]
    assert one.summary["world_size"] == 1
    # the same command again: rank 0's "already exists" error reaches every rank, so none hangs waiting for it
    # (the timeout fails the test); how many ranks print it before the launcher stops the others depends on the
    # torch version (2.4's torchrun ends the remaining workers as soon as the first one exits)
    again = torchrun(["train", *over, f"out_dir={tmp_path / 'two'}"], module=True, timeout=120)
    assert again.returncode != 0
    assert again.stderr.count("already exists") >= 1


def test_pre_stage_only_parameters_under_torchrun(tmp_path):
    """AB as CRD ran it (connectors trained by the pre-stage only, then cross-entropy): the connectors are frozen
    for the main stage, so DDP -- which cannot reduce parameters that had gradients in the pre-stage and none
    afterwards -- leaves them alone; they keep their pre-stage values."""
    teacher = _one_process([*BASE, "model.name=resnet8", "epochs=1", "name=t", f"out_dir={tmp_path}"])
    over = [*BASE, "model.name=resnet8", "epochs=1", "name=ab", f"out_dir={tmp_path}", "method.name=ab_crd",
            "method.ab.init_epochs=1", "teacher.model=resnet8", f"teacher.checkpoint={teacher.run_dir / 'best.pt'}"]
    proc = torchrun(["train", *over], module=True)
    _ok(proc)
    assert "pre-stage ab_init 1/1" in proc.stdout
    assert json.loads((tmp_path / "ab" / "summary.json").read_text())["status"] == "finished"


def test_crd_memory_bank_identical_across_ranks(tmp_path):
    """CRD (+ FT, whose paraphraser is trained by a pre-stage and frozen afterwards) under 2 processes."""
    teacher = _one_process([*BASE, "model.name=resnet8", "epochs=1", "name=t", f"out_dir={tmp_path}"])
    over = [*BASE, "model.name=resnet8", "epochs=1", "name=crd", f"out_dir={tmp_path}", "method.name=crd+ft",
            "method.crd.nce_k=16", "method.crd.feat_dim=8", "method.ft.init_epochs=1", "teacher.model=resnet8",
            f"teacher.checkpoint={teacher.run_dir / 'best.pt'}"]
    _ok(torchrun([str(tmp_path / "info"), "--dump", "--crd-check", "--", *over]))
    s0 = torch.load(tmp_path / "info" / "distillers_rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "info" / "distillers_rank1.pt", weights_only=True)
    for k in ("crd.memory.memory_s", "crd.memory.memory_t", "crd.memory.labels", "crd.memory.z"):
        assert torch.equal(s0[k], s1[k]), k
    # the replicas of every other trained module agree too: DDP (embeddings, FT's translator) and the engine's
    # own gradient all-reduce in the pre-stage (FT's paraphraser, which DDP must not track once it is frozen)
    assert any(k.startswith("ft.paraphraser.") for k in s0) and any(k.startswith("ft.translator.") for k in s0)
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k], rtol=1e-5, atol=1e-6, msg=k)
    # every row of the bank got its update on both ranks (each rank alone sees only half of the samples)
    assert bool((s0["crd.memory.labels"] >= 0).all())
    norms = s0["crd.memory.memory_s"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    info = [json.loads((tmp_path / "info" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for i in info:
        assert i["teacher_in_ddp"] is False and i["teacher_training"] is False
        assert i["crd_update_equal"] is True  # gathered update of the halves == 1-process update of the batch
        assert "SyncBatchNorm is GPU-only" in i["sync_bn_cpu_error"]
    # the checkpoint holds the (rank-identical) bank
    ck = torch.load(tmp_path / "crd" / "last.pt", weights_only=True)
    assert torch.equal(ck["method"]["crd.memory.memory_t"], s0["crd.memory.memory_t"])


def _approx(x: float, rel: float):
    return pytest.approx(x, rel=rel, abs=1e-7)


# ----------------------------------------------------------------------------------------------- worker
def _worker(argv: list[str]) -> int:
    """``torchrun ... test_distributed.py INFO_DIR [--resume] [--stop-after K] [--dump] [--crd-check] -- OVERRIDES``"""
    import torch.distributed as dist

    sys.path.insert(0, str(REPO / "src"))
    from tfdistill.config import load_config
    from tfdistill.engine.distributed import cleanup_distributed, gather_rows
    from tfdistill.engine import build_group
    from tfdistill.errors import ConfigError

    register_plain_cnn()
    sep = argv.index("--")
    opts, overrides = argv[:sep], argv[sep + 1:]
    out = Path(opts[0])
    stop = int(opts[opts.index("--stop-after") + 1]) if "--stop-after" in opts else 0
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, overrides)
    group = build_group([cfg], resume="--resume" in opts, echo=lambda s: None)
    trainer = group.runs[0]
    rank = trainer.info.rank
    if stop:
        save = trainer.save

        def save_then_crash(best: bool) -> None:
            save(best)
            if trainer.epoch == stop:
                dist.barrier()
                raise SystemExit(75)  # every rank dies right after the checkpoint (like a preempted job)

        trainer.save = save_then_crash
    try:
        result = group.fit()[0]
        if isinstance(result, BaseException):
            raise result
        info = {"rank": rank, "world_size": trainer.info.world_size, "wrapped": type(trainer.model).__name__,
                "batch": trainer.data.train.batch_size, "steps": len(trainer.data.train)}
        if trainer.teacher is not None:
            ids = {id(p) for p in trainer.model.parameters()}
            info["teacher_in_ddp"] = any(id(p) in ids for p in trainer.teacher.parameters())
            info["teacher_training"] = trainer.teacher.training
        if "--dump" in opts:
            torch.save(trainer.method.distillers.state_dict(), out / f"distillers_rank{rank}.pt")
        if "--crd-check" in opts:
            info["crd_update_equal"] = _crd_update_check(trainer, gather_rows)
            try:  # SyncBatchNorm on the CPU is refused with a clear message
                syncbn = load_config(None, [*overrides, "engine.sync_bn=true", "name=syncbn"])
                build_group([syncbn], echo=lambda s: None)
                info["sync_bn_cpu_error"] = ""
            except ConfigError as exc:
                info["sync_bn_cpu_error"] = str(exc)
    finally:
        cleanup_distributed()
    info["destroyed"] = not dist.is_initialized()
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    return 0


def _crd_update_check(trainer, gather) -> bool:
    """The engine-installed gather hook: the update of each rank's half == the update of the global batch."""
    import copy

    crd = trainer.method.distillers["crd"]
    assert crd.gather is gather
    n, d = crd.memory.memory_s.shape
    g = torch.Generator().manual_seed(7)  # the same global batch on every rank
    index = torch.randperm(n, generator=g)[:16]
    emb = torch.nn.functional.normalize(torch.randn(2, 16, d, generator=g), dim=2)
    targets = torch.randint(0, 10, (16,), generator=g)
    ref = copy.deepcopy(crd.memory)  # one process: the whole batch, no gathering
    ref.update(index, emb[0], emb[1], targets)
    r, w = trainer.info.rank, trainer.info.world_size
    crd.update_memory(index[r::w], emb[0][r::w], emb[1][r::w], targets[r::w])
    # the gathered order is a permutation of the batch; the rows written are the same
    return all(torch.allclose(getattr(crd.memory, k), getattr(ref, k), atol=1e-7) for k in
               ("memory_s", "memory_t")) and torch.equal(crd.memory.labels, ref.labels)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
