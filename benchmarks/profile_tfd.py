#!/usr/bin/env python
"""Where a TFD step's extra time goes: kernels per step and the TFD losses' own time, eager vs fused (compiled).

For a ResNet32 student (10 classes, channels_last, bf16 autocast on CUDA / fp32 on the CPU) at each batch size:

* **kernels per train step** (torch.profiler, one eager forward + backward after warm-up): CE, TFD with the eager
  losses (``fuse=false``) and TFD with the compiled region (``fuse=true``) -- the difference is the loss's share;
* **the losses alone**: forward + backward of ``(L_depth, L_width)`` on the student's stage maps, captured in a
  CUDA graph and replayed (CUDA), or eager (CPU); microseconds per call, eager vs fused, beside a CE step's time.

    python benchmarks/profile_tfd.py --device cuda            # ~1 minute on an H100/H200
    python benchmarks/profile_tfd.py --device cpu --batch 16  # smoke run

Prints a table and one JSON line last. Ratios and counts, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402


def build(method: str, fuse: str, batch: int, device: torch.device):
    from tfdistill.config import load_config
    from tfdistill.methods import build_method
    from tfdistill.models import create_model

    torch.manual_seed(0)
    student = create_model("resnet32", num_classes=10).to(device).to(memory_format=torch.channels_last)
    ov = [f"method.name={method}"] + ([f"method.tfd.fuse={fuse}"] if method == "tfd" else [])
    params = load_config(None, ov).method
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    meth = build_method(student, params, example=x[:8], num_classes=10, num_train=50000, epochs=240)
    y = torch.randint(0, 10, (batch,), device=device)
    return meth, x, y


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        device.type, enabled=False)


def train_step(meth, x, y, device):
    with autocast(device):
        _, terms = meth(x, y, None)
    loss = torch.stack([v.float() for v in terms.values()]).sum()
    loss.backward()


def count_kernels(meth, x, y, device) -> int:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        train_step(meth, x, y, device)
    acts = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        train_step(meth, x, y, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def time_fn(fn, device, iters: int) -> float:
    """Microseconds per call of ``fn`` (CUDA: captured in a graph and replayed)."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(s):
            fn()
            torch.cuda.synchronize()
            with torch.cuda.graph(g, stream=s):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g.replay()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            g.replay()
        torch.cuda.synchronize()
        return 1e6 * (time.perf_counter() - t) / iters
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return 1e6 * (time.perf_counter() - t) / iters


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 512])
    p.add_argument("--iters", type=int, default=0, help="timed calls (default 200 CUDA, 5 CPU)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="NAME=JSON",
                   help="also a fused variant compiled with these inductor options, e.g. "
                   "'combo={\"combo_kernels\": true}' (repeatable)")
    a = p.parse_args(argv)
    a.options = [tuple(o.split("=", 1)) for o in a.options]
    device = torch.device(a.device)
    iters = a.iters or (200 if device.type == "cuda" else 5)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "batches": {}}
    for b in a.batch:
        row: dict = {}
        variants = [("ce", "ce", "", ""), ("tfd_eager", "tfd", "false", ""), ("tfd_fused", "tfd", "true", "")]
        variants += [("tfd_fused_" + k, "tfd", "true", v) for k, v in a.options]
        for name, method, fuse, options in variants:
            os.environ["TFDISTILL_FUSE_OPTIONS"] = options
            meth, x, y = build(method, fuse, b, device)
            t0 = time.perf_counter()
            row[f"kernels_{name}"] = count_kernels(meth, x, y, device)
            if name.startswith("tfd_fused"):
                row[f"mode_{name}"] = meth.distillers["tfd"].losses.mode
                row[f"first_call_s_{name}"] = round(time.perf_counter() - t0, 1)
            # the whole fwd+bwd step (no optimizer) and, for TFD, the losses alone on this step's maps
            params = [q for q in meth.parameters() if q.requires_grad]

            def step(meth=meth, x=x, y=y, params=params):
                for q in params:
                    q.grad = None
                train_step(meth, x, y, device)

            row[f"step_us_{name}"] = round(time_fn(step, device, iters), 1)
            if method == "tfd":
                with torch.no_grad(), autocast(device):
                    feats = [f.detach().requires_grad_(True) for f in meth.run_student(x)[1]]
                losses = meth.distillers["tfd"].losses  # the TFDLoss module: (alpha * depth, beta * width)

                def loss_only(losses=losses, feats=feats):
                    d, w = losses.pair(feats)
                    torch.autograd.grad(d + w, feats)

                row[f"loss_us_{name}"] = round(time_fn(loss_only, device, iters), 1)
            del meth
        for name, *_ in variants[1:]:
            row[f"step_{name}_over_ce"] = round(row[f"step_us_{name}"] / row["step_us_ce"], 3)
        res["batches"][f"b{b}"] = row
        print(f"b{b}: " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
