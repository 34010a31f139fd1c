"""Reading run directories into groups: one group = the runs of one config that differ only by seed.

A run directory is a folder holding ``config.yaml`` (or a sweep's ``FAILED`` marker). Its status:

* ``finished`` -- ``summary.json`` with finite accuracies;
* ``diverged`` -- ``summary.json`` with non-finite numbers, or a FAILED marker naming NaN/inf;
* ``failed`` -- a FAILED marker (written by ``tfdistill sweep``: the last error line);
* ``unfinished`` -- neither: running, or interrupted (``tfdistill sweep`` / ``train --resume`` continues it);
* ``not started`` -- listed in a sweep folder's ``sweep.yaml`` but without a run directory.

Only finished runs enter the statistics; the others are counted and flagged. Runs are grouped per *section* (the
folder holding them: a sweep folder, or any folder of loose runs), dataset and student, by their config minus
the keys that do not change the computation (seed, name, paths, logging). A group's label is the sweep's label
(``tfd/bottom_up``) or the method name, extended by the config keys that tell same-named groups apart.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf

from ..rundir import (AUTO_KEYS, CONFIG_FILE, FAILED_MARKER, METRICS_FILE, NON_EXPERIMENT_KEYS, PRIMARY_METRIC,
                      SUMMARY_FILE, RunDir,
                      flat_keys)
from ..errors import RunDirError
from ..runs import schema_defaults
from ..sweep.folder import SPEC_FILE
from ..sweep.spec import paper_entry
from .pairing import Pairing, pair_runs
from .stats import Diff, Stat, aggregate, describe, difference

IGNORED_KEYS = NON_EXPERIMENT_KEYS
"""Config keys that do not define an experiment (see :data:`tfdistill.rundir.NON_EXPERIMENT_KEYS`)."""
BASELINE = "ce"
"""The column every gain is measured against: the plain cross-entropy runs of the same student and folder."""
_STUDENT_KEYS = ("model.name", "teacher.")
MIN_SEEDS = 3
"""A group with fewer finished seeds is flagged: a mean ± std of one or two values is not a result."""


# ----------------------------------------------------------------------------------------------- runs
@dataclass
class RunRecord:
    path: Path
    name: str
    status: str
    config: dict = field(default_factory=dict)
    summary: Optional[dict] = None
    error: str = ""
    epochs_done: int = 0
    section: Optional["Section"] = None
    label: str = ""
    """The sweep's label for this run, or the method name."""
    partial: bool = False
    """The config is unknown (only model, method and seed, from sweep.yaml)."""
    torn: str = ""
    """Where ``metrics.jsonl`` stops being JSON (a write cut off by a kill): its curve ends there."""
    borrowed: str = ""
    """Set for a finished run of another folder that joined this section as a baseline: how it is shown."""

    @property
    def flat(self) -> dict[str, Any]:
        return flat_keys(self.config)

    def get(self, key: str, default: Any = None) -> Any:
        return self.flat.get(key, default)

    @property
    def model(self) -> str:
        return str(self.get("model.name") or (self.summary or {}).get("model") or "?")

    @property
    def method(self) -> str:
        return str(self.get("method.name") or (self.summary or {}).get("method") or "?")

    @property
    def seed(self) -> Any:
        return self.get("seed", (self.summary or {}).get("seed"))

    @property
    def epochs(self) -> Any:
        return self.get("epochs", (self.summary or {}).get("epochs"))

    @property
    def dataset(self) -> str:
        name = str(self.get("data.name") or (self.summary or {}).get("dataset") or "?")
        root = self.get("data.root")
        return f"{name} ({Path(str(root)).name})" if name == "imagefolder" and root else name

    @property
    def primary_metric(self) -> str:
        """The run's headline metric: summary.json's ``primary_metric`` (absent: ``top1``; see :mod:`tfdistill.rundir`)."""
        m = (self.summary or {}).get("primary_metric")
        return str(m) if m else PRIMARY_METRIC

    def value(self, which: str) -> Optional[float]:
        """summary.json's ``<which>_<primary metric>`` (``which``: last | best), when finite."""
        v = (self.summary or {}).get(f"{which}_{self.primary_metric}")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    top1 = value  # the name from before summaries named their metric

    def metrics(self) -> list[dict]:
        return RunDir(self.path).read_metrics()

    def describe_problem(self) -> str:
        if self.status == "unfinished":
            return f"{self.name} (epoch {self.epochs_done}/{self.epochs})"
        if self.status in ("failed", "diverged") and self.error:
            return f"{self.name}: {self.error}"
        return self.name


def _load_yaml(path: Path) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        return data if isinstance(data, dict) else {}
    except Exception:  # a torn or foreign file: the run is still listed, without a config
        return {}


def _torn_metrics(path: Path) -> str:
    """``""`` if every line of ``metrics.jsonl`` is JSON, else the first line that is not (``RunDir.read_metrics``
    stops there) and how many lines follow it."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for i, line in enumerate(lines, 1):
        try:
            if line.strip():
                json.loads(line)
        except ValueError:
            rest = sum(1 for ln in lines[i:] if ln.strip())
            return f"{path.name} line {i} is torn" + (f" ({rest} more line{'s' if rest > 1 else ''} unread)"
                                                       if rest else "")
    return ""


def read_run(path: Path, fallback_config: Optional[Path] = None) -> RunRecord:
    """One run directory -> :class:`RunRecord` (status, config, summary)."""
    cfg_file = path / CONFIG_FILE
    config = _load_yaml(cfg_file) if cfg_file.is_file() else (
        _load_yaml(fallback_config) if fallback_config and fallback_config.is_file() else {})
    rec = RunRecord(path, path.name, "unfinished", config, epochs_done=RunDir(path).epochs_done(),
                    torn=_torn_metrics(path / METRICS_FILE))
    summary_file, failed = path / SUMMARY_FILE, path / FAILED_MARKER
    if summary_file.is_file():
        try:
            rec.summary = json.loads(summary_file.read_text())
        except (OSError, ValueError):
            rec.summary = None
        ok = (rec.summary is not None and rec.summary.get("status", "finished") == "finished"
              and rec.value("last") is not None and rec.value("best") is not None)
        rec.status = "finished" if ok else "diverged"
        if not ok:
            rec.error = "summary.json holds non-finite or missing accuracies"
    elif failed.is_file():
        lines = [ln for ln in failed.read_text(errors="replace").splitlines() if ln.strip()]
        rec.error = lines[0].strip() if lines else "failed"
        rec.status = "diverged" if ("NaN" in rec.error or "DivergenceError" in rec.error) else "failed"
    return rec


# ----------------------------------------------------------------------------------------------- sections
@dataclass
class Section:
    """The runs of one folder: a sweep folder (with sweep.yaml) or a folder of loose runs."""

    path: Path
    key: str
    sweep: Optional[dict] = None
    runs: list[RunRecord] = field(default_factory=list)
    groups: list["ResultGroup"] = field(default_factory=list)
    borrowed: list[tuple[str, str]] = field(default_factory=list)
    """Finished runs of another folder that joined this one as baselines: (how they are shown, their label)."""

    @property
    def title(self) -> str:
        if self.sweep:
            return f"sweep `{self.sweep.get('spec', {}).get('name', self.path.name)}` ({self.key})"
        return f"runs in `{self.key}`"

    @property
    def paper(self) -> dict:
        return (self.sweep or {}).get("spec", {}).get("paper") or {}

    @property
    def has_paper(self) -> bool:
        return bool(self.paper.get("results"))

    def planned(self) -> list[dict]:
        return list((self.sweep or {}).get("runs") or [])

    def datasets(self) -> list[str]:
        return _unique(g.dataset for g in self.groups)

    def students(self, dataset: str) -> list[str]:
        order = _unique(str(r.get("model")) for r in self.planned())
        have = _unique(g.model for g in self.groups if g.dataset == dataset)
        return [m for m in order if m in have] + sorted(m for m in have if m not in order)

    def labels(self, dataset: str) -> list[str]:
        """Column order: ce first, then the sweep's order, then alphabetical."""
        order = {lab: i for i, lab in enumerate(_unique(str(r.get("label")) for r in self.planned()))}
        have = {g.label: g.base_label for g in self.groups if g.dataset == dataset}
        return sorted(have, key=lambda lab: (lab != BASELINE, order.get(have[lab], len(order)), lab))

    def group(self, dataset: str, model: str, label: str) -> Optional["ResultGroup"]:
        for g in self.groups:
            if g.dataset == dataset and g.model == model and g.label == label:
                return g
        return None


def _unique(items) -> list:
    out: list = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


# ----------------------------------------------------------------------------------------------- groups
@dataclass
class ResultGroup:
    """The runs of one label for one dataset and student in a report section (what one table entry summarises)
    and its CE baseline. Not the engine's packed training ``Group``."""

    section: Section
    dataset: str
    model: str
    label: str
    base_label: str
    method: str
    key: tuple
    runs: list[RunRecord] = field(default_factory=list)
    baseline: Optional["ResultGroup"] = None
    _pairing: Optional[Pairing] = field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "finished"]

    def stat(self, which: str) -> Stat:
        """``which``: last | best (epoch)."""
        return describe(v for v in (r.value(which) for r in self.finished) if v is not None)

    def gain(self, which: str) -> Optional[Diff]:
        if self.baseline is None or self.baseline is self:
            return None
        return difference(self.stat(which), self.baseline.stat(which))

    def pairing(self) -> Optional[Pairing]:
        """This group's runs paired with its baseline's (:mod:`.pairing`); None without a baseline."""
        if self.baseline is None or self.baseline is self:
            return None
        if self._pairing is None:
            self._pairing = pair_runs(self.finished, self.baseline.finished)
        return self._pairing

    def paired_gain(self, which: str) -> Optional[Diff]:
        """The mean paired difference from the baseline with its t-interval, or None when the runs are not paired."""
        p = self.pairing()
        return p.difference(which) if p is not None else None

    @property
    def metric(self) -> str:
        """The primary metric of the group's runs (``top1`` unless their summaries name another)."""
        return next((r.primary_metric for r in self.runs if r.summary), PRIMARY_METRIC)

    @property
    def paper(self) -> dict:
        return paper_entry(self.section.paper, self.model, self.base_label)

    def paper_gain(self) -> Optional[float]:
        p = self.paper
        if p["gain"] is not None:
            return float(p["gain"])
        base = paper_entry(self.section.paper, self.model, BASELINE)
        if p["top1"] is not None and base["top1"] is not None and self.base_label != BASELINE:
            return float(p["top1"]) - float(base["top1"])
        return None

    def ours_as_paper(self) -> Optional[float]:
        """Our number under the paper's seed statistic and epoch choice (e.g. the max over seeds of best-epoch)."""
        paper = self.section.paper
        return aggregate(self.stat(paper.get("epoch") or "best"), str(paper.get("statistic") or "mean-of-3"))

    def by_status(self, status: str) -> list[RunRecord]:
        return [r for r in self.runs if r.status == status]

    def flags(self) -> list[str]:
        out = []
        for status, what in (("unfinished", "unfinished (running or interrupted)"), ("failed", "failed"),
                             ("diverged", "diverged"), ("not started", "not started")):
            bad = self.by_status(status)
            if bad:
                out.append(f"{len(bad)} {what} run{'s' if len(bad) > 1 else ''} excluded: "
                           + "; ".join(r.describe_problem() for r in bad))
        torn = [r for r in self.runs if r.torn]
        if torn:
            out.append(f"{len(torn)} run{'s' if len(torn) > 1 else ''} with a torn metrics file, curves end at the "
                       "tear: " + "; ".join(f"{r.name}: {r.torn}" for r in torn))
        n = len(self.finished)
        if n == 1:
            out.append("n=1: a single finished run, no standard deviation")
        elif 1 < n < MIN_SEEDS:
            out.append(f"n={n}: fewer than {MIN_SEEDS} finished seeds, a mean ± std to read with care")
        elif n == 0:
            out.append("no finished run")
        seeds = [r.seed for r in self.finished]
        if len(set(map(str, seeds))) != len(seeds):
            out.append(f"repeated seeds {seeds}: the same run counted twice?")
        if self.section.sweep and self.label != self.base_label:
            out.append(f"runs of label {self.base_label!r} differ in config ({self.label}): split into groups")
        differ = self.baseline_differences()
        if differ:
            out.append(f"its {BASELINE} baseline was trained with another config ({'; '.join(differ)}): the gain "
                       "compares different setups")
        return out

    def baseline_differences(self) -> list[str]:
        """The config keys, other than the method's own (``method.*``), in which this group differs from its CE
        baseline, as ``key: <baseline value> in ce, <value> here``."""
        if self.baseline is None or self.baseline is self or not self.key or not self.baseline.key:
            return []
        return _key_differences(dict(self.baseline.key), dict(self.key), BASELINE, "here")


def _key_differences(a: dict, b: dict, name_a: str, name_b: str) -> list[str]:
    """``a`` and ``b``: flat fingerprints (key -> JSON text); the keys outside ``method.*`` that differ."""
    keys = sorted(k for k in set(a) | set(b) if not k.startswith("method.") and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k, '–')} in {name_a}, {b.get(k, '–')} {name_b}" for k in keys]


def no_baseline_reason(section: "Section", dataset: str) -> str:
    """Why no group of ``dataset`` in ``section`` has a CE baseline: one sentence for the report."""
    ce = [g for g in section.groups if g.dataset == dataset and g.base_label == BASELINE]
    if not ce:
        return f"No CE baseline (no run of method {BASELINE} in this folder): gains are not computed."
    split = [g for g in ce if g.label != BASELINE]
    if split:
        keys = _varying(ce, exclude_student=True) or _varying(ce, exclude_student=False)
        labels = ", ".join(f"`{g.label}` ({g.model})" for g in split)
        return (f"No CE baseline: the {BASELINE} runs here differ from each other in {', '.join(keys) or 'config'} "
                f"and are reported apart ({labels}), so none is *the* baseline; gains need one {BASELINE} config "
                "per student (keep other configs' runs in another folder).")
    others = sorted({g.model for g in ce})
    return (f"No CE baseline for these students: {BASELINE} runs exist only for {', '.join(others)}: gains are "
            "not computed.")


def _fingerprint(rec: RunRecord) -> tuple:
    """The experiment a run belongs to: its config without the keys that do not define one. A key the run's config
    lacks because the run was made before the key existed counts as its default (what reproduces the older
    behaviour: tests/test_golden_classification.py holds classification to that), so such a run still groups with
    the seeds made after it."""
    defaults = {k: v for k, v in schema_defaults().items() if not k.startswith("method.")} if rec.config else {}
    flat = {**defaults, **rec.flat}
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in flat.items()
                        if k not in IGNORED_KEYS))


def _has_auto(rec: RunRecord) -> bool:
    """A planned config (never started): the engine writes engine.* = auto resolved into a run's config.yaml."""
    return any(rec.flat.get(k) == "auto" for k in AUTO_KEYS)


def _without_auto(fingerprint: tuple) -> tuple:
    return tuple(kv for kv in fingerprint if kv[0] not in AUTO_KEYS)


def _varying(groups: list[ResultGroup], exclude_student: bool) -> list[str]:
    keys: set[str] = set()
    flats = [dict(g.key) for g in groups]
    for k in set().union(*flats) if flats else set():
        if exclude_student and k.startswith(_STUDENT_KEYS):
            continue
        if len({f.get(k) for f in flats}) > 1:
            keys.add(k)
    return sorted(keys)


def _suffix(g: ResultGroup, keys: list[str]) -> str:
    flat = dict(g.key)
    parts = [f"{k.removeprefix('method.')}={json.loads(flat[k]) if k in flat else '–'}" for k in keys]
    return f"{g.base_label} [{', '.join(parts)}]" if parts else g.base_label


def build_groups(section: Section) -> None:
    groups: dict[tuple, ResultGroup] = {}
    planned: list[RunRecord] = []
    for rec in section.runs:
        if rec.config and not rec.partial and _has_auto(rec):
            planned.append(rec)
            continue
        gk = (rec.dataset, rec.model, rec.label, None if rec.partial or not rec.config else _fingerprint(rec))
        if gk not in groups:
            groups[gk] = ResultGroup(section, rec.dataset, rec.model, rec.label, rec.label, rec.method, gk[3] or ())
        groups[gk].runs.append(rec)
    # A planned config with engine.* = auto joins the one group of its label whose runs resolved those values
    # and agree on every other key; without exactly one such group it forms its own.
    for rec in planned:
        fp = _fingerprint(rec)
        peers = [g for k, g in groups.items() if k[:3] == (rec.dataset, rec.model, rec.label) and k[3] is not None
                 and _without_auto(k[3]) == _without_auto(fp)]
        if len(peers) == 1:
            peers[0].runs.append(rec)
            continue
        gk = (rec.dataset, rec.model, rec.label, fp)
        if gk not in groups:
            groups[gk] = ResultGroup(section, rec.dataset, rec.model, rec.label, rec.label, rec.method, fp)
        groups[gk].runs.append(rec)
    # Runs whose config is unknown (planned in sweep.yaml, never started) join their label's only group.
    for gk in [k for k in groups if k[3] is None]:
        peers = [g for k, g in groups.items() if k[1:3] == gk[1:3] and k[3] is not None]
        if len(peers) == 1:
            peers[0].runs.extend(groups.pop(gk).runs)
    out = list(groups.values())
    # Labels: same-named groups are told apart by the keys that vary among them (student-independent keys first,
    # so that columns line up across students), then by any varying key.
    by_base: dict[tuple, list[ResultGroup]] = {}
    for g in out:
        by_base.setdefault((g.dataset, g.base_label), []).append(g)
    for members in by_base.values():
        if len(members) > 1:
            keys = _varying(members, exclude_student=True)
            for g in members:
                g.label = _suffix(g, keys)
    by_label: dict[tuple, list[ResultGroup]] = {}
    for g in out:
        by_label.setdefault((g.dataset, g.model, g.label), []).append(g)
    for members in by_label.values():
        if len(members) > 1:
            keys = _varying(members, exclude_student=False)
            for g in members:
                g.label = _suffix(g, keys) if keys else g.label
    # The CE baseline of each student: the group labelled exactly "ce".
    for g in out:
        g.baseline = next((b for b in out if b.dataset == g.dataset and b.model == g.model and b.label == BASELINE), None)
    section.groups = out


# ----------------------------------------------------------------------------------------------- scanning
def scan(root: str | Path, settled: bool = False,
         baselines: Sequence[tuple[Path, str]] = ()) -> list[Section]:
    """Every run directory under ``root`` (recursively), in sections; planned-but-absent sweep runs included.

    ``settled``: read only runs that have ended (``summary.json`` or a FAILED marker); a run still training, or
    interrupted, counts as a sweep's not-started run -- what a checkout holding only the ended runs' files shows
    (``tfdistill results`` reports committed evidence while a sweep is still adding to it).

    ``baselines``: finished run directories of another folder, each with how it is shown, that join ``root``'s one
    section as if trained there (a result compared with committed CE runs instead of training them again: the
    report's gains, intervals and pairing treat them as any other run; the section lists where they came from)."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a folder of run directories")
    borrowed: list[RunRecord] = []
    for path, shown in baselines:
        rec = read_run(Path(path))
        if rec.status != "finished":
            raise RunDirError(f"baseline run {shown} is {rec.status}: only finished runs can join another folder")
        borrowed.append(rec)
    sections: dict[Path, Section] = {}

    def section_of(folder: Path) -> Section:
        if folder not in sections:
            try:
                key = str(folder.relative_to(root)) if folder != root else (root.name or str(root))
            except ValueError:  # root is itself a run directory: its section is the folder above
                key = folder.name or str(folder)
            sweep = _load_yaml(folder / SPEC_FILE) if (folder / SPEC_FILE).is_file() else None
            sections[folder] = Section(folder, key, sweep)
        return sections[folder]

    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        if CONFIG_FILE in filenames or FAILED_MARKER in filenames:
            dirnames[:] = []  # nothing to find inside a run directory
            if settled and SUMMARY_FILE not in filenames and FAILED_MARKER not in filenames:
                section_of(d.parent)
                continue
            sec = section_of(d.parent)
            rec = read_run(d, d.parent / "configs" / f"{d.name}.yaml")
            rec.section = sec
            sec.runs.append(rec)
        elif SPEC_FILE in filenames:
            section_of(d)
    if borrowed:
        if len(sections) != 1:
            raise RunDirError(f"baseline runs join a folder with one section; {root} has {len(sections)}")
        sec = next(iter(sections.values()))
        for rec, (_, shown) in zip(borrowed, baselines):
            rec.section, rec.borrowed = sec, shown
            sec.runs.append(rec)
            sec.borrowed.append((shown, rec.method))
    for sec in sections.values():
        planned = {str(r.get("name")): r for r in sec.planned()}
        have = {r.name for r in sec.runs}
        for name, info in planned.items():
            if name not in have:
                rec = RunRecord(sec.path / name, name, "not started",
                                _load_yaml(sec.path / "configs" / f"{name}.yaml"), section=sec)
                sec.runs.append(rec)
        for rec in sec.runs:
            info = planned.get(rec.name)
            if info and not rec.config:  # what sweep.yaml knows of a run whose config is nowhere
                rec.config = {"model": {"name": info.get("model")}, "method": {"name": info.get("method")},
                              "seed": info.get("seed")}
                rec.partial = True
            rec.label = str(info.get("label")) if info and info.get("label") else rec.method
        order = {n: i for i, n in enumerate(planned)}
        sec.runs.sort(key=lambda r: (order.get(r.name, len(order)), r.name))
        build_groups(sec)
    return [s for _, s in sorted(sections.items(), key=lambda kv: str(kv[0])) if s.runs]
