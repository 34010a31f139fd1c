"""Training speed of segmentation models on the CIFAR-10 proxy's canvas sizes, on ONE CPU thread (sizing #30's
evidence): images/s of full train steps (forward, per-pixel CE [+ TFD on the encoder taps], backward, SGD) on random
canvases, after warm-up. Prints one line per (model, canvas, method) and the TFD/CE time ratio.

    OMP_NUM_THREADS=1 python benchmarks/seg_proxy_speed.py deeplabv3_resnet18 lraspp_mobilenet_v3_large --canvas 48 64
"""

from __future__ import annotations

import argparse
import time

import torch

from tfdistill.methods import build_method
from tfdistill.methods.registry import method_schema
from tfdistill.models import create_model
from tfdistill.tasks import get_task


def speed(model_name: str, canvas: int, method: str, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=11)
    params = method_schema(method)()
    params.name = method
    x = torch.randn(batch, 3, canvas, canvas)
    y = torch.randint(0, 11, (batch, canvas, canvas))
    m = build_method(model, params, example=x[:8], num_classes=11, num_train=1000, epochs=1,
                     task=get_task("segmentation"))
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.01, momentum=0.9)
    m.train()

    def step() -> None:
        _, terms = m(x, y)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--canvas", type=int, nargs="+", default=[64])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for name in a.models:
        for c in a.canvas:
            ce = speed(name, c, "ce", a.batch, a.steps)
            tfd = speed(name, c, "tfd", a.batch, a.steps)
            print(f"{name} canvas {c} batch {a.batch}: CE {ce:.1f} img/s, TFD {tfd:.1f} img/s, TFD/CE time "
                  f"{ce / tfd:.3f} (1 thread)", flush=True)


if __name__ == "__main__":
    main()
