"""scripts/install picks the torch wheels for the machine: CPU wheels without an NVIDIA GPU, the default (CUDA) wheels
with one. Checked with its dry run and a stand-in nvidia-smi, so the result never depends on the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "install"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _run(tmp_path: Path, smi: str | None, **env) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi is not None:  # a stand-in nvidia-smi: its output (and exit status) as given
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"  # no other nvidia-smi
    e = {"PATH": path, "HOME": str(tmp_path), "TFDISTILL_INSTALL_DRY_RUN": "1", "PYTHON": "python3", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=e, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("smi", [None, "echo 'NVIDIA-SMI has failed because it could not communicate with the "
                                       "NVIDIA driver' >&2; exit 9", "exit 0"], ids=["no-smi", "no-driver", "no-gpu"])
def test_a_machine_without_an_nvidia_gpu_gets_the_cpu_wheels(tmp_path, smi):
    res = _run(tmp_path, smi)
    assert res.returncode == 0, res.stderr
    assert "torch wheels: cpu" in res.stdout and CPU_INDEX in res.stdout
    assert f"pip install -e {REPO}" in res.stdout


def test_a_machine_with_an_nvidia_gpu_gets_the_default_wheels(tmp_path):
    res = _run(tmp_path, "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'")
    assert res.returncode == 0, res.stderr
    assert "torch wheels: cuda" in res.stdout and "--index-url" not in res.stdout
    assert "pip install torch torchvision" in res.stdout


def test_the_choice_can_be_forced_and_extras_passed(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "test"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TFDISTILL_INSTALL_DRY_RUN": "1", "TFDISTILL_TORCH": "cuda"})
    assert "torch wheels: cuda (TFDISTILL_TORCH=cuda)" in res.stdout and f"-e {REPO}[test]" in res.stdout
    bad = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TFDISTILL_INSTALL_DRY_RUN": "1", "TFDISTILL_TORCH": "rocm"})
    assert bad.returncode == 2 and bad.stderr.strip() == "scripts/install: error: TFDISTILL_TORCH=rocm; valid: cpu, cuda"
