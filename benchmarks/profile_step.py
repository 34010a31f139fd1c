#!/usr/bin/env python
"""Where a plain CE train step's time goes on a GPU: ResNet32, one step = forward + backward + SGD, per variant.

The engine's step at batch 512 is the model's own kernels (the engine adds < 3 %), so the throughput targets are
decided here. For each variant (autocast dtype x memory format, optionally torch.compile of the model) this prints

* **ms per step and images/s**: the step captured in one CUDA graph and replayed (what the engine runs);
* **where the device time goes**: one eager step under torch.profiler, kernel time summed by category (convolution
  forward / data-gradient / weight-gradient, batch norm, layout transposes, elementwise, reductions, optimizer, other)
  and the top kernels by time -- names, counts, microseconds.

    python benchmarks/profile_step.py --device cuda                      # ~1-2 minutes on an H100/H200
    python benchmarks/profile_step.py --device cuda --variant bf16:cl --top 25
    python benchmarks/profile_step.py --device cpu --batch 16 --variant fp32:cl   # smoke run (no kernel table)

Variants are ``DTYPE:FORMAT[:compile]`` with DTYPE in bf16 | fp16 | fp32 (fp32 runs TF32 convolutions) and FORMAT in
cl (channels_last) | nchw. The compiled variants take inductor options from ``TFDISTILL_COMPILE_OPTIONS`` (a JSON
object), as the engine does, e.g. ``'{"max_autotune": true, "max_autotune_conv_backends": "ATEN,TRITON"}'`` to let
inductor's Triton convolution templates compete with cuDNN. Prints a table and one JSON line last. Measurements,
not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # profile_tfd's timer

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
FORMATS = {"cl": torch.channels_last, "nchw": torch.contiguous_format}
DEFAULT_VARIANTS = ["bf16:cl", "bf16:nchw", "fp16:cl", "fp16:nchw", "fp32:cl"]

# kernel name -> category, first match wins (cuDNN / CUTLASS / PyTorch kernel names)
CATEGORIES = [
    ("fused_triton", r"^triton_"),
    ("conv_wgrad", r"wgrad|dgrad2d_wgrad|convolve_.*wgrad|_bwd_filter|wgrad_alg"),
    ("conv_dgrad", r"dgrad|_bwd_data|dgrad_engine"),
    ("conv_fwd", r"fprop|implicit_convolve|conv2d|convolution|_fwd_|xmma|cutlass|sm\d+_.*gemm|gemm"),
    ("layout", r"nchwToNhwc|nhwcToNchw|transpose|Transpose|permute|copy_kernel.*channels"),
    ("batch_norm", r"batch_norm|batchnorm|bn_fw|bn_bw|BatchNorm|welford"),
    ("optimizer", r"multi_tensor|foreach|fused_sgd|_amp_"),
    ("reduction", r"reduce_kernel|Reduce|nll_loss|softmax|sum_kernel"),
    ("elementwise", r"elementwise|vectorized|unrolled|triton_"),
]


def category(name: str) -> str:
    for cat, pat in CATEGORIES:
        if re.search(pat, name):
            return cat
    return "other"


def parse_variant(text: str):
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in DTYPES or parts[1] not in FORMATS or (
            len(parts) == 3 and parts[2] != "compile"):
        raise SystemExit(f"profile_step: bad --variant {text!r}; valid: DTYPE:FORMAT[:compile] with DTYPE in "
                         f"{', '.join(DTYPES)} and FORMAT in {', '.join(FORMATS)}")
    return parts[0], parts[1], len(parts) == 3


def build_step(dtype_name: str, fmt: str, compiled: bool, batch: int, device: torch.device):
    from tfdistill.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet32", num_classes=10).to(device).to(memory_format=FORMATS[fmt])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True,
                          **({"foreach": True} if device.type == "cuda" else {}))
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=FORMATS[fmt])
    y = torch.randint(0, 10, (batch,), device=device)
    if compiled:
        from tfdistill.compiling import options_from_env

        opts = options_from_env("TFDISTILL_COMPILE_OPTIONS")  # as the engine: inductor options to try
        fwd = torch.compile(model, **({"options": opts} if opts is not None else {}))
    else:
        fwd = model
    dtype = DTYPES[dtype_name]
    # fp16 without a GradScaler: the step's kernels are the same, the benchmark only needs their time
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else (
        lambda: torch.autocast(device.type, enabled=False))

    def step():
        opt.zero_grad(set_to_none=True)  # as the engine: grads allocated by the backward (in the graph's pool)
        with ctx():
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    return step


def graph_time(step, device: torch.device, iters: int) -> float:
    """Milliseconds per step: CUDA graph replay (CUDA) or eager (CPU) -- profile_tfd's timer."""
    from profile_tfd import time_fn

    return time_fn(step, device, iters) / 1e3


def kernel_profile(step, device: torch.device, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    by_name: dict = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            rec = by_name[e.name]
            rec[0] += 1
            rec[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    cats: dict = defaultdict(lambda: [0, 0.0])
    for name, (n, us) in by_name.items():
        c = cats[category(name)]
        c[0] += n
        c[1] += us
    total = sum(us for _, us in by_name.values())
    kernels = sum(n for n, _ in by_name.values())
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {"kernels": kernels, "kernel_us": round(total, 1),
            "categories": {k: {"kernels": n, "us": round(us, 1)} for k, (n, us) in
                           sorted(cats.items(), key=lambda kv: -kv[1][1])},
            "top": [{"name": name[:140], "calls": n, "us": round(us, 1), "category": category(name)}
                    for name, (n, us) in rows]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[512])
    p.add_argument("--variant", dest="variants", action="append", default=[],
                   help=f"DTYPE:FORMAT[:compile] (repeatable; default {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--iters", type=int, default=0, help="timed steps (default 100 CUDA, 3 CPU)")
    p.add_argument("--top", type=int, default=12, help="kernels listed per variant")
    p.add_argument("--benchmark-limit", type=int, default=-1, help="torch.backends.cudnn.benchmark_limit: cuDNN "
                   "algorithms tried per convolution (0: all; default: torch's, 10)")
    a = p.parse_args(argv)
    variants = [parse_variant(v) for v in (a.variants or DEFAULT_VARIANTS)]
    device = torch.device(a.device)
    iters = a.iters or (100 if device.type == "cuda" else 3)
    torch.backends.cudnn.benchmark = True
    if a.benchmark_limit >= 0:
        torch.backends.cudnn.benchmark_limit = a.benchmark_limit
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    res: dict = {"benchmark": "tfdistill profile_step", "model": "resnet32 (10 classes), CE, SGD nesterov",
                 "compile_options": os.environ.get("TFDISTILL_COMPILE_OPTIONS", ""),
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                 "benchmark_limit": getattr(torch.backends.cudnn, "benchmark_limit", None), "runs": {}}
    print(f"profile_step -- {res['device']}, torch {res['torch']}, cuDNN {res['cudnn']}, cudnn.benchmark_limit "
          f"{res['benchmark_limit']}" + (f", TFDISTILL_COMPILE_OPTIONS={res['compile_options']}"
                                         if res["compile_options"] else ""), flush=True)
    for b in a.batch:
        for dt, fmt, compiled in variants:
            key = f"b{b}/{dt}:{fmt}" + (":compile" if compiled else "")
            t0 = time.perf_counter()
            try:
                step = build_step(dt, fmt, compiled, b, device)
                ms = graph_time(step, device, iters)
                row = {"ms_per_step": round(ms, 3), "images_per_sec": round(b * 1e3 / ms),
                       "setup_s": round(time.perf_counter() - t0, 1)}
                if device.type == "cuda":
                    row.update(kernel_profile(step, device, a.top))
            except Exception as exc:  # one variant failing (e.g. a dtype the GPU lacks) must not hide the others
                row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            res["runs"][key] = row
            if "error" in row:
                print(f"{key:<24} ERROR {row['error']}", flush=True)
                continue
            print(f"{key:<24} {row['ms_per_step']:8.3f} ms/step {row['images_per_sec']:>8} img/s"
                  + (f"  {row['kernels']} kernels, {row['kernel_us'] / 1e3:.3f} ms of kernel time" if "kernels" in row
                     else ""), flush=True)
            for cat, c in row.get("categories", {}).items():
                print(f"    {cat:<12} {c['us'] / 1e3:7.3f} ms  {c['kernels']:4d} kernels")
            for t in row.get("top", []):
                print(f"      {t['us']:8.1f} us {t['calls']:4d}x  [{t['category']}] {t['name']}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
