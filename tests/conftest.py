"""Shared fixtures: tiny, fast run settings and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR10_JPEG = Path(os.environ.get("TFDISTILL_CIFAR10_JPEG", SHARED / "data" / "cifar10-jpeg"))

# A run that takes about a second on 2 CPU cores: learnable synthetic images, resnet8, one epoch.
TINY = [
    "data.name=synthetic", "data.synthetic_train=128", "data.synthetic_test=64", "data.batch_size=32",
    "data.eval_batch_size=64", "model.name=resnet8", "epochs=1", "engine.progress=false",
    "schedule.name=cosine", "optim.lr=0.05",
]


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` tests need a CUDA device: skipped (with the reason) on machines without one."""
    import torch

    for item in items:  # a GPU test must say so with the marker: the autouse fixture below hides the GPU otherwise
        for m in item.iter_markers("skipif"):
            if "cuda" in str(m.kwargs.get("reason", "")).lower() and not item.get_closest_marker("cuda"):
                raise pytest.UsageError(f"{item.nodeid}: mark CUDA-only tests with @pytest.mark.cuda, not skipif")
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA-only test (pytest.mark.cuda): no CUDA device on this machine")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch):
    """The same suite gives the same results on a CPU-only CI machine and on a GPU host.

    A test not marked ``cuda`` sees no CUDA device: ``engine.device=auto`` resolves to the CPU in this process, and
    ``CUDA_VISIBLE_DEVICES`` is empty for the subprocesses it starts (CLI runs, torchrun). Tests of CUDA code paths
    are marked ``@pytest.mark.cuda``; they run only where a GPU is present (``benchmarks/gpu_check.sh``)."""
    if request.node.get_closest_marker("cuda"):
        return
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a tiny run writing into tmp_path/runs."""
    return [*TINY, f"out_dir={tmp_path / 'runs'}"]


def one_run(cfg, echo=lambda s: None):
    """The run of ``cfg``, built as ``tfdistill.train`` builds it (a group of one), to look inside or step by hand."""
    from tfdistill.engine import build_group

    return build_group([cfg], echo=echo).runs[0]


def fit(cfg, echo=lambda s: None):
    """Train ``cfg`` as ``tfdistill.train`` does (its error raised, if it diverged) and return the run, to look inside
    it after training."""
    from tfdistill.engine import build_group

    group = build_group([cfg], echo=echo)
    (result,) = group.fit()
    if isinstance(result, BaseException):
        raise result
    return group.runs[0]


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m tfdistill ARGS` in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.setdefault("PYTHONUNBUFFERED", "1")
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "tfdistill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e)


def interrupt_in_epoch(monkeypatch, epoch: int):
    """Ctrl-C at the start of main epoch ``epoch`` (0-based) of every run trained until the returned function is
    called (it restores the engine): the runs have their checkpoints of the epochs before it."""
    from tfdistill.engine.group import Group

    real = Group.train_epoch

    def interrupted(self, e, *args, **kwargs):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, e, *args, **kwargs)

    monkeypatch.setattr(Group, "train_epoch", interrupted)
    return lambda: monkeypatch.setattr(Group, "train_epoch", real)
