"""`tfdistill report` on hand-made run directories: statistics, flags, the paper column, CSV/JSON and plots."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from tfdistill.cli import main
from tfdistill.config import to_yaml
from tfdistill.report import make_report
from tfdistill.report.stats import describe, difference
from tfdistill.sweep import spec_from_raw
from tfdistill.sweep.spec import expand

# (student, method) -> per seed: (last, best) top-1, or "unfinished" / a FAILED marker's error line.
RESULTS = {
    ("resnet8", "ce"): [(70.0, 70.5), (71.0, 71.5), (72.0, 72.5)],
    ("resnet8", "tfd"): [(71.5, 72.0), (72.0, 72.6), (73.1, 73.3)],
    ("resnet14", "ce"): [(74.0, 74.2), (75.0, 75.4), "DivergenceError: loss became NaN/inf in epoch 2"],
    ("resnet14", "tfd"): [(76.0, 76.5), "unfinished", "RuntimeError: CUDA out of memory"],
}
PAPER = {"source": "Table X", "statistic": "best-of-3", "epoch": "best", "note": "made up.",
         "results": {"resnet8": {"ce": 69.06, "tfd": 70.56}, "resnet14": {"ce": 71.14, "tfd": {"top1": 72.73, "gain": 1.59}}}}


def write_run(run_dir: Path, cfg, outcome, epochs: int = 3) -> None:
    """A run directory as the engine (and the sweep, for FAILED) would leave it."""
    run_dir.mkdir(parents=True)
    cfg = cfg.copy()
    cfg.engine.precision = "bf16"  # the engine writes engine.* = auto resolved (here: as on a GPU)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if isinstance(outcome, str) and outcome != "unfinished":
        (run_dir / "FAILED").write_text(f"{outcome}\nexit code: 1\n")
        return
    last, best = (outcome if outcome != "unfinished" else (50.0, 50.0))
    done = 1 if outcome == "unfinished" else epochs
    rows = [{"epoch": e, "lr": 0.05, "loss": 2.0 / e, "test_top1": best - (epochs - e), "best_top1": best}
            for e in range(1, done + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if outcome != "unfinished":
        (run_dir / "summary.json").write_text(json.dumps({
            "status": "finished", "name": run_dir.name, "model": cfg.model.name, "method": cfg.method.name,
            "dataset": cfg.data.name, "seed": cfg.seed, "epochs": epochs, "best_top1": best, "best_epoch": epochs,
            "last_top1": last, "last_top5": 99.0, "wall_seconds": 10.0, "device": "NVIDIA H100 80GB HBM3",
            "torch": "2.14.1", "git_commit": "0123456789abcdef", "world_size": 1}))


def make_sweep(root: Path, results=RESULTS, paper=PAPER) -> Path:
    """A sweep folder like `tfdistill sweep` writes: sweep.yaml from the real expansion, then the run dirs."""
    spec = spec_from_raw({"name": "golden", "recipe": "cifar100/paper", "out_dir": str(root), "seeds": [0, 1, 2],
                          "models": ["resnet8", "resnet14"], "overrides": ["epochs=3"],
                          "grid": {"methods": ["ce", "tfd"]}, "paper": paper})
    plan = expand(spec)
    sweep = plan.sweep_dir
    sweep.mkdir(parents=True)
    (sweep / "sweep.yaml").write_text(json.dumps(plan.resolved()))
    for r in plan.runs:
        write_run(r.run_dir, r.cfg, results[(r.model, r.method)][r.seed])
    return sweep


GOLDEN = """\
# tfdistill report

Runs under `<ROOT>`: 12 (9 finished, 1 unfinished, 1 failed, 1 diverged).

{legend}

## sweep `golden` (golden)

Protocol: epochs 3; train subset all; test subset all; resolution the dataset's own; batch 64; precision bf16; evaluated every epoch; seeds 0, 1, 2; device NVIDIA H100 80GB HBM3; torch 2.14.1; commit 0123456789.

Paper: Table X: best-of-3 over seeds, best-epoch top-1. made up.

### cifar100: last-epoch top-1 (%), mean ± std (final model, recommended)

| student | ce | tfd |
|---|---|---|
| resnet8 | 71.00 ± 1.00 (n=3) | 72.20 ± 0.82 (n=3) |
| resnet14 | 74.50 ± 0.71 (n=2) ⚠ | 76.00 (n=1) ⚠ |

### cifar100: best-epoch top-1 (%), mean ± std (max over epochs, optimistic)

| student | ce | tfd |
|---|---|---|
| resnet8 | 71.50 ± 1.00 (n=3) | 72.63 ± 0.65 (n=3) |
| resnet14 | 74.80 ± 0.85 (n=2) ⚠ | 76.50 (n=1) ⚠ |

### cifar100: gain over ce, last-epoch (difference of means ± combined std error [Welch 95 % CI]; * = excludes 0)

| student | tfd |
|---|---|
| resnet8 | +1.20 ± 0.75 [-0.90, +3.30] |
| resnet14 | +1.50 ± – |

### cifar100: paired gain over ce (mean of the per-seed differences ± its std error [paired 95 % t-interval] (n pairs); see Pairing)

| student | epoch | tfd |
|---|---|---|
| resnet8 | last-epoch | +1.20 ± 0.15 [+0.54, +1.86]* (n=3) |
| resnet8 | best-epoch (optimistic: selected on the test set) | +1.13 ± 0.20 [+0.26, +2.01]* (n=3) |
| resnet14 | last-epoch | +2.00 ± – (n=1) |
| resnet14 | best-epoch (optimistic: selected on the test set) | +2.30 ± – (n=1) |

### cifar100: the paper's numbers, paper (best-of-3, best epoch)

| student | ce | tfd |
|---|---|---|
| resnet8 | 69.06 | 70.56 |
| resnet14 | 71.14 | 72.73 |

### cifar100: all numbers (n = finished/all runs)

| student | method | n | last epoch | best epoch | gain (last-epoch) | 95 % CI (Welch) | CI excludes 0 | paired gain | 95 % CI (paired) | pairs | paper | paper gain | ours as the paper (best-of-3, best) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| resnet8 | ce | 3/3 | 71.00 ± 1.00 (n=3) | 71.50 ± 1.00 (n=3) | – | – | – | – | – | – | 69.06 | – | 72.50 |
| resnet8 | tfd | 3/3 | 72.20 ± 0.82 (n=3) | 72.63 ± 0.65 (n=3) | +1.20 ± 0.75 | [-0.90, +3.30] | no | +1.20 ± 0.15 | [+0.54, +1.86] | 3 | 70.56 | +1.50 | 73.30 |
| resnet14 | ce | 2/3 ⚠ | 74.50 ± 0.71 (n=2) | 74.80 ± 0.85 (n=2) | – | – | – | – | – | – | 71.14 | – | 75.40 |
| resnet14 | tfd | 1/3 ⚠ | 76.00 (n=1) | 76.50 (n=1) | +1.50 ± – | – | – | +2.00 ± – | – | 1 | 72.73 | +1.59 | 76.50 |

### Pairing

- cifar100 / resnet8 / tfd: paired with ce on seeds 0, 1, 2 (n=3): runs made before fingerprints; the same seed, model and data settings, commit 0123456789, device cuda, torch 2.14.1 give the same start and order
- cifar100 / resnet14 / tfd: paired with ce on seeds 0 (n=1): runs made before fingerprints; the same seed, model and data settings, commit 0123456789, device cuda, torch 2.14.1 give the same start and order

### Flags

- cifar100 / resnet14 / ce: 1 diverged run excluded: resnet14_ce_s2: DivergenceError: loss became NaN/inf in epoch 2
- cifar100 / resnet14 / ce: n=2: fewer than 3 finished seeds, a mean ± std to read with care
- cifar100 / resnet14 / tfd: 1 unfinished (running or interrupted) run excluded: resnet14_tfd_s1 (epoch 1/3)
- cifar100 / resnet14 / tfd: 1 failed run excluded: resnet14_tfd_s2: RuntimeError: CUDA out of memory
- cifar100 / resnet14 / tfd: n=1: a single finished run, no standard deviation
"""


def test_golden_markdown_and_statistics(tmp_path):
    from tfdistill.report.render import LEGEND

    sweep = make_sweep(tmp_path)
    rep = make_report(tmp_path, out_dir=tmp_path / "out")
    assert rep.markdown.replace(str(tmp_path), "<ROOT>") == GOLDEN.format(legend=LEGEND)

    # the numbers, against the statistics module and against numpy / the standard library
    (sec,) = rep.sections
    assert sec.path == sweep
    g = sec.group("cifar100", "resnet8", "tfd")
    last = [71.5, 72.0, 73.1]
    s = g.stat("last")
    assert s == describe(last)
    assert s.mean == pytest.approx(np.mean(last)) and s.std == pytest.approx(np.std(last, ddof=1))
    assert s.std == pytest.approx(statistics.stdev(last)) and s.n == 3
    ce = describe([70.0, 71.0, 72.0])
    d = g.gain("last")
    assert d == difference(s, ce)
    assert d.value == pytest.approx(np.mean(last) - 71.0)
    assert d.se == pytest.approx(np.sqrt(np.var(last, ddof=1) / 3 + 1.0 / 3))
    # the 95 % interval: Welch's t-test of scipy (an independent implementation: ttest_ind, not t.ppf)
    from scipy.stats import ttest_ind

    ci = ttest_ind(last, [70.0, 71.0, 72.0], equal_var=False).confidence_interval(0.95)
    assert (d.lo, d.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert (round(d.lo, 2), round(d.hi, 2)) == (-0.90, 3.30) and d.excludes_zero is False
    # an interval that excludes 0, and two constant groups (no spread: the interval is the point)
    far = difference(describe([80.0, 81.0, 82.0]), ce)
    assert far.lo > 0 and far.excludes_zero is True
    flat = difference(describe([72.0, 72.0, 72.0]), describe([71.0, 71.0, 71.0]))
    assert (flat.se, flat.lo, flat.hi, flat.excludes_zero) == (0.0, 1.0, 1.0, True)
    one = sec.group("cifar100", "resnet14", "tfd")
    assert one.stat("last").n == 1 and one.stat("last").std is None and one.gain("last").se is None
    assert [r.status for r in one.runs] == ["finished", "unfinished", "failed"]
    assert [r.status for r in sec.group("cifar100", "resnet14", "ce").runs] == ["finished", "finished", "diverged"]


def test_csv_json_and_plots(tmp_path):
    make_sweep(tmp_path)
    out = tmp_path / "out"
    rep = make_report(tmp_path / "golden", out_dir=out, metric="best")
    rows = {(r["student"], r["label"]): r for r in csv.DictReader(io.StringIO((out / "report.csv").read_text()))}
    assert len(rows) == 4
    r = rows[("resnet8", "tfd")]
    assert (r["n"], r["runs"], r["last_mean"], r["last_std"]) == ("3", "3", "72.2000", "0.8185")
    assert float(r["gain_best"]) == pytest.approx(np.mean([72.0, 72.6, 73.3]) - 71.5, abs=1e-4)
    assert float(r["gain_best_lo"]) < float(r["gain_best"]) < float(r["gain_best_hi"])
    assert r["gain_best_excludes_zero"] in ("True", "False")
    assert (r["paper_top1"], r["paper_statistic"], r["ours_as_paper"]) == ("70.5600", "best-of-3", "73.3000")
    r = rows[("resnet14", "tfd")]
    assert (r["n"], r["unfinished"], r["failed"], r["diverged"]) == ("1", "1", "1", "0")
    assert "n=1" in r["flags"] and r["paper_gain"] == "1.5900"
    assert rows[("resnet14", "ce")]["diverged"] == "1"

    data = json.loads((out / "report.json").read_text())
    assert data["metric"] == "best" and data["sections"][0]["sweep"] == "golden"
    assert data["sections"][0]["paper"]["statistic"] == "best-of-3"
    groups = {(g["student"], g["label"]): g for g in data["sections"][0]["groups"]}
    details = groups[("resnet14", "tfd")]["run_details"]
    assert [d["status"] for d in details] == ["finished", "unfinished", "failed"]
    assert details[2]["error"] == "RuntimeError: CUDA out of memory" and details[1]["epochs_done"] == 1
    assert groups[("resnet8", "ce")]["last_std"] == pytest.approx(1.0)

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["curves_resnet14.png", "curves_resnet8.png", "gains.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert {p.name for p in rep.files} == {"report.md", "report.csv", "report.json", *pngs}


def test_loose_runs_labels_not_started_and_no_paper(tmp_path):
    """Runs outside a sweep: labels from the distinguishing config keys, "–" for the paper; a planned run
    that never started is listed."""
    from tfdistill.config import load_config

    base = ["data.name=synthetic", "model.name=resnet8", "epochs=3"]
    write_run(tmp_path / "loose" / "a", load_config(None, [*base, "method.name=ce", "seed=0"]), (60.0, 61.0))
    write_run(tmp_path / "loose" / "b", load_config(None, [*base, "method.name=ce", "seed=1"]), (62.0, 63.0))
    for seed, alpha, acc in ((0, 0.005, 64.0), (1, 0.005, 66.0), (0, 0.05, 58.0), (1, 0.05, 57.0)):
        cfg = load_config(None, [*base, "method.name=tfd", f"method.tfd.alpha={alpha}", f"seed={seed}"])
        write_run(tmp_path / "loose" / f"tfd_{alpha}_{seed}", cfg, (acc, acc + 1))
    rep = make_report(tmp_path / "loose", plots=False)
    (sec,) = rep.sections
    assert sec.labels("synthetic") == ["ce", "tfd [tfd.alpha=0.005]", "tfd [tfd.alpha=0.05]"]
    g = sec.group("synthetic", "resnet8", "tfd [tfd.alpha=0.05]")
    assert g.stat("last").mean == 57.5 and g.gain("last").value == pytest.approx(-3.5)
    # n = 2 is flagged (fewer than 3 seeds); the interval: Welch with 1 + 1 degrees of freedom, t(0.975, 2) * 1.41
    # paired by seed (their records prove the same start and order): both differences are +4, a point interval
    assert "| resnet8 | tfd [tfd.alpha=0.005] | 2/2 ⚠ | 65.00 ± 1.41 (n=2) | 66.00 ± 1.41 (n=2) | +4.00 ± 1.41 | " \
        "[-2.08, +10.08] | no | +4.00 ± 0.00 | [+4.00, +4.00] | 2 | – | – |" in rep.markdown
    assert "tfd [tfd.alpha=0.005]: n=2: fewer than 3 finished seeds" in rep.markdown
    assert "paper's numbers" not in rep.markdown
    assert (tmp_path / "loose" / "report" / "report.md").is_file()

    # a sweep folder whose sweep.yaml plans a run that has no directory yet
    sweep = make_sweep(tmp_path / "s", results={k: [(70.0, 71.0)] * 3 for k in RESULTS})
    import shutil

    shutil.rmtree(sweep / "resnet8_tfd_s2")
    rep = make_report(sweep, plots=False)
    g = rep.sections[0].group("cifar100", "resnet8", "tfd")
    assert [r.status for r in g.runs] == ["finished", "finished", "not started"]
    assert "1 not started run excluded: resnet8_tfd_s2" in rep.markdown


def test_report_cli(capsys, tmp_path):
    make_sweep(tmp_path)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# tfdistill report") and "written:" in out and not list((tmp_path / "r").glob("*.png"))
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfdistill: error: no run directories") and "\n" not in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- issue 14
def test_no_ce_baseline_says_why(tmp_path):
    """Two ce configs in one folder: none is *the* baseline; the report names the key that differs."""
    from tfdistill.config import load_config

    base = ["data.name=synthetic", "model.name=resnet8"]
    write_run(tmp_path / "ce2", load_config(None, [*base, "method.name=ce", "epochs=2"]), (60.0, 61.0), epochs=2)
    write_run(tmp_path / "ce3", load_config(None, [*base, "method.name=ce", "epochs=3"]), (62.0, 63.0))
    write_run(tmp_path / "tfd3", load_config(None, [*base, "method.name=tfd", "epochs=3"]), (64.0, 65.0))
    rep = make_report(tmp_path, plots=False)
    assert "No CE baseline: the ce runs here differ from each other in epochs" in rep.markdown
    assert "`ce [epochs=2]` (resnet8)" in rep.markdown and "`ce [epochs=3]` (resnet8)" in rep.markdown
    assert "No CE baseline (method ce) among these runs" not in rep.markdown


def test_no_ce_run_at_all_and_a_mismatched_baseline_is_flagged(tmp_path):
    from tfdistill.config import load_config

    base = ["data.name=synthetic", "model.name=resnet8"]
    write_run(tmp_path / "a" / "tfd", load_config(None, [*base, "method.name=tfd", "epochs=3"]), (64.0, 65.0))
    assert "No CE baseline (no run of method ce in this folder)" in make_report(tmp_path / "a", plots=False).markdown
    # one ce config, but not the tfd run's: the gain is computed and flagged with the keys that differ
    write_run(tmp_path / "b" / "ce", load_config(None, [*base, "method.name=ce", "epochs=2"]), (60.0, 61.0), epochs=2)
    write_run(tmp_path / "b" / "tfd", load_config(None, [*base, "method.name=tfd", "epochs=3"]), (64.0, 65.0))
    rep = make_report(tmp_path / "b", plots=False)
    g = rep.sections[0].group("synthetic", "resnet8", "tfd")
    assert g.baseline_differences() == ["epochs: 2 in ce, 3 here"]
    assert "its ce baseline was trained with another config (epochs: 2 in ce, 3 here)" in rep.markdown
    # same config apart from the method: no flag
    write_run(tmp_path / "c" / "ce", load_config(None, [*base, "method.name=ce", "epochs=3"]), (60.0, 61.0))
    write_run(tmp_path / "c" / "tfd", load_config(None, [*base, "method.name=tfd", "epochs=3"]), (64.0, 65.0))
    rep = make_report(tmp_path / "c", plots=False)
    assert rep.sections[0].group("synthetic", "resnet8", "tfd").baseline_differences() == []
    assert "another config" not in rep.markdown


def test_one_epoch_curves_are_visible(tmp_path, monkeypatch):
    """A 1-epoch run is one point per curve: drawn as a marker (a line through one point draws nothing)."""
    import matplotlib.figure

    from tfdistill.report.plots import plot_curves

    saved = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (saved.append(fig), real_savefig(fig, *a, **k))[1])
    one = [{"epoch": 1, "loss": 2.0, "test_top1": 30.0}]
    path = plot_curves({"ce": [one], "tfd": [one, [{"epoch": 1, "loss": 2.1, "test_top1": 32.0}]]}, tmp_path / "c.png")
    assert path.stat().st_size > 0
    (fig,) = saved
    lines = [ln for ax in fig.axes for ln in ax.lines if not ln.get_label().startswith("_")]  # not error caps
    assert len(lines) == 4
    for ln in lines:
        assert len(ln.get_xdata()) == 1 and ln.get_marker() not in (None, "None", "", " ") and ln.get_markersize() > 0
    for ax in fig.axes:  # whole epochs only on the axis
        assert all(float(t).is_integer() for t in ax.get_xticks())


def test_protocol_prefers_the_summarys_precision_and_flags_differences(tmp_path):
    """#14: the report states epochs, subsets, resolution and precision; values that differ between runs are
    listed and flagged; the precision a run computed in comes from its summary.json."""
    import yaml

    sweep = make_sweep(tmp_path)
    run = sweep.parent / "resnet8_tfd_s0"
    if not run.is_dir():
        run = next(p for p in sweep.parent.rglob("resnet8_tfd_s0") if p.is_dir())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["image_size"] = 32
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "precision": "fp32"}))
    rep = make_report(tmp_path, out_dir=tmp_path / "out", plots=False)
    line = next(ln for ln in rep.markdown.splitlines() if ln.startswith("Protocol:"))
    assert "resolution the dataset's own / 32 px ⚠ differs between runs" in line
    assert "precision bf16 / fp32 ⚠ differs between runs" in line and "epochs 3;" in line
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["sections"][0]["protocol"]["precision"] == ["bf16", "fp32"]


def test_a_key_an_older_run_lacks_counts_as_its_default(tmp_path):
    """A run made before a config key existed (its config.yaml lacks it) is a seed of the same experiment as runs
    with that key at its default; a run with another value is another experiment."""
    import yaml

    from tfdistill.report import scan

    sweep = make_sweep(tmp_path)

    def edit(run: str, change) -> None:
        path = sweep / run / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        change(cfg)
        path.write_text(yaml.safe_dump(cfg))

    edit("resnet8_ce_s0", lambda c: (c["schedule"].pop("power"), c["data"].pop("crop_size")))
    (sec,) = scan(sweep)
    assert [len(g.finished) for g in sec.groups if g.model == "resnet8" and g.method == "ce"] == [3]
    edit("resnet8_ce_s1", lambda c: c["schedule"].update(power=2.0))
    (sec,) = scan(sweep)
    groups = sorted((g.label, len(g.finished)) for g in sec.groups if g.model == "resnet8" and g.method == "ce")
    assert groups == [("ce [schedule.power=0.9]", 2), ("ce [schedule.power=2.0]", 1)], groups
