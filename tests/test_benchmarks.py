"""The GPU check script's logic, end to end on the CPU (``benchmarks/gpu_check.sh --cpu-smoke``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import CIFAR10_JPEG, REPO


def test_gpu_check_rejects_unknown_arguments():
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--gpu"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown argument '--gpu'" in p.stderr and "--cpu-smoke" in p.stderr


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_part_and_prints_the_summary(tmp_path):
    """All six parts run under their limits and the summary (last lines) names each result; at most 8 files (what
    the GPU machine sends back)."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src")}
    if (CIFAR10_JPEG / "train.tar.gz").is_file():
        env["GPU_CHECK_DATA"] = str(CIFAR10_JPEG)
    # generous limits: this test checks the logic, not the timing (the suite shares the CPU with other tests)
    env.update(GPU_CHECK_T_TESTS="400", GPU_CHECK_T_THROUGHPUT="400", GPU_CHECK_T_COMPILE="300",
               GPU_CHECK_T_REALDATA="400", GPU_CHECK_T_PROFILE="300", GPU_CHECK_T_STEP="300")
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], capture_output=True,
                       text=True, env=env, timeout=1500)
    summary = p.stdout[p.stdout.rindex("=" * 100):]
    assert "no GPU" in summary
    assert "tests: " in summary and " passed" in summary and "failed" not in summary.split("tests: ")[1].split("\n")[0]
    assert "target " in summary and "tfd_over_ce_step_b64" in summary
    assert "compile: exit 0" in summary and "compiled K=2 packed at batch 64" in summary, summary
    assert "sequential_compiled" in summary  # the packed group's runs really ran their compiled steps
    assert "step profile b8/fp32:cl" in summary and "step profile b8/bf16:nchw" in summary, summary
    assert "profile b16: kernels/step" in summary, summary
    if "GPU_CHECK_DATA" in env:
        assert summary.count("real data ") == 2 and "no result" not in summary, summary
        assert p.returncode == 0, summary
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= 8 and {"summary.txt", "pytest.txt", "throughput.json", "compile.txt", "step_profile.txt",
                                "profile.txt", "realdata.txt"} <= set(files), files
    assert (out / "summary.txt").read_text().strip() == summary.strip()


def test_profile_step_times_each_variant_and_rejects_bad_ones(capsys):
    """benchmarks/profile_step.py on the CPU: one row per variant (timing; the kernel table is CUDA-only), a JSON
    line last; a bad variant stops it with one line naming the valid choices."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_step_bench", REPO / "benchmarks" / "profile_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--device", "cpu", "--batch", "2", "--iters", "1", "--variant", "fp32:cl",
                    "--variant", "bf16:nchw"])
    assert set(res["runs"]) == {"b2/fp32:cl", "b2/bf16:nchw"}
    assert all(r["ms_per_step"] > 0 and r["images_per_sec"] > 0 for r in res["runs"].values())
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
    assert mod.category("sm90_xmma_wgrad_implicit_gemm_bf16") == "conv_wgrad"
    assert mod.category("triton_poi_fused_convolution_backward_3") == "fused_triton"
    assert mod.category("void at::native::batch_norm_collect_statistics_channels_last_kernel") == "batch_norm"
    with pytest.raises(SystemExit) as exc:
        mod.main(["--device", "cpu", "--variant", "bf8:cl"])
    assert "bad --variant 'bf8:cl'" in str(exc.value.code) and "bf16, fp16, fp32" in str(exc.value.code)
