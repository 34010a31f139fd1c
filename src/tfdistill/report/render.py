"""Markdown, CSV and JSON renderings of scanned sections (see :mod:`tfdistill.report.collect`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional

from .collect import BASELINE, ResultGroup, Section, no_baseline_reason
from .stats import Diff, Stat

WARN = "⚠"
DASH = "–"
LEGEND = (
    "Cells: each table's metric (top-1 accuracy (%) for classification, mIoU (%) for segmentation: summary.json's "
    "primary_metric) as mean ± sample standard deviation (ddof=1) over the finished seeds, with n. "
    "**Last epoch** is the final model: the honest number, recommended. **Best epoch** is the maximum over the "
    "evaluated epochs of that metric on the test set, i.e. selected on the test set (optimistic; CRD's and the paper's "
    "protocol). Gain = difference of the means from the CE baseline of the same student in the same folder, "
    "± the combined standard error sqrt(s1²/n1 + s2²/n2), and in brackets its 95 % confidence interval (Welch's t "
    "interval, Welch-Satterthwaite degrees of freedom; the two groups' variances are not assumed equal); "
    "* = the interval excludes 0. " + WARN + " = see Flags: fewer than 3 seeds, and unfinished, failed or "
    "diverged runs (listed there and never averaged in). Paired gain: where a method's runs and the CE runs of the "
    "same seeds started from the same weights and saw the same data in the same order (see Pairing: by their "
    "fingerprint.json, or for runs made before fingerprints by their settings, commit, device and torch), the mean "
    "of the per-seed differences ± its standard error, its 95 % t-interval (n pairs - 1 degrees of freedom) and n "
    "pairs, beside Welch's interval (with few pairs it can be the wider one); where they did not, Welch's only."
)
METRIC_NAMES = {"top1": "top-1 (%)", "miou": "mIoU (%)"}
"""How a primary metric is named in a table's title (any other metric: by its own name)."""


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def section_metric(sec: Section, dataset: str) -> str:
    """The primary metric of a dataset's groups in ``sec`` (summary.json's ``primary_metric``; ``top1`` by default)."""
    return next((g.metric for g in sec.groups if g.dataset == dataset), "top1")
def _num(x: Optional[float], signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def fmt_stat(stat: Stat) -> str:
    if stat.n == 0:
        return DASH
    if stat.std is None:
        return f"{_num(stat.mean)} (n={stat.n})"
    return f"{_num(stat.mean)} ± {_num(stat.std)} (n={stat.n})"


def fmt_gain(diff: Optional[Diff], interval: bool = False) -> str:
    """``+0.91 ± 0.42``; with ``interval``: ``+0.91 ± 0.42 [-0.69, +2.51]`` and ``*`` when it excludes 0."""
    if diff is None:
        return DASH
    text = f"{_num(diff.value, signed=True)} ± {_num(diff.se) if diff.se is not None else DASH}"
    if interval and diff.lo is not None:
        text += f" [{_num(diff.lo, signed=True)}, {_num(diff.hi, signed=True)}]" + ("*" if diff.excludes_zero else "")
    return text


def fmt_paired(diff: Optional[Diff], pairing: Any = None) -> str:
    """``+0.57 ± 0.45 [-0.68, +1.81] (n=5)``; ``unpaired`` when the runs are not pairs; – without a baseline."""
    if diff is None:
        return "unpaired" if pairing is not None and not pairing.paired else DASH
    return f"{fmt_gain(diff, interval=True)} (n={diff.pairs})"


def fmt_ci(diff: Optional[Diff]) -> str:
    return f"[{_num(diff.lo, signed=True)}, {_num(diff.hi, signed=True)}]" if diff is not None and diff.lo is not None \
        else DASH


def fmt_excludes(diff: Optional[Diff]) -> str:
    ex = diff.excludes_zero if diff is not None else None
    return DASH if ex is None else "yes" if ex else "no"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _cell(g: Optional[ResultGroup], text: str) -> str:
    if g is None:
        return DASH
    return f"{text} {WARN}" if g.flags() else text


def _paper_label(sec: Section) -> str:
    p = sec.paper
    stat = p.get("statistic") or "?"
    return f"paper ({stat}, {p.get('epoch') or 'best'} epoch)"


def render_markdown(root: str | Path, sections: list[Section], metric: str = "last") -> str:
    runs = [r for s in sections for r in s.runs]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    order = ("finished", "unfinished", "failed", "diverged", "not started")
    tally = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    out = ["# tfdistill report", "", f"Runs under `{root}`: {len(runs)} ({tally}).", "", LEGEND, ""]
    for sec in sections:
        out += _section_md(sec, metric)
    return "\n".join(out).rstrip() + "\n"


def _values(runs: list, get: Any) -> list[Any]:
    out: list[Any] = []
    for r in runs:
        v = get(r)
        if v is not None and v not in out:
            out.append(v)
    return out


def _precision(r: Any) -> Any:
    """What the run computed in: summary.json's ``precision`` (the resolved value), else its config's."""
    return (r.summary or {}).get("precision") or r.get("engine.precision")


def protocol(sec: Section) -> dict[str, list[Any]]:
    """The protocol of a section's runs, each entry the distinct values over its runs (one value: all agree)."""
    known = [r for r in sec.runs if r.config or r.summary]
    runs = [r for r in known if r.status != "not started"] or known  # planned configs hold engine.* = auto

    def subset(key: str):
        def get(r: Any) -> Any:
            v = r.get(key)
            return None if v is None else "all" if not v else int(v)
        return get

    def resolution(r: Any) -> Any:
        v = r.get("data.image_size")
        return None if v is None else f"{int(v)} px" if v else "the dataset's own"

    return {
        "epochs": _values(runs, lambda r: r.get("epochs") or (r.summary or {}).get("epochs")),
        "train subset": _values(runs, subset("data.train_subset")),
        "test subset": _values(runs, subset("data.test_subset")),
        "resolution": _values(runs, resolution),
        "batch": _values(runs, lambda r: r.get("data.batch_size")),
        "precision": _values(runs, _precision),
        "evaluated": _values(runs, _eval_schedule),
        "seeds": [", ".join(str(s) for s in sorted({int(r.seed) for r in runs if isinstance(r.seed, int)}))]
        if any(isinstance(r.seed, int) for r in runs) else [],
        "device": _values(runs, lambda r: (r.summary or {}).get("device")),
        "torch": _values(runs, lambda r: (r.summary or {}).get("torch")),
        "commit": _values(runs, lambda r: (str((r.summary or {}).get("git_commit") or "")[:10] or None)),
    }


def _eval_schedule(r: Any) -> Any:
    """When the test set was evaluated (engine.eval_every / eval_last; the last epoch always)."""
    every, last = r.get("engine.eval_every"), r.get("engine.eval_last")
    if every is None:
        return None
    every, last = int(every), int(last or 0)
    if every <= 1:
        return "every epoch"
    return f"every {every} epochs" + (f" and each of the last {last}" if last else "") + " (and the last)"


def _protocol_line(sec: Section) -> str:
    parts = []
    for k, vals in protocol(sec).items():
        if vals:
            text = " / ".join(str(v) for v in vals)
            parts.append(f"{k} {text}" + (f" {WARN} differs between runs" if len(vals) > 1 else ""))
    return "Protocol: " + "; ".join(parts) + "." if parts else "Protocol: unknown (no run config found)."


def borrowed_line(sec: Section) -> str:
    """Where the baseline runs that joined this section came from (not trained in this folder)."""
    by_folder: dict[str, dict[str, int]] = {}
    for shown, label in sec.borrowed:
        folder = shown.rsplit("/", 1)[0] if "/" in shown else "."
        by_folder.setdefault(folder, {})
        by_folder[folder][label] = by_folder[folder].get(label, 0) + 1
    parts = [", ".join(f"{lab} x{n}" for lab, n in labels.items()) + f" from `{folder}`"
             for folder, labels in by_folder.items()]
    return ("Baselines not trained here: " + "; ".join(parts) + " (finished runs of another folder, compared as if "
            "trained in this one; see its protocol above for where settings, commit or torch differ).")


def _section_md(sec: Section, metric: str) -> list[str]:
    out = [f"## {sec.title}", ""]
    spec = (sec.sweep or {}).get("spec") or {}
    if spec.get("description"):
        out += [str(spec["description"]).strip(), ""]
    out += [_protocol_line(sec), ""]
    if sec.borrowed:
        out += [borrowed_line(sec), ""]
    if sec.has_paper:
        p = sec.paper
        src = f"{p.get('source')}: " if p.get("source") else ""
        out += [f"Paper: {src}{p.get('statistic') or '?'} over seeds, {p.get('epoch') or 'best'}-epoch top-1. "
                + (str(p.get("note")).strip() if p.get("note") else ""), ""]
    which_name = {"last": "last-epoch", "best": "best-epoch"}
    for ds in sec.datasets():
        students, labels = sec.students(ds), sec.labels(ds)
        for which in ("last", "best"):
            rows = [[m] + [_cell(g, fmt_stat(g.stat(which))) if (g := sec.group(ds, m, lab)) else DASH
                           for lab in labels] for m in students]
            title = "final model, recommended" if which == "last" else "max over epochs, optimistic"
            out += [f"### {ds}: {which_name[which]} {metric_name(section_metric(sec, ds))}, mean ± std ({title})", ""]
            out += _table(["student", *labels], rows)
        gain_labels = [lab for lab in labels if lab != BASELINE]
        if any(g.baseline is not None for g in sec.groups if g.dataset == ds) and gain_labels:
            rows = [[m] + [fmt_gain(g.gain(metric), interval=True) if (g := sec.group(ds, m, lab)) else DASH
                           for lab in gain_labels] for m in students]
            out += [f"### {ds}: gain over ce, {which_name[metric]} (difference of means ± combined std error "
                    "[Welch 95 % CI]; * = excludes 0)", ""]
            out += _table(["student", *gain_labels], rows)
            rows = [[m, which_name[w] + (" (optimistic: selected on the test set)" if w == "best" else "")]
                    + [fmt_paired(g.paired_gain(w), g.pairing()) if (g := sec.group(ds, m, lab)) else DASH
                       for lab in gain_labels] for m in students for w in (metric, "best" if metric == "last" else "last")]
            out += [f"### {ds}: paired gain over ce (mean of the per-seed differences ± its std error [paired 95 % "
                    "t-interval] (n pairs); see Pairing)", ""]
            out += _table(["student", "epoch", *gain_labels], rows)
        elif gain_labels:
            out += [no_baseline_reason(sec, ds), ""]
        if sec.has_paper:
            rows = [[m] + [_num(sec.group(ds, m, lab).paper["top1"]) if sec.group(ds, m, lab) else DASH
                           for lab in labels] for m in students]
            out += [f"### {ds}: the paper's numbers, {_paper_label(sec)}", ""]
            out += _table(["student", *labels], rows)
        if sec.paper.get("columns"):
            out += _paper_layout(sec, ds, students)
        header = ["student", "method", "n", "last epoch", "best epoch", f"gain ({which_name[metric]})",
                  "95 % CI (Welch)", "CI excludes 0", "paired gain", "95 % CI (paired)", "pairs", "paper",
                  "paper gain"]
        if sec.has_paper:
            p = sec.paper
            header.append(f"ours as the paper ({p.get('statistic') or '?'}, {p.get('epoch') or 'best'})")
        rows = []
        for m in students:
            for lab in labels:
                g = sec.group(ds, m, lab)
                if g is None:
                    continue
                d = g.gain(metric)
                ci = f"[{_num(d.lo, signed=True)}, {_num(d.hi, signed=True)}]" if d is not None and d.lo is not None \
                    else DASH
                pd = g.paired_gain(metric)
                row = [m, lab, _cell(g, f"{len(g.finished)}/{len(g.runs)}"), fmt_stat(g.stat("last")),
                       fmt_stat(g.stat("best")), fmt_gain(d), ci, fmt_excludes(d),
                       fmt_gain(pd) if pd is not None else fmt_paired(pd, g.pairing()), fmt_ci(pd),
                       str(pd.pairs) if pd is not None else DASH, _num(g.paper["top1"]),
                       _num(g.paper_gain(), signed=True)]
                if sec.has_paper:
                    row.append(_num(g.ours_as_paper()) if g.paper["top1"] is not None else DASH)
                rows.append(row)
        out += [f"### {ds}: all numbers (n = finished/all runs)", ""]
        out += _table(header, rows)
    pairing = [f"- {g.dataset} / {g.model} / {g.label}: {p.line(BASELINE)}" for g in sec.groups
               if (p := g.pairing()) is not None]
    if pairing:
        out += ["### Pairing", "", *pairing, ""]
    flags = [f"- {g.dataset} / {g.model} / {g.label}: {f}" for g in sec.groups for f in g.flags()]
    out += ["### Flags", "", *(flags or ["none"]), ""]
    return out


def _paper_layout(sec: Section, ds: str, students: list[str]) -> list[str]:
    """Students x the paper's columns (``paper.columns``: label -> column name, in the paper's order); each cell
    is ours aggregated as the paper aggregates (its statistic over seeds, its epoch) / the paper's number."""
    cols = {str(k): str(v) for k, v in sec.paper["columns"].items()}
    rows = []
    for m in students:
        row = [m]
        for lab in cols:
            g = sec.group(ds, m, lab)
            ours = _num(g.ours_as_paper()) if g is not None else DASH
            paper = _num(g.paper["top1"]) if g is not None else _num(_paper_top1(sec, m, lab))
            row.append(_cell(g, f"{ours} / {paper}"))
        rows.append(row)
    p = sec.paper
    return [f"### {ds}: in the paper's layout, ours / paper ({p.get('statistic') or '?'}, "
            f"{p.get('epoch') or 'best'} epoch)", "", *_table(["student", *cols.values()], rows)]


def _paper_top1(sec: Section, student: str, label: str) -> Optional[float]:
    v = (sec.paper.get("results") or {}).get(student, {}).get(label)
    return v.get("top1") if isinstance(v, dict) else v


# ----------------------------------------------------------------------------------------------- CSV / JSON
CSV_FIELDS = ["section", "sweep", "dataset", "student", "label", "method", "n", "runs", "unfinished", "failed",
              "diverged", "not_started", "last_mean", "last_std", "last_min", "last_max", "best_mean", "best_std",
              "best_min", "best_max", "gain_last", "gain_last_se", "gain_last_lo", "gain_last_hi", "gain_last_df", "gain_last_excludes_zero",
              "gain_best", "gain_best_se", "gain_best_lo", "gain_best_hi", "gain_best_df", "gain_best_excludes_zero",
              "paired_last", "paired_last_se", "paired_last_lo", "paired_last_hi", "paired_last_df",
              "paired_last_excludes_zero", "paired_last_pairs", "paired_best", "paired_best_se", "paired_best_lo",
              "paired_best_hi", "paired_best_df", "paired_best_excludes_zero", "paired_best_pairs", "pairing",
              "paper_top1",
              "paper_gain", "paper_statistic", "paper_epoch", "ours_as_paper", "flags", "run_names"]


def _r(x: Any) -> Any:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _gain_fields(prefix: str, d: Optional[Diff]) -> dict[str, Any]:
    return {prefix: d.value if d else None, f"{prefix}_se": d.se if d else None,
            f"{prefix}_lo": d.lo if d else None, f"{prefix}_hi": d.hi if d else None,
            f"{prefix}_df": d.df if d else None, f"{prefix}_excludes_zero": d.excludes_zero if d else None}


def group_record(g: ResultGroup) -> dict[str, Any]:
    last, best = g.stat("last"), g.stat("best")
    gl, gb = g.gain("last"), g.gain("best")
    pl, pb = g.paired_gain("last"), g.paired_gain("best")
    sec = g.section
    has_paper = sec.has_paper
    return {
        "section": sec.key, "sweep": ((sec.sweep or {}).get("spec") or {}).get("name"), "dataset": g.dataset,
        "student": g.model, "label": g.label, "method": g.method, "n": len(g.finished), "runs": len(g.runs),
        "unfinished": len(g.by_status("unfinished")), "failed": len(g.by_status("failed")),
        "diverged": len(g.by_status("diverged")), "not_started": len(g.by_status("not started")),
        "last_mean": _r(last.mean), "last_std": _r(last.std), "last_min": _r(last.min), "last_max": _r(last.max),
        "best_mean": _r(best.mean), "best_std": _r(best.std), "best_min": _r(best.min), "best_max": _r(best.max),
        **_gain_fields("gain_last", gl), **_gain_fields("gain_best", gb),
        **_gain_fields("paired_last", pl), "paired_last_pairs": pl.pairs if pl else None,
        **_gain_fields("paired_best", pb), "paired_best_pairs": pb.pairs if pb else None,
        "pairing": g.pairing().line(BASELINE) if g.pairing() is not None else None,
        "paper_top1": g.paper["top1"], "paper_gain": g.paper_gain(),
        "paper_statistic": sec.paper.get("statistic") if has_paper else None,
        "paper_epoch": sec.paper.get("epoch") if has_paper else None,
        "ours_as_paper": g.ours_as_paper() if has_paper and g.paper["top1"] is not None else None,
        "flags": g.flags(), "run_names": [r.name for r in g.runs],
    }


def render_csv(sections: list[Section]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for sec in sections:
        for ds in sec.datasets():
            for m in sec.students(ds):
                for lab in sec.labels(ds):
                    g = sec.group(ds, m, lab)
                    if g is None:
                        continue
                    rec = group_record(g)
                    rec["flags"] = " | ".join(rec["flags"])
                    rec["run_names"] = " ".join(rec["run_names"])
                    w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in rec.items()})
    return buf.getvalue()


def report_json(root: str | Path, sections: list[Section], metric: str, scanned: str | Path | None = None) -> dict:
    """``root``: the folder as the report names it; ``scanned``: the folder scanned (paths are relative to it)."""
    out = {"root": str(root), "metric": metric, "sections": []}
    base = scanned if scanned is not None else root
    for sec in sections:
        groups = []
        for g in sec.groups:
            rec = group_record(g)
            m = g.metric
            rec["run_details"] = [{"name": r.name, "seed": r.seed, "status": r.status, f"last_{m}": r.value("last"),
                                   f"best_{m}": r.value("best"), "epochs_done": r.epochs_done, "error": r.error or None,
                                   "path": r.borrowed or _relative(r.path, base)} for r in g.runs]
            if m != "top1":
                rec["metric"] = m
            groups.append(rec)
        out["sections"].append({"key": sec.key, "path": _relative(sec.path, base), "protocol": protocol(sec),
                                "sweep": ((sec.sweep or {}).get("spec") or {}).get("name"),
                                "paper": {k: sec.paper.get(k) for k in ("source", "statistic", "epoch", "note")}
                                if sec.has_paper else None, "groups": groups,
                                **({"baselines_from": [shown for shown, _ in sec.borrowed]} if sec.borrowed else {})})
    return out


def _relative(path: Path, root: str | Path) -> str:
    """``path`` relative to the report's root (so a report does not depend on where the folder lies)."""
    try:
        return str(Path(path).relative_to(Path(root))) or "."
    except ValueError:
        return str(path)
