"""The GPU check script's logic, end to end on the CPU (``benchmarks/gpu_check.sh --cpu-smoke``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CIFAR10_JPEG, REPO


def test_gpu_check_rejects_unknown_arguments():
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--gpu"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown argument '--gpu'" in p.stderr and "--cpu-smoke" in p.stderr


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_part_and_prints_the_summary(tmp_path):
    """All four parts run under their limits and the summary (last lines) names each result; at most 8 files."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src")}
    if (CIFAR10_JPEG / "train.tar.gz").is_file():
        env["GPU_CHECK_DATA"] = str(CIFAR10_JPEG)
    # generous limits: this test checks the logic, not the timing (the suite shares the CPU with other tests)
    env.update(GPU_CHECK_T_TESTS="400", GPU_CHECK_T_THROUGHPUT="400", GPU_CHECK_T_COMPILE="60",
               GPU_CHECK_T_REALDATA="400")
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], capture_output=True,
                       text=True, env=env, timeout=1500)
    summary = p.stdout[p.stdout.rindex("=" * 100):]
    assert "no GPU" in summary
    assert "tests: " in summary and " passed" in summary and "failed" not in summary.split("tests: ")[1].split("\n")[0]
    assert "target " in summary and "tfd_over_ce_step_b64" in summary
    assert "compile: exit" in summary
    if "GPU_CHECK_DATA" in env:
        assert summary.count("real data ") == 2 and "no result" not in summary, summary
        assert p.returncode == 0, summary
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= 8 and {"summary.txt", "pytest.txt", "throughput.json", "env.txt"} <= set(files), files
    assert (out / "summary.txt").read_text().strip() == summary.strip()
