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


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a tiny run writing into tmp_path/runs."""
    return [*TINY, f"out_dir={tmp_path / 'runs'}"]


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m tfdistill ARGS` in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.setdefault("PYTHONUNBUFFERED", "1")
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "tfdistill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e)
