"""Compare a retrained run's metrics.jsonl/summary.json with the committed one: every number but wall times."""
import json, sys
from pathlib import Path

TIME = {"epoch_seconds", "images_per_sec", "time", "wall_seconds", "git_commit", "device", "resumed_from_epoch"}

def rows(p):
    return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]

def strip(d):
    return {k: (strip(v) if isinstance(v, dict) else v) for k, v in d.items() if k not in TIME}

ok = True
out = []
for name in sys.argv[2:]:
    a, b = Path(sys.argv[1]) / name, Path("/work/main/results/cifar10_scarce_r20/runs") / name
    ra, rb = rows(a / "metrics.jsonl"), rows(b / "metrics.jsonl")
    diffs = [(x["epoch"], k, x.get(k), y.get(k)) for x, y in zip(ra, rb) for k in set(strip(x)) | set(strip(y))
             if strip(x).get(k) != strip(y).get(k)]
    sa, sb = strip(json.load(open(a / "summary.json"))), strip(json.load(open(b / "summary.json")))
    sdiff = {k: (sa.get(k), sb.get(k)) for k in set(sa) | set(sb) if sa.get(k) != sb.get(k)}
    same = len(ra) == len(rb) and not diffs
    ok &= same
    out.append({"run": name, "epochs_compared": len(ra), "committed_epochs": len(rb), "metric_values_differing": len(diffs),
                "first_differences": diffs[:5], "summary_differences": sdiff,
                "last_top1": [sa.get("last_top1"), sb.get("last_top1")], "best_top1": [sa.get("best_top1"), sb.get("best_top1")],
                "identical": same})
print(json.dumps({"all_identical": ok, "runs": out}, indent=1))
