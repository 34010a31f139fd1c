"""Step cost of Zipf's LS, USKD and MixSKD relative to CE (issue 31): how much a sweep of them costs.

    OMP_NUM_THREADS=1 python benchmarks/modern_selfkd_cost.py [--model resnet20] [--batch 64] [--rounds 15]

One run of each method is built as ``tfdistill.train`` builds it (``build_group``, synthetic CIFAR-sized data, the
model's default taps) and its engine ``TrainStep`` steps one fixed batch; the methods are stepped in interleaved
rounds and each round's ratio (method / CE) is taken in process CPU time, single-threaded, so a load change on a
shared machine hits both sides of a ratio. Prints a table of the median ratios and one JSON line. Ratios, not timed
assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

METHODS = ("ce", "zipf_ls", "uskd", "mixskd")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3, help="steps per method per round")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from tfdistill.config import load_config
    from tfdistill.engine import build_group

    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in METHODS:
            cfg = load_config(None, ["data.name=synthetic", f"data.synthetic_train={2 * args.batch}",
                                     "data.synthetic_test=16", f"data.batch_size={args.batch}",
                                     f"model.name={args.model}", "epochs=1", "engine.progress=false",
                                     "engine.device=cpu", "engine.tensorboard=false", f"method.name={m}",
                                     f"out_dir={tmp}", f"name={m}"])
            run = build_group([cfg], echo=lambda s: None).runs[0]
            run.begin_epoch(0)
            batch = next(iter(run.data.train))
            steps[m] = (run.train_step, batch)
            for _ in range(2):  # warm-up
                run.train_step.step(*batch)
        ratios: dict[str, list[float]] = {m: [] for m in METHODS[1:]}
        for _ in range(args.rounds):
            t = {}
            for m in METHODS:
                step, batch = steps[m]
                t0 = time.process_time()
                for _ in range(args.steps):
                    step.step(*batch)
                t[m] = time.process_time() - t0
            for m in METHODS[1:]:
                ratios[m].append(t[m] / t["ce"])
    med = {m: statistics.median(v) for m, v in ratios.items()}
    print(f"{args.model}, batch {args.batch}, CPU, 1 thread, {args.rounds} rounds x {args.steps} steps:")
    for m, r in med.items():
        print(f"  {m:8s} / ce step: {r:5.2f}x")
    out = {"model": args.model, "batch": args.batch, "device": "cpu", "ratios_over_ce": med}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
