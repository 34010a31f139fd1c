"""What a run's fingerprint (fingerprint.json) costs, as ratios: the initial-weights hash against one training step,
and an epoch of the training loader with its order recorded against the same epoch without.

    python benchmarks/fingerprint_cost.py [--device cpu|cuda] [--model resnet20] [--batch 64] [--repeat 3]

The weights hash runs once per run (a fraction of one step is nothing next to an epoch of steps); the order is
recorded in the first epoch only: its ratio near 1.00 means the recording does not slow the loader.
"""

from __future__ import annotations

import argparse
import time

import torch


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    from tfdistill.config import load_config
    from tfdistill.data import build_data
    from tfdistill.fingerprint import OrderRecorder, weights_hash
    from tfdistill.models import create_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ns = ap.parse_args()
    device = torch.device(ns.device)
    cfg = load_config(None, ["data.name=synthetic", "data.synthetic_train=4096", f"data.batch_size={ns.batch}",
                             "data.augment=[crop,flip]"])
    data = build_data(cfg.data, device, seed=0)
    model = create_model(ns.model, num_classes=data.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y, _ = next(iter(data.train))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    t_step = _best(step, ns.repeat)
    t_hash = _best(lambda: weights_hash(model), ns.repeat)

    def epoch(record: bool) -> None:
        rec = OrderRecorder() if record else None
        batches = rec.wrap(iter(data.train)) if rec else iter(data.train)
        for _ in batches:
            pass
        if rec:
            rec.result()

    epoch(True)
    t_plain = _best(lambda: epoch(False), ns.repeat)
    t_rec = _best(lambda: epoch(True), ns.repeat)
    params = sum(p.numel() for p in model.parameters())
    print(f"device {device}, {ns.model} ({params / 1e6:.2f} M parameters), batch {ns.batch}, "
          f"{len(data.train)} batches per epoch")
    print(f"weights_hash / one training step: {t_hash / t_step:.3f} ({t_hash * 1e3:.1f} ms / {t_step * 1e3:.1f} ms; "
          f"once per run)")
    print(f"loader epoch with order recorded / without: {t_rec / t_plain:.3f} (first epoch only)")


if __name__ == "__main__":
    main()
