"""Reports from run directories: tables of mean ± std over seeds, gains over CE, the paper's numbers, plots.

    report = make_report("runs/reproduce/table1")     # writes runs/reproduce/table1/report/report.{md,csv,json} + PNGs
    print(report.markdown)

Reads run directories (and a sweep folder's ``sweep.yaml``) only; it never trains or evaluates anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .collect import BASELINE, ResultGroup, RunRecord, Section, scan
from .stats import Diff, Stat, describe, difference

__all__ = ["make_report", "Report", "scan", "Section", "ResultGroup", "RunRecord", "Stat", "Diff", "describe",
           "difference"]


@dataclass
class Report:
    markdown: str
    sections: list[Section]
    out_dir: Path
    files: list[Path] = field(default_factory=list)


def _slug(*parts: str) -> str:
    """A file-name prefix from the non-empty parts ('' when all are empty)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", "_".join(p for p in parts if p)).strip("-_")


def make_report(runs_dir: str | Path, out_dir: str | Path | None = None, metric: str = "last",
                plots: bool = True, shown_as: str | None = None, settled: bool = False,
                baselines: Sequence[tuple[Path, str]] = ()) -> Report:
    """Scan ``runs_dir``, write ``report.md``, ``report.csv``, ``report.json`` (and PNG plots) into ``out_dir``
    (default ``<runs_dir>/report``). ``shown_as``: how the tables name ``runs_dir`` (default: as given);
    ``settled``: runs still training count as not started; ``baselines``: finished runs of another folder (path,
    how it is shown) that join as if trained here (:func:`scan`)."""
    from ..errors import ConfigError
    from .render import render_csv, render_markdown, report_json

    if metric not in ("last", "best"):
        raise ConfigError(f"--metric must be last or best, not {metric!r}")
    root = Path(runs_dir)
    sections = scan(root, settled=settled, baselines=baselines)
    if not sections:
        from ..errors import RunDirError

        raise RunDirError(f"no run directories (folders with config.yaml) under {root}")
    out = Path(out_dir) if out_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    shown = shown_as if shown_as is not None else root
    md = render_markdown(shown, sections, metric)
    files = [out / "report.md", out / "report.csv", out / "report.json"]
    files[0].write_text(md)
    files[1].write_text(render_csv(sections))
    files[2].write_text(json.dumps(report_json(shown, sections, metric, root), indent=1) + "\n")
    if plots:
        files += _plots(sections, out, metric)
    return Report(md, sections, out, files)


def _plots(sections: list[Section], out: Path, metric: str) -> list[Path]:
    """Per section and dataset: test-accuracy curves per student (mean ± std band per label) and a gain bar chart.
    File names carry the section and dataset only when the report has several of them."""
    from .plots import plot_curves, plot_gains
    from .render import metric_name, section_metric

    files = []
    for sec in sections:
        datasets = sec.datasets()
        for ds in datasets:
            prefix = _slug(sec.key if len(sections) > 1 else "", ds if len(datasets) > 1 else "")
            prefix = f"{prefix}_" if prefix else ""
            gains = []
            for student in sec.students(ds):
                curves, metric_key = {}, "top1"
                for label in sec.labels(ds):
                    g = sec.group(ds, student, label)
                    if g is None:
                        continue
                    if g.finished:
                        curves[label] = [r.metrics() for r in g.finished]
                        metric_key = g.metric
                    d = g.gain(metric)
                    if label != BASELINE and (d is not None or g.paper_gain() is not None):
                        gains.append({"label": label, "student": student, "gain": d.value if d else None,
                                      "se": d.se if d else None, "paper": g.paper_gain()})
                if curves:
                    files.append(plot_curves(curves, out / f"{prefix}curves_{_slug(student)}.png",
                                             title=f"{sec.key} · {ds} · {student}: mean ± std over seeds",
                                             metric=metric_key))
            if gains:
                files.append(plot_gains(gains, out / f"{prefix}gains.png",
                                        title=f"{sec.key} · {ds}: gain over CE (± combined s.e.)",
                                        ylabel=f"gain over CE, {metric}-epoch {metric_name(section_metric(sec, ds))}"))
    return files
