"""Paired statistics (#32): runs of two methods paired by seed, initial weights and data order; the paired mean
difference with its t-interval beside Welch's; the reason in one line where runs are not pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY
from test_report import make_sweep

from tfdistill.config import load_config
from tfdistill.fingerprint import pair_problem
from tfdistill.report import make_report
from tfdistill.report.stats import paired_difference


def test_the_paired_interval_is_scipys_ttest_rel():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(7)
    for n in (2, 3, 5, 8):
        a, b = rng.normal(56, 1.5, n), rng.normal(55.5, 1.5, n)
        d = paired_difference(list(a), list(b))
        res = ttest_rel(a, b)
        ci = res.confidence_interval(0.95)
        assert d.pairs == n and d.df == res.df == n - 1
        assert d.value == pytest.approx(np.mean(a - b)) and (d.lo, d.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # the per-seed differences of #32 (TFD - CE on the committed scarce-data result): [-0.68, +1.81]
    d = paired_difference([1.64, 1.66, 0.08, -0.37, -0.18], [0.0] * 5)
    assert (round(d.lo, 2), round(d.hi, 2)) == (-0.68, 1.81)
    assert paired_difference([], []) is None
    one = paired_difference([2.0], [1.0])
    assert (one.value, one.se, one.lo, one.pairs) == (1.0, None, None, 1)
    flat = paired_difference([2.0, 3.0], [1.0, 2.0])
    assert (flat.lo, flat.hi, flat.excludes_zero) == (1.0, 1.0, True)
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_golden_sweep_is_paired_by_its_records(tmp_path):
    """The golden sweep's runs (no fingerprints; one commit, device, torch, the same settings) are paired on their
    common finished seeds; the paired interval is scipy's, shown beside Welch's in every table."""
    from scipy.stats import ttest_rel

    make_sweep(tmp_path)
    rep = make_report(tmp_path, out_dir=tmp_path / "out", plots=False)
    g = rep.sections[0].group("cifar100", "resnet8", "tfd")
    tfd, ce = [71.5, 72.0, 73.1], [70.0, 71.0, 72.0]
    d = g.paired_gain("last")
    ci = ttest_rel(tfd, ce).confidence_interval(0.95)
    assert d.pairs == 3 and (d.lo, d.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    best = g.paired_gain("best")
    ci = ttest_rel([72.0, 72.6, 73.3], [70.5, 71.5, 72.5]).confidence_interval(0.95)
    assert (best.lo, best.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert "| resnet8 | tfd | 3/3 | 72.20 ± 0.82 (n=3) | 72.63 ± 0.65 (n=3) | +1.20 ± 0.75 | [-0.90, +3.30] | no | " \
        "+1.20 ± 0.15 | [+0.54, +1.86] | 3 |" in rep.markdown
    # resnet14: seed 0 is the only seed finished in both arms: one pair, no interval
    assert rep.sections[0].group("cifar100", "resnet14", "tfd").paired_gain("last").pairs == 1
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["sections"][0]["groups"]
    rec = next(r for r in rows if (r["student"], r["label"]) == ("resnet8", "tfd"))
    assert rec["paired_last_pairs"] == 3 and rec["paired_last_lo"] == pytest.approx(d.lo)
    assert rec["pairing"].startswith("paired with ce on seeds 0, 1, 2 (n=3): runs made before fingerprints")
    assert "paired_best_hi" in (tmp_path / "out" / "report.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("change, why", [
    ({"summary": {"device": "x86_64 CPU (2 cores, 2 threads)"}}, "with another device (cpu vs cuda)"),
    ({"summary": {"git_commit": "0123456789abcdef+dirty"}}, "from code with local changes"),
    ({"summary": {"torch": "2.4.1"}}, "with another torch (2.4.1 vs 2.14.1)"),
    ({"config": ("data", "augment", ["flip"])}, "their settings differ in data.augment"),
    ({"config": ("model", "kwargs", {"width": 2})}, "their settings differ in model.kwargs"),
])
def test_runs_made_before_fingerprints_are_paired_only_when_their_records_prove_it(tmp_path, change, why):
    import yaml

    sweep = make_sweep(tmp_path)
    run = sweep / "resnet8_tfd_s1"
    if "summary" in change:
        s = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**s, **change["summary"]}))
    else:
        sec, key, value = change["config"]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg[sec][key] = value
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rep = make_report(tmp_path, out_dir=tmp_path / "out", plots=False)
    # (a run of other settings forms a group of its own, compared with the same ce runs)
    g = next(g for g in rep.sections[0].groups if "resnet8_tfd_s1" in [r.name for r in g.runs])
    assert g.paired_gain("last") is None and g.gain("last") is not None  # Welch only
    line = next(ln for ln in rep.markdown.splitlines() if ln.startswith(f"- cifar100 / resnet8 / {g.label}: ")
                and "paired" in ln)
    assert line.startswith(f"- cifar100 / resnet8 / {g.label}: not paired with ce: resnet8_tfd_s1 / resnet8_ce_s1: "
                           "made before fingerprints") and why in line and line.endswith("; Welch's interval only"), line


def test_pair_problem_names_what_differs():
    fp = {"data": {"hash": "d"}, "init": {"hash": "i"}, "order": {"hash": "o"}, "env": {"device": "cpu", "torch": "2"}}
    assert pair_problem(fp, json.loads(json.dumps(fp))) is None
    cuda = {**fp, "order": {"hash": "x"}, "env": {"device": "cuda", "torch": "2"}}
    assert pair_problem(fp, cuda) == "another data order (first epoch o vs x; devices cpu vs cuda)"
    assert pair_problem(fp, {**fp, "init": {"hash": "j"}}) == "other initial weights (init i vs j)"
    assert pair_problem(fp, {**fp, "order": None}) == "first-epoch order not recorded"
    assert pair_problem(fp, None) == "no fingerprint"
    assert pair_problem(fp, {**fp, "data": {"hash": "e", "name": "x"}}).startswith("other data (")


@pytest.mark.slow
def test_trained_runs_are_paired_by_their_fingerprints_and_a_run_with_another_order_is_not(tmp_path, monkeypatch):
    """End to end: CE and TFD at seeds 0 and 1 pair by fingerprint.json (even when their summaries were made on
    other machines); TFD runs whose loader really drew another order (another data seed) are reported unpaired."""
    from tfdistill import train
    from tfdistill.data import device_loader

    def cfgs(folder, method):
        return [load_config(None, [*TINY, f"out_dir={tmp_path / folder}", f"name={method}_s{s}", f"seed={s}",
                                   f"method.name={method}", "engine.max_steps_per_epoch=2", "data.synthetic_test=32"])
                for s in (0, 1)]

    train(cfgs("a", "ce") + cfgs("a", "tfd"), echo=lambda s: None)
    for s in (0, 1):  # another machine's summary: fingerprints decide, not the summaries
        f = tmp_path / "a" / f"tfd_s{s}" / "summary.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "device": "NVIDIA H100", "torch": "9"}))
    rep = make_report(tmp_path / "a", plots=False)
    g = rep.sections[0].group("synthetic", "resnet8", "tfd")
    assert g.paired_gain("last").pairs == 2
    assert "paired with ce on seeds 0, 1 (n=2): the same initial weights, data and first-epoch order " \
        "(fingerprint.json)" in rep.markdown

    train(cfgs("b", "ce"), echo=lambda s: None)
    real = device_loader.mix_seed
    monkeypatch.setattr(device_loader, "mix_seed", lambda *parts: real(*parts, 99))  # another data seed
    train(cfgs("b", "tfd"), echo=lambda s: None)
    rep = make_report(tmp_path / "b", plots=False)
    g = rep.sections[0].group("synthetic", "resnet8", "tfd")
    assert g.paired_gain("last") is None and g.gain("last") is not None
    line = next(ln for ln in rep.markdown.splitlines() if "not paired with ce" in ln)
    assert "tfd_s0 / ce_s0: another data order (first epoch" in line and "(and 1 more pair)" in line, line
    assert "| resnet8 | last-epoch | unpaired |" in rep.markdown


def test_the_report_tabulates_the_primary_metric_a_summary_names(tmp_path):
    """The metric contract (rundir): summary.json's ``primary_metric`` m (absent: top1); the report reads
    ``best_<m>``/``last_<m>`` from summary.json and plots ``test_<m>`` from metrics.jsonl."""
    from test_report import write_run

    base = ["data.name=synthetic", "model.name=resnet8", "epochs=3"]
    for method, vals in (("ce", (40.0, 41.0, 43.0)), ("tfd", (42.0, 42.5, 45.0))):
        for seed, v in enumerate(vals):
            run = tmp_path / "seg" / f"{method}_{seed}"
            write_run(run, load_config(None, [*base, f"method.name={method}", f"seed={seed}"]), (0.0, 0.0))
            s = json.loads((run / "summary.json").read_text())
            for k in ("best_top1", "last_top1", "last_top5"):
                del s[k]
            (run / "summary.json").write_text(json.dumps({**s, "primary_metric": "miou", "last_miou": v,
                                                          "best_miou": v + 1}))
            (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 1.0 / e, "test_miou": v - 3 + e})
                                                       + "\n" for e in (1, 2, 3)))
    rep = make_report(tmp_path / "seg", out_dir=tmp_path / "out")
    g = rep.sections[0].group("synthetic", "resnet8", "tfd")
    assert [r.status for r in g.runs] == ["finished"] * 3 and g.metric == "miou"
    assert g.stat("last").mean == pytest.approx(43.1666666) and g.gain("best").value == pytest.approx(np.mean([43, 43.5, 46]) - np.mean([41, 42, 44]))
    assert g.paired_gain("last").pairs == 3
    assert "### synthetic: last-epoch mIoU (%), mean ± std (final model, recommended)" in rep.markdown
    assert "top-1" not in rep.markdown.split("## ", 1)[1]  # (the legend above the sections is generic)
    details = json.loads((tmp_path / "out" / "report.json").read_text())["sections"][0]["groups"][0]["run_details"]
    assert details[0]["last_miou"] == 40.0 and "last_top1" not in details[0]
    from tfdistill.report.plots import curves_figure

    fig = curves_figure({"tfd": [r.metrics() for r in g.finished]}, metric="miou")
    assert fig.axes[0].get_ylabel() == "test miou" and len(fig.axes[0].lines) == 1
