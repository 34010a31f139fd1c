#!/usr/bin/env python
"""Throughput, side by side in one run: the classic pipeline vs the tfdistill engine; CE, TFD and FitNets.

* **classic** -- built the way the TFD release and the CRD benchmark build it: a torchvision ``ImageFolder`` of
  JPEG/PNG files, PIL transforms (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
  ``Normalize``), a ``DataLoader`` with worker processes, fp32, eager, ``cudnn.benchmark``. Its TFD uses the
  straightforward loss code (per-pair crop/upcast/pool, ``F.normalize`` + permuted copies: the "before" losses);
  ``tfd_released`` additionally runs a ResNet110 teacher every step, as the released script does.
* **engine** -- a group of one run (:func:`tfdistill.engine.build_group`) on the same images: device-resident uint8
  data with batched augmentation, the fast TFD losses, and on CUDA bf16 autocast + channels_last + the whole step in a
  CUDA graph (``--compile`` adds torch.compile). Images/s come from the group's ``train_epoch`` (loader, step, on-device metrics).
* **step-time ratios** -- TFD/CE, TFD-with-the-eager-losses/CE (``tfd_eager``, ``method.tfd.fuse=false``; CUDA
  only, where TFD's default compiles its losses), TFD-with-the-reference-losses/CE ("before"), FitNets/TFD: the
  engine's steps on one fixed batch, interleaved (CE, TFD, ...) round after round; the median of the per-round
  ratios is reported (robust on a busy machine).
* **packed runs** -- K = 8 (CPU: 2) ResNet32 CE runs (seeds 0..K-1) at batch 64 packed into one group
  (``tfdistill sweep --pack K``; on CUDA the K steps replay from one graph, one stream per run): aggregate images/s
  of the group vs one run's, in interleaved rounds (issue #12's target >= 3x). On the CPU the K runs step one after
  another, so the ratio can only be ~1x.
* **torch.compile warm-up** -- timed separately in a child process under ``--compile-budget`` seconds (default
  120; on CUDA by default, on the CPU with ``--compile``); a compile that exceeds it is reported as skipped, and the
  engine runs then stay uncompiled. ``--compile --compile-budget 0`` compiles the engine runs without the probe.
* **targets** -- issue #12's targets, each printed with PASS / FAIL / n.a. and the device name (absolute GPU
  targets are n.a. on a CPU).

``--parts`` picks what is measured (default all: engine, big, ratios, packed), e.g. ``--parts big,packed --compile``
for the compiled step at batch 512 and the packed runs only (what ``gpu_check.sh`` part 3 runs).

Models: ResNet32 student, ResNet110 teacher (random weights; only the time matters), 10 classes. Images: the
CIFAR-10 JPEG archives (a subset is extracted to a temp dir; ``--archive``), or generated CIFAR-sized PNGs when
they are absent. Prints a table and, last, one JSON line. Ratios, not timed assertions.

    python benchmarks/throughput.py --device cpu --quick      # about 1 minute on 2 CPU cores
    python benchmarks/throughput.py --device cuda             # the real thing (~3-4 minutes on an H200)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def log(msg: str) -> None:
    print(f"[throughput +{time.time() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.time()


# ----------------------------------------------------------------------------------------------- arguments
PARTS = ("engine", "big", "ratios", "packed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quick", action="store_true", help="a few steps each (CPU smoke run, < 1 minute on 2 cores)")
    p.add_argument("--batch", type=int, default=64, help="batch of the classic-vs-engine comparison (default 64)")
    p.add_argument("--big-batch", type=int, default=0, help="large batch (default: 512 on CUDA, 256 on CPU)")
    p.add_argument("--steps", type=int, default=0, help="steps per timed chunk (default: 50 CUDA, 2 CPU)")
    p.add_argument("--rounds", type=int, default=0, help="interleaved rounds of chunks (default: 5 CUDA, 3 CPU)")
    p.add_argument("--ratio-rounds", type=int, default=0, help="rounds of the step-time ratios (default: 7 CUDA, "
                   "5 CPU)")
    p.add_argument("--per-class", type=int, default=0, help="training images per class (default: 2000 CUDA, 1000 "
                   "CPU, quick 64)")
    p.add_argument("--workers", type=int, default=-1, help="classic DataLoader workers (default: 4; CPU 2)")
    p.add_argument("--archive", default="", help="folder with the CIFAR-10 JPEG train.tar.gz/test.tar.gz")
    p.add_argument("--compile", action="store_true", help="engine.compile=true for the engine runs (after the "
                   "compile warm-up fitted --compile-budget)")
    p.add_argument("--compile-budget", type=float, default=120.0, help="seconds allowed for the torch.compile "
                   "warm-up, measured in a child process (default 120; 0: skip it). Measured on CUDA by default, "
                   "on the CPU only with --compile")
    p.add_argument("--compile-only", action="store_true", help="measure the torch.compile warm-up only (under "
                   "--compile-budget) and stop: what gpu_check.sh runs as its own part")
    p.add_argument("--packed", type=int, default=0, help="K of the packed-runs measurement (default: 8 CUDA, 2 CPU)")
    p.add_argument("--compile-probe", default="", help=argparse.SUPPRESS)  # internal: the child process
    p.add_argument("--no-graphs", action="store_true", help="engine.cuda_graphs=false on CUDA")
    p.add_argument("--skip-classic", action="store_true")
    p.add_argument("--parts", default=",".join(PARTS), help=f"what to measure, comma-separated (default all: "
                   f"{','.join(PARTS)}): engine = the batch-64 pipelines (and classic), big = batch --big-batch, "
                   "ratios = the step-time ratios, packed = K packed runs vs one")
    p.add_argument("--big-methods", default="ce,tfd", help="methods of the big-batch part (default ce,tfd)")
    p.add_argument("--json-out", default="", help="also write the JSON line to this file")
    a = p.parse_args(argv)
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    bad = [x for x in a.parts if x not in PARTS]
    if bad or not a.parts:
        p.error(f"bad --parts {','.join(bad) or repr('')}; valid: {', '.join(PARTS)}")
    a.big_methods = [x.strip() for x in a.big_methods.split(",") if x.strip()]
    if not a.big_methods or any(m not in ("ce", "tfd") for m in a.big_methods):
        p.error(f"bad --big-methods {','.join(a.big_methods)!r}; valid: ce, tfd")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda, but no CUDA device is available")
    a.big_batch = a.big_batch or (512 if cuda else 256)
    a.packed = a.packed or (8 if cuda else 2)
    a.steps = a.steps or (50 if cuda else (1 if a.quick else 2))
    a.rounds = a.rounds or (5 if cuda else (2 if a.quick else 4))
    a.ratio_rounds = a.ratio_rounds or (7 if cuda else (4 if a.quick else 8))
    a.per_class = a.per_class or (64 if a.quick else (2000 if cuda else 1000))
    a.workers = a.workers if a.workers >= 0 else (4 if cuda else 2)
    return a


# ----------------------------------------------------------------------------------------------- images
def find_archive(given: str) -> Path | None:
    cands = [given] if given else [os.environ.get("TFDISTILL_CIFAR10_JPEG", ""), str(REPO / ".data" / "cifar10-jpeg"),
                                   str(REPO.parent / "shared" / "data" / "cifar10-jpeg")]
    for c in cands:
        if c and (Path(c) / "train.tar.gz").is_file() and (Path(c) / "test.tar.gz").is_file():
            return Path(c)
    return None


def extract_subset(archive: Path, split: str, dst: Path, per_class: int) -> int:
    """Stream ``<archive>/<split>.tar.gz`` and write the first ``per_class`` images of every class to ``dst``."""
    counts: dict[str, int] = {}
    n = 0
    with tarfile.open(archive / f"{split}.tar.gz", "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or not m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            cls = parts[-2]
            if counts.get(cls, 0) >= per_class:
                if len(counts) >= 10 and all(v >= per_class for v in counts.values()):
                    break
                continue
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            out = dst / split / cls / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            counts[cls] = counts.get(cls, 0) + 1
            n += 1
    return n


def generate_pngs(dst: Path, split: str, per_class: int, seed: int) -> int:
    """CIFAR-sized (32x32 RGB) PNGs: a smooth class colour plus noise (only their decoding cost matters)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(10):
        base = rng.uniform(40, 215, size=(1, 1, 3))
        folder = dst / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype("uint8")
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return 10 * per_class


def prepare_images(root: Path, archive: Path | None, per_class: int) -> str:
    test_per_class = max(8, per_class // 10)
    if archive is not None:
        n = extract_subset(archive, "train", root, per_class) + extract_subset(archive, "test", root, test_per_class)
        return f"CIFAR-10 (JPEG copy) subset from {archive}: {n} files"
    n = generate_pngs(root, "train", per_class, 0) + generate_pngs(root, "test", test_per_class, 1)
    return f"generated 32x32 PNGs ({n} files; the CIFAR-10 JPEG archives were not found)"


# ----------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def reference_tfd_losses():
    """Swap the TFD method's losses for the straightforward ones (the pre-optimisation code, "before"; the
    ``tfd_ref`` runs also set ``method.tfd.fuse=false``)."""
    import tfdistill.losses.tfd_fused as mt

    saved = (mt.depth_loss, mt.width_loss)
    from tfdistill.losses.tfd_reference import reference_depth_loss, reference_width_loss

    mt.depth_loss, mt.width_loss = reference_depth_loss, reference_width_loss
    try:
        yield
    finally:
        mt.depth_loss, mt.width_loss = saved


def random_teacher(path: Path) -> Path:
    from tfdistill.models import create_model

    torch.manual_seed(1234)
    torch.save(create_model("resnet110", num_classes=10).state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------- runners
class ClassicRunner:
    """The classic pipeline: ImageFolder + PIL transforms + DataLoader workers, fp32, eager; ``run(n)`` trains n
    steps and returns the seconds they took (data loading included)."""

    def __init__(self, args, root: Path, method: str, teacher_ckpt: Path, device: torch.device) -> None:
        import torchvision
        import torchvision.transforms as T
        from torch.utils.data import DataLoader

        from tfdistill.config import load_config
        from tfdistill.methods import build_method
        from tfdistill.models import create_model

        torch.backends.cudnn.benchmark = True
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
        ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
        self.dl = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
                             pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
        self.batch, self.device, self.method = args.batch, device, method
        torch.manual_seed(0)
        student = create_model("resnet32", num_classes=10).to(device)
        self.teacher = None
        if method in ("fitnet", "tfd_released"):
            t = create_model("resnet110", num_classes=10)
            t.load_state_dict(torch.load(teacher_ckpt, weights_only=True))
            self.teacher = t.to(device).eval()
        name = "tfd" if method == "tfd_released" else method
        params = load_config(None, [f"method.name={name}"] + (["method.tfd.fuse=false"] if name == "tfd" else [])).method
        self.meth = build_method(student, params, example=torch.randn(8, 3, 32, 32, device=device), num_classes=10,
                                 num_train=len(ds), epochs=240, teacher=self.teacher if method == "fitnet" else None)
        self.opt = torch.optim.SGD(list(student.parameters()) + self.meth.extra_parameters(), lr=0.05, momentum=0.9,
                                   weight_decay=5e-4)
        self.it = iter(self.dl)
        self.mode = f"fp32 eager, {args.workers} DataLoader workers"

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.dl)
            return next(self.it)

    def run(self, n: int) -> float:
        ctx = reference_tfd_losses() if self.method in ("tfd", "tfd_released") else contextlib.nullcontext()
        sync(self.device)
        t = time.perf_counter()
        with ctx:
            for _ in range(n):
                x, y = self._next()
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                if self.method == "tfd_released":
                    with torch.no_grad():
                        self.teacher(x)  # the released script's (unused) teacher pass
                logits, terms = self.meth(x, y, None)
                loss = sum(terms.values())
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        sync(self.device)
        return time.perf_counter() - t

    def close(self) -> None:
        self.it = None
        del self.dl


def engine_overrides(args, root: Path, batch: int, method: str, out: Path, teacher_ckpt: Path, steps: int) -> list:
    ov = ["data.name=imagefolder", f"data.root={root}", "data.loader=device", f"data.batch_size={batch}",
          "data.eval_batch_size=512", "model.name=resnet32", f"method.name={method}", f"engine.device={args.device}",
          # the engine's defaults (auto: bf16 + channels_last + CUDA graphs on a GPU, fp32 eager on the CPU)
          "engine.precision=auto", "engine.channels_last=auto",
          f"engine.cuda_graphs={'false' if args.no_graphs else 'auto'}",
          f"engine.compile={str(args.compile).lower()}",
          "engine.progress=false", "engine.tensorboard=false", f"engine.max_steps_per_epoch={steps}", "epochs=1000",
          f"out_dir={out}", "optim.lr=0.05"]
    if method == "fitnet":
        ov += ["teacher.model=resnet110", f"teacher.checkpoint={teacher_ckpt}"]
    return ov


VARIANTS = {"tfd_ref": ("tfd", ["method.tfd.fuse=false"]), "tfd_eager": ("tfd", ["method.tfd.fuse=false"])}
"""Benchmark-only method names: ``tfd_eager`` = the fast losses without the compiled region (``fuse=false``),
``tfd_ref`` = the straightforward reference losses (``fuse=false`` and :func:`reference_tfd_losses`)."""


def make_group(args, root, batch, method, out, teacher_ckpt, name):
    """A group of one run, built as ``tfdistill.train`` builds it."""
    from tfdistill.config import load_config
    from tfdistill.engine import build_group

    method, extra = VARIANTS.get(method, (method, []))
    cfg = load_config(None, [*engine_overrides(args, root, batch, method, out, teacher_ckpt, 1), *extra,
                             f"name={name}"])
    return build_group([cfg], overwrite=True, echo=lambda s: None)


class EngineRunner:
    """The engine: ``run(n)`` is the group's ``train_epoch`` over n steps (device loader, step, on-device metrics)."""

    def __init__(self, args, root, batch, method, out, teacher_ckpt) -> None:
        self.method, self.batch = method, batch
        self.group = make_group(args, root, batch, method, out, teacher_ckpt, f"{method}_b{batch}")
        self.tr = self.group.runs[0]
        self.epoch = 0

    @property
    def mode(self) -> str:
        return f"{self.tr.precision}, {self.tr.train_step.mode}"

    def run(self, n: int) -> float:
        self.tr.steps_per_epoch = n
        ctx = reference_tfd_losses() if self.method == "tfd_ref" else contextlib.nullcontext()
        with ctx:
            res = self.group.train_epoch(self.epoch).get(0)
        if res is None:
            raise self.group.results[0]  # the loss became NaN/inf
        self.epoch += 1
        return n * self.batch / res["images_per_sec"]  # an epoch may hold fewer than n batches: per-step rate

    def close(self) -> None:
        self.tr.close()
        del self.tr, self.group


class PackedRunner:
    """K CE runs (seeds 0..K-1) packed into one group; ``run(n)`` is the group's ``train_epoch`` over n steps each."""

    def __init__(self, args, root, batch, out, k) -> None:
        from tfdistill.config import load_config
        from tfdistill.engine import build_group
        from tfdistill.runs import seed_configs

        self.method, self.K = "ce", k
        self.batch = batch * k  # images per step, all runs together
        ov = engine_overrides(args, root, batch, "ce", out, Path("unused"), 1)
        cfg = load_config(None, [*ov, f"seeds={list(range(k))}", f"name=packed_b{batch}"])
        self.group = build_group(seed_configs(cfg), overwrite=True, echo=lambda s: None)
        self.epoch = 0

    @property
    def mode(self) -> str:
        return f"{self.group.runs[0].precision}, K={self.K}, {self.group.step_mode}"

    def run(self, n: int) -> float:
        for r in self.group.runs:
            r.steps_per_epoch = n
        res = self.group.train_epoch(self.epoch)
        self.epoch += 1
        return n * self.batch / res[0]["group_images_per_sec"]

    def close(self) -> None:
        for r in self.group.runs:
            r.close()
        del self.group


class FixedBatchRunner:
    """One run's step on a fixed batch (no loader), stepped as the engine steps it (a GraphRunner of one run:
    replayed from a CUDA graph where the engine would): ``run(n)`` = n steps."""

    def __init__(self, args, root, batch, method, out, teacher_ckpt, batch_from=None) -> None:
        from tfdistill.engine import GraphRunner

        self.method, self.batch = method, batch
        self.tr = make_group(args, root, batch, method, out, teacher_ckpt, f"step_{method}_b{batch}").runs[0]
        src = batch_from.tr if batch_from is not None else self.tr
        self.xyi = next(iter(src.data.train))
        self.device = self.tr.device
        self.runner = GraphRunner([self.tr.train_step])

    @property
    def mode(self) -> str:
        return f"{self.tr.precision}, {self.runner.mode}"

    def run(self, n: int) -> float:
        """Seconds for n steps: wall clock on CUDA; on the CPU this process's CPU time (the step ratios run
        single-threaded there, so CPU time is the work done and other processes' load does not enter it)."""
        clock = time.process_time if self.device.type == "cpu" else time.perf_counter
        ctx = reference_tfd_losses() if self.method == "tfd_ref" else contextlib.nullcontext()
        with ctx:
            sync(self.device)
            t = clock()
            for _ in range(n):
                self.runner.step([self.xyi])
            sync(self.device)
        return clock() - t

    def close(self) -> None:
        del self.tr


def measure(runners: dict, steps: int, rounds: int, warmup_chunks: int = 1) -> dict[str, list[float]]:
    """Interleave the runners round after round (alternating order); seconds per step of every chunk."""
    for _ in range(warmup_chunks):  # compilation, graph capture, allocator and DataLoader start-up
        for r in runners.values():
            r.run(steps)
    times: dict[str, list[float]] = {k: [] for k in runners}
    keys = list(runners)
    for i in range(rounds):
        for k in (keys if i % 2 == 0 else keys[::-1]):
            times[k].append(runners[k].run(steps) / steps)
    return times


def summarise(runners: dict, times: dict) -> dict:
    return {k: {"images_per_sec": runners[k].batch / statistics.median(v), "step_ms": 1e3 * statistics.median(v),
                "mode": runners[k].mode} for k, v in times.items()}


def ratio(times: dict, a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b) (same round: same machine load)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def release(runners: dict) -> None:
    for r in runners.values():
        r.close()
    runners.clear()
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- packed runs
def measure_packed(args, root: Path, out: Path, k: int, batch: int, steps: int) -> dict:
    """K ResNet32 CE runs at ``batch`` packed into one group (:class:`PackedRunner`) against one run alone
    (:class:`EngineRunner`), timed in interleaved rounds (same machine load), medians."""
    single = EngineRunner(args, root, batch, "ce", out, Path("unused"))
    group = PackedRunner(args, root, batch, out, k)
    try:
        t = time.perf_counter()
        single.run(steps)
        single_warmup = time.perf_counter() - t
        t = time.perf_counter()
        group.run(steps)  # warm-up: every run's eager steps, then (CUDA) the packed graph's capture
        group_warmup = time.perf_counter() - t
        ones, groups = [], []
        for _ in range(3):
            ones.append(single.run(steps))
            groups.append(group.run(steps))
        mode, single_mode = group.mode, single.mode
    finally:
        single.close()
        group.close()
    return {"k": k, "batch": batch, "mode": "packed", "how": mode, "single_how": single_mode,
            "first_chunk_s": {"single": single_warmup, "group": group_warmup},
            "reason": "one group, one step runner" + ("" if "graph" in mode else "; the runs step one after another"),
            "aggregate_images_per_sec": k * steps * batch / statistics.median(groups),
            "single_run_images_per_sec": steps * batch / statistics.median(ones),
            "aggregate_over_single": statistics.median(k * o / g for o, g in zip(ones, groups))}


# ----------------------------------------------------------------------------------------------- compile warm-up
def compile_probe(args) -> None:
    """Child process: build one engine run (TFD, batch ``--batch``) with engine.compile=true, time its first steps
    (compilation) and then steady steps; print one JSON line."""
    root, out = Path(args.compile_probe), Path(args.compile_probe) / "compile_runs"
    args.compile = True
    t = time.perf_counter()
    r = FixedBatchRunner(args, root, args.batch, "tfd", out, Path("unused"))
    built = time.perf_counter() - t
    t = time.perf_counter()
    r.run(3)  # compilation (and graph capture) happen in the first steps
    warm = time.perf_counter() - t
    steady = r.run(max(args.steps, 5)) / max(args.steps, 5)
    print(json.dumps({"build_s": built, "warmup_s": warm, "steady_step_ms": 1e3 * steady, "mode": r.mode}))


def measure_compile(args, root: Path) -> dict:
    """torch.compile warm-up in a child process, killed after ``--compile-budget`` seconds."""
    import subprocess

    budget = float(args.compile_budget)
    if budget <= 0:
        if getattr(args, "compile", False):  # the engine runs compile without a capped probe (warm-up unreported)
            return {"status": "not probed", "reason": "--compile-budget 0 with --compile"}
        return {"status": "skipped", "reason": "--compile-budget 0"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--batch", str(args.batch),
           "--steps", str(args.steps), "--compile-probe", str(root)]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "budget_s": budget,
                "reason": f"torch.compile warm-up did not finish within --compile-budget {budget:.0f} s"}
    wall = time.perf_counter() - t
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"status": "failed", "budget_s": budget, "reason": f"the compile probe exited {p.returncode}: {err}"}
    return {"status": "ok", "budget_s": budget, "child_wall_s": wall, **json.loads(lines[-1])}


# ----------------------------------------------------------------------------------------------- targets
def evaluate_targets(res: dict) -> list[dict]:
    """Issue #12's targets: PASS / FAIL / n.a. (with why) for this run of the benchmark."""
    cuda = res["device_type"] == "cuda"
    speed, r = res.get("speed", {}), res.get("ratios", {})
    B, BB = res["batch"], res["big_batch"]
    out: list[dict] = []

    def add(name: str, value, ok, target: str, na: str = "", note: str = "") -> None:
        status = "n.a." if na or value is None else ("PASS" if ok else "FAIL")
        out.append({"target": name, "goal": target, "value": value, "status": status,
                    "note": na or (note if value is not None else "not measured in this run")})

    big = speed.get("engine_big/ce", {}).get("images_per_sec")
    add(f"one ResNet32 run, batch {BB}, images/s", big, big is not None and big >= 100_000, ">= 100000 (GPU)",
        "" if cuda else "a GPU target" if big is not None else "a GPU target; engine_big not measured (--quick)")
    for b in (B, BB):
        v = r.get(f"tfd_over_ce_step_b{b}")
        add(f"TFD/CE step, batch {b}", v, v is not None and v <= 1.05, "<= 1.05")
    v = r.get(f"fitnet_over_tfd_step_b{B}")
    add(f"FitNets/TFD step, batch {B}", v, v is not None and v >= 1.6, ">= 1.6")
    eoc = r.get(f"engine_over_classic_b{B}", {}).get("ce")
    add(f"engine/classic CE, batch {B}", eoc, eoc is not None and eoc >= 5.0, ">= 5x",
        "" if cuda else "a GPU target (the CPU has no fast path to gain from)" if eoc is not None else "")
    pk = res.get("packed", {})
    v = pk.get("aggregate_over_single")
    bound = r.get(f"big_b{BB}_over_single_b{B}") if pk.get("k", 0) * B == BB else None
    add(f"K={pk.get('k', '?')} packed runs aggregate vs one run", v, v is not None and v >= 3.0, ">= 3x (GPU)",
        "" if pk.get("mode") == "packed" and cuda else
        (f"measured {pk.get('mode')}: {pk.get('reason')}" if pk else "not measured"),
        note="" if bound is None else f"bound: one run at batch {BB} is {bound:.2f}x one at {B}")
    c = res.get("compile", {})
    cap = f"<= {c['budget_s']:.0f} s cap" if c.get("budget_s") else "capped by --compile-budget"
    out.append({"target": "torch.compile warm-up (reported, no target)", "goal": cap,
                "value": c.get("warmup_s"), "status": c.get("status", "n.a."), "note": c.get("reason", "")})
    return out


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.compile_probe:
        compile_probe(args)
        return {}
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    tmp = Path(tempfile.mkdtemp(prefix="tfdistill_throughput_"))
    os.environ["TFDISTILL_CACHE"] = str(tmp / "cache")
    result: dict = {
        "benchmark": "tfdistill throughput", "date": _dt.date.today().isoformat(), "device": device_label(device),
        "device_type": device.type,
        "torch": torch.__version__, "python": platform.python_version(), "quick": bool(args.quick),
        "batch": args.batch, "big_batch": args.big_batch, "packed_k": args.packed, "steps_per_chunk": args.steps,
        "rounds": args.rounds, "ratio_rounds": args.ratio_rounds, "classic_workers": args.workers,
        "compile": bool(args.compile),
        "models": "resnet32 student (10 classes), resnet110 teacher for FitNets (random weights)",
    }
    try:
        root = tmp / "images"
        result["data"] = prepare_images(root, find_archive(args.archive), args.per_class)
        log(result["data"])
        teacher = random_teacher(tmp / "resnet110_random.pt")
        out = tmp / "runs"
        random.seed(0)
        B, BB = args.batch, args.big_batch

        # 0. torch.compile warm-up, on its own and capped (the engine runs compile only when it fitted)
        if device.type == "cuda" or args.compile or args.compile_only:
            log(f"torch.compile warm-up (child process, at most {args.compile_budget:.0f} s)")
            result["compile"] = measure_compile(args, root)
            log(f"compile: {result['compile']}")
            if args.compile and result["compile"]["status"] not in ("ok", "not probed"):
                args.compile = False
                log("engine runs without torch.compile: " + result["compile"].get("reason", ""))
        else:
            result["compile"] = {"status": "n.a.", "reason": "not requested on the CPU (--compile)"}
        result["compile_used"] = bool(args.compile)
        if args.compile_only:
            c = result["compile"]
            print(f"torch.compile warm-up on {result['device']}: {c.get('status')}"
                  + (f", {c['warmup_s']:.1f} s (+ {c['build_s']:.1f} s build), then {c['steady_step_ms']:.2f} ms/step"
                     if c.get("status") == "ok" else f" ({c.get('reason', '')})"))
            return result

        # 1. classic vs engine at batch B, interleaved
        runners: dict = {}
        if "engine" in args.parts:
            if not args.skip_classic:
                for m in ["ce", "tfd", "fitnet"] + ([] if args.quick else ["tfd_released"]):
                    runners[f"classic/{m}"] = ClassicRunner(args, root, m, teacher, device)
            for m in ["ce", "tfd", "fitnet"]:
                runners[f"engine/{m}"] = EngineRunner(args, root, B, m, out, teacher)
        if "big" in args.parts and not args.quick:
            for m in args.big_methods:
                runners[f"engine_big/{m}"] = EngineRunner(args, root, BB, m, out, teacher)
        t1: dict = {}
        speed: dict = {}
        if runners:
            log(f"built {len(runners)} pipelines; measuring {args.rounds} interleaved rounds of {args.steps} steps")
            t1 = measure(runners, args.steps, args.rounds)
            speed = summarise(runners, t1)
            for k, v in speed.items():
                log(f"{k}: {v['images_per_sec']:.0f} img/s ({v['mode']})")
            release(runners)

        # 2. step-time ratios on a fixed batch: TFD (fast), TFD (reference losses), FitNets vs CE
        ratios_by_batch = {}
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)  # CPU-time ratios: one thread, so the work is measured, not the contention
        eager = ["tfd_eager"] if device.type == "cuda" else []  # fuse=auto compiles on CUDA only
        for b, methods in ((B, ["ce", "tfd", *eager, "tfd_ref", "fitnet"]),
                           (BB, ["ce", "tfd", *eager, "tfd_ref"] + ([] if args.quick else ["fitnet"]))):
            if "ratios" not in args.parts:
                break
            steps = 1 if device.type == "cpu" else 20
            rs: dict = {}
            for m in methods:
                rs[m] = FixedBatchRunner(args, root, b, m, out, teacher, batch_from=rs.get("ce"))
            tt = measure(rs, steps, args.ratio_rounds, warmup_chunks=1 if device.type == "cpu" else 2)
            block = {"batch": b, "rounds": args.ratio_rounds,
                     "clock": "process CPU time, 1 thread" if device.type == "cpu" else "wall clock (synchronised)",
                     "step_ms": {m: 1e3 * statistics.median(v) for m, v in tt.items()},
                     "vs_ce": {m: ratio(tt, m, "ce") for m in methods if m != "ce"}, "mode": rs["ce"].mode}
            if "fitnet" in tt:
                block["fitnet_over_tfd"] = ratio(tt, "fitnet", "tfd")
            ratios_by_batch[f"b{b}"] = block
            log(f"step ratios b{b}: " + ", ".join(f"{k} {v:.3f}" for k, v in block["vs_ce"].items()))
            release(rs)
        torch.set_num_threads(threads)

        r: dict = {}
        if not args.skip_classic and "classic/ce" in t1:
            r[f"engine_over_classic_b{B}"] = {m: ratio(t1, f"classic/{m}", f"engine/{m}")
                                               for m in ["ce", "tfd", "fitnet"]}
            r[f"classic_tfd_over_ce_step_b{B}"] = ratio(t1, "classic/tfd", "classic/ce")
            if "classic/tfd_released" in t1:
                r[f"classic_tfd_released_over_ce_step_b{B}"] = ratio(t1, "classic/tfd_released", "classic/ce")
        for key, block in ratios_by_batch.items():
            r[f"tfd_over_ce_step_{key}"] = block["vs_ce"]["tfd"]
            r[f"tfd_ref_over_ce_step_{key}"] = block["vs_ce"]["tfd_ref"]
            if "fitnet_over_tfd" in block:
                r[f"fitnet_over_tfd_step_{key}"] = block["fitnet_over_tfd"]
        # 3. K packed runs vs one run
        packed: dict = {}
        if "packed" in args.parts:
            log(f"packed runs: K={args.packed} at batch {B}")
            packed = measure_packed(args, root, out, args.packed, B, args.steps)
            r[f"packed_K{args.packed}_over_single_b{B}"] = packed["aggregate_over_single"]
            big = speed.get("engine_big/ce", {}).get("images_per_sec")
            if big and args.packed * B == BB:
                # the bound of the packed ratio: K runs at batch B do one batch-(K*B) run's arithmetic in K-times
                # smaller kernels, so together they cannot beat one run at batch K*B
                r[f"big_b{BB}_over_single_b{B}"] = big / packed["single_run_images_per_sec"]
                r[f"packed_K{args.packed}_over_big_b{BB}"] = packed["aggregate_images_per_sec"] / big
        result.update(speed=speed, step_ratios=ratios_by_batch, packed=packed, ratios=r)
        result["targets"] = evaluate_targets(result)
        result["seconds"] = time.time() - T0
        print_table(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    line = json.dumps(result, default=float)
    print(line)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    return result


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def print_table(res: dict) -> None:
    out = io.StringIO()
    w = out.write
    w(f"\ntfdistill throughput -- {res['device']}, torch {res['torch']}, {res['date']}"
      f"{' (quick)' if res['quick'] else ''}\n{res['data']}\n"
      f"{res['rounds']} interleaved rounds of {res['steps_per_chunk']} steps per pipeline; medians\n\n")
    w(f"{'pipeline':<22} {'img/s':>10} {'ms/step':>9}  how\n")
    for k, v in res["speed"].items():
        w(f"{k:<22} {v['images_per_sec']:>10.0f} {v['step_ms']:>9.2f}  {v['mode']}\n")
    w(f"(batch {res['batch']}; engine_big: batch {res['big_batch']}; packed: {res['packed_k']} runs x batch "
      f"{res['batch']} per step)\n")
    w(f"\nstep-time ratios (engine, one fixed batch, {res['ratio_rounds']} interleaved rounds; tfd_ref = the "
      f"straightforward losses = before):\n")
    for block in res["step_ratios"].values():
        parts = [f"{m}/ce {v:.3f}" for m, v in block["vs_ce"].items()]
        if "fitnet_over_tfd" in block:
            parts.append(f"fitnet/tfd {block['fitnet_over_tfd']:.2f}")
        w(f"  batch {block['batch']:>4}: " + ", ".join(parts) + f"   [{block['mode']}; {block['clock']}]\n")
    w("\nratios:\n")
    for k, v in res["ratios"].items():
        if isinstance(v, dict):
            w(f"  {k}: " + ", ".join(f"{m} {x:.2f}x" for m, x in v.items()) + "\n")
        elif v is not None:
            w(f"  {k}: {v:.3f}\n")
    pk = res.get("packed", {})
    if pk:
        w(f"  K={pk['k']} runs at batch {pk['batch']}, {pk['how']}: {pk['aggregate_images_per_sec']:.0f} img/s "
          f"together vs {pk['single_run_images_per_sec']:.0f} one run [{pk.get('single_how')}] ({pk['reason']}); "
          f"first chunk (warm-up) {pk['first_chunk_s']['group']:.1f} s packed, {pk['first_chunk_s']['single']:.1f} s "
          f"one run\n")
    c = res.get("compile", {})
    if c.get("status") == "ok":
        w(f"  torch.compile warm-up: {c['warmup_s']:.1f} s (+ {c['build_s']:.1f} s build), then "
          f"{c['steady_step_ms']:.2f} ms/step [{c['mode']}]\n")
    else:
        w(f"  torch.compile warm-up: {c.get('status', 'n.a.')} ({c.get('reason', '')})\n")
    w(f"\ntargets (issue #12) on {res['device']}:\n")
    for t in res.get("targets", []):
        v = t["value"]
        text = "-" if v is None else f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3f}"
        w(f"  {t['status']:<7} {t['target']:<44} {text:>10}  (goal {t['goal']})"
          + (f"  {t['note']}" if t["note"] else "") + "\n")
    w(f"\n({res['seconds']:.0f} s)\n")
    print(out.getvalue())


if __name__ == "__main__":
    main()
