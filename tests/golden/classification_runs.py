"""Golden classification runs: per-epoch metrics and final weight hashes of a few tiny runs (CE, TFD, KD with a tiny
teacher, packed seeds), produced by the code of the commit that wrote ``classification_runs.json`` -- before the task
seam (#30) moved classification behind ``tfdistill.tasks``. ``tests/test_golden_classification.py`` retrains them and
compares exactly; regenerate only on purpose:

    OMP_NUM_THREADS=1 python tests/golden/classification_runs.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "classification_runs.json"

BASE = ["data.name=synthetic", "data.synthetic_train=96", "data.synthetic_test=48", "data.batch_size=32",
        "data.eval_batch_size=48", "model.name=resnet8", "epochs=2", "engine.progress=false",
        "schedule.name=cosine", "optim.lr=0.05", "engine.device=cpu"]
"""2 epochs of resnet8 on the synthetic task (deterministic on the CPU: no data-dependent kernels)."""

VOLATILE = ("time", "epoch_seconds", "images_per_sec", "group_images_per_sec")
"""Row keys that measure the machine, not the run."""

RUNS: dict[str, list[str]] = {
    "ce": ["method.name=ce", "seed=0"],
    "tfd": ["method.name=tfd", "seed=0"],
    "ls": ["method.name=ls", "seed=3"],
    "kd": ["method.name=kd", "seed=0", "teacher.model=resnet8", "teacher.checkpoint={teacher}"],
    "tfd_packed": ["method.name=tfd", "seeds=[1,2]"],
}
"""Name -> overrides; ``{teacher}``: the best.pt of the ``ce`` run (a tiny teacher)."""


def weights_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        if torch.is_tensor(v):
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_record(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    summary = json.loads((run_dir / "summary.json").read_text())
    ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    keep = ("best_top1", "best_epoch", "last_top1", "last_top5", "last_test_loss", "params")
    return {"rows": rows, "summary": {k: summary[k] for k in keep if k in summary},
            "student_sha256": weights_hash(ck["model"])}


def produce(out: Path) -> dict:
    from tfdistill import train
    from tfdistill.config import load_config

    torch.set_num_threads(1)
    records: dict = {}
    teacher = ""
    for name, over in RUNS.items():
        over = [o.replace("{teacher}", teacher) for o in over]
        cfg = load_config(None, [*BASE, *over, f"out_dir={out / name}"])
        res = train(cfg, echo=lambda s: None)
        results = res if isinstance(res, list) else [res]
        for r in results:
            key = name if len(results) == 1 else f"{name}/{r.run_dir.name}"
            records[key] = run_record(r.run_dir)
        if name == "ce":
            teacher = str(results[0].run_dir / "best.pt")
    return records


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        recs = produce(Path(d))
    text = json.dumps({"torch": torch.__version__, "runs": recs}, indent=1, sort_keys=True) + "\n"
    if "--write" in sys.argv:
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN}")
    else:
        print(text)
