"""The sweep spec's schema: its keys, their types and checks, read from YAML into a typed config.

A spec (YAML, schema :class:`SweepSpec`)::

    name: table1                      # the sweep folder: <out_dir>/<name>/
    recipe: cifar100/paper            # base recipe: a name under configs/ or a path (also relative to the spec)
    out_dir: runs/reproduce
    seeds: [0, 1, 2]                  # default seeds of every grid block
    models: [resnet20, resnet32]      # default students of every grid block (optional)
    overrides: [data.root=data]       # key=value overrides applied to every run
    grid:                             # one block, or a list of blocks (the union of their products)
      - methods: [ce, tfd, kd]        # models x methods x seeds x variants
      - methods: [tfd]
        variants:                     # named override sets (label "tfd/bottom_up", run "resnet20_tfd_bottom_up_s0")
          bottom_up: [method.tfd.direction=bottom_up]
    per_model:                        # per-student extras
      resnet20: {teacher: resnet110, overrides: []}
    teachers:                         # teacher architecture -> checkpoint, used by teacher-based methods only
      resnet110: runs/reproduce/teachers/resnet110_ce_s0/best.pt
      resnet110@eskd: runs/reproduce/teachers/resnet110_ce_s0/epoch_60.pt   # <arch>@<method>: that method's own
    launcher:                         # --executor slurm: job resources (the command line's options win)
      partition: gpu
      time: "4:00:00"                 # per job; at the limit the job is requeued and resumes from last.pt
      gpus_per_job: 1
      cpus_per_job: 8
      array_parallelism: 16           # at most this many jobs at once
    paper:                            # the paper's numbers, shown beside ours by `tfdistill report`
      source: Table 1
      statistic: best-of-3            # best-of-N | mean-of-N | median-of-N | single
      epoch: best                     # the paper's numbers are best-epoch (CRD's protocol) or last-epoch accuracies
      results:
        resnet20: {ce: 69.06, tfd: 70.56, tfd/bottom_up: {top1: 72.11, gain: 0.97, note: "..."}}

How a spec expands into runs: :mod:`.spec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import read_yaml
from ..errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
_STAT_RE = re.compile(r"^(single|(best|mean|median)-of-[1-9][0-9]*)$")
_PAPER_FIELDS = ("top1", "gain", "note")


# ------------------------------------------------------------------------------------------------ schema
@dataclass
class GridBlock:
    methods: list[str] = field(default_factory=list)
    """Method presets (``tfdistill methods``), e.g. [ce, tfd, tfd_ls, kd, tfd+kd]."""
    models: Optional[list[str]] = None
    """Students; default: the spec's ``models``."""
    seeds: Optional[list[int]] = None
    """Default: the spec's ``seeds``."""
    variants: dict[str, list[str]] = field(default_factory=dict)
    """Named override sets crossed with the block's methods ({} = the methods as they are)."""


@dataclass
class StudentExtra:
    teacher: str = ""
    """Teacher architecture for teacher-based methods (a key of ``teachers``)."""
    overrides: list[str] = field(default_factory=list)


@dataclass
class PaperSpec:
    source: str = ""
    statistic: str = ""
    """How the paper aggregated seeds: best-of-N | mean-of-N | median-of-N | single."""
    epoch: str = "best"
    """best: the paper's numbers are best-epoch accuracies (CRD's protocol); last: final-epoch accuracies."""
    note: str = ""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """student -> label (method or method/variant) -> top-1 (%) or {top1, gain, note}."""
    columns: dict[str, str] = field(default_factory=dict)
    """Optional: label -> the paper's column name, in the paper's column order. ``tfdistill report`` then adds a
    table in the paper's layout (students x these columns, each cell "ours / paper")."""


@dataclass
class LauncherOptions:
    """The ``launcher:`` section (``--executor slurm``); the command line's ``--partition`` ... options win."""

    partition: str = ""
    """Slurm partition (default: the cluster's)."""
    time: str = "4:00:00"
    """Time limit per job, minutes or H:MM:SS; a job that reaches it is requeued and resumes from last.pt."""
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: float = 0
    """0: the partition's default."""
    array_parallelism: int = 0
    """At most this many jobs of the sweep run at once (0: no limit)."""
    additional: dict[str, Any] = field(default_factory=dict)
    """Further sbatch options, e.g. {account: myproject, qos: high}."""


@dataclass
class SweepSpec:
    name: str = ""
    recipe: str = ""
    description: str = ""
    out_dir: str = "runs"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    models: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    grid: list[GridBlock] = field(default_factory=list)
    per_model: dict[str, StudentExtra] = field(default_factory=dict)
    teachers: dict[str, str] = field(default_factory=dict)
    """teacher architecture -> checkpoint; a key ``<architecture>@<method>`` gives that method its own checkpoint
    of the architecture (ESKD's early-stopped teacher beside KD's fully trained one)."""
    paper: PaperSpec = field(default_factory=PaperSpec)
    launcher: LauncherOptions = field(default_factory=LauncherOptions)


class MissingPresetError(ConfigError):
    """The spec names methods that are not registered (yet); ``.missing`` lists them."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


# ------------------------------------------------------------------------------------------------ loading
def _where(path: Path | None) -> str:
    return f"sweep spec {path}" if path else "sweep spec"


def _spec_error(exc: Exception, prefix: str, path: Path | None) -> ConfigError:
    key = getattr(exc, "full_key", "") or ""
    key = f"{prefix}{key}" if prefix and key else (prefix.rstrip(".") or key)
    msg = str(exc).splitlines()[0]
    if "not in" in msg and "Key" in msg:
        return ConfigError(f"{_where(path)}: unknown key {key!r}{_did_you_mean(msg)}")
    if "is not a ListConfig" in msg:
        return ConfigError(f"{_where(path)}: key {key!r} must be a list")
    if "is not a DictConfig" in msg or "is not a subclass of" in msg:
        return ConfigError(f"{_where(path)}: key {key!r} must be a mapping")
    return ConfigError(f"{_where(path)}: bad value for key {key!r}: {msg}")


def _did_you_mean(msg: str) -> str:
    m = re.search(r"Did you mean[^']*('[^.]*)", msg)
    return f" (did you mean {m.group(1).rstrip('?')}?)" if m else ""  # OmegaConf's own '?' is part of the match


def load_spec(path: str | Path) -> Any:
    """Read and validate a spec file (a path, or a name such as ``reproduce/table1``); returns a typed DictConfig."""
    from ..recipes import resolve_recipe

    p = resolve_recipe(str(path))
    raw = read_yaml(p)
    return spec_from_raw(raw, p)


def spec_from_raw(raw: DictConfig | dict, path: Path | None = None) -> Any:
    raw = OmegaConf.create(raw) if not isinstance(raw, DictConfig) else raw.copy()
    grid = raw.get("grid", None)
    if grid is None:
        raise ConfigError(f"{_where(path)}: missing key 'grid' (e.g. grid: {{models: [resnet20], methods: [ce, tfd]}})")
    if isinstance(grid, DictConfig):
        grid = [grid]
    if not isinstance(grid, (list, ListConfig)):
        raise ConfigError(f"{_where(path)}: key 'grid' must be a mapping or a list of mappings")
    blocks = []
    for i, b in enumerate(grid):
        if not isinstance(b, DictConfig):
            raise ConfigError(f"{_where(path)}: key 'grid[{i}]' must be a mapping with methods "
                              f"(and models, seeds, variants)")
        try:
            blocks.append(OmegaConf.merge(OmegaConf.structured(GridBlock), b))
        except OmegaConfBaseException as exc:
            raise _spec_error(exc, f"grid[{i}].", path) from None
    body = OmegaConf.masked_copy(raw, [k for k in raw.keys() if k != "grid"])
    try:
        spec = OmegaConf.merge(OmegaConf.structured(SweepSpec), body)
        spec.grid = blocks
    except OmegaConfBaseException as exc:
        raise _spec_error(exc, "", path) from None
    _check_spec(spec, path)
    return spec


def _check_spec(spec: Any, path: Path | None) -> None:
    def fail(key: str, what: str) -> ConfigError:
        return ConfigError(f"{_where(path)}: key {key!r} {what}")

    if not spec.name:
        raise fail("name", "is missing: it names the sweep folder <out_dir>/<name>")
    if not _NAME_RE.match(spec.name):
        raise fail("name", f"{spec.name!r} must be letters, digits and _ . = + - (no spaces or slashes)")
    if not spec.recipe:
        raise fail("recipe", "is missing: the base recipe every run starts from (e.g. cifar100/paper)")
    if not spec.grid:
        raise fail("grid", "is empty: give at least one block with methods")
    _check_list(spec.seeds, "seeds", fail, allow_empty=False)
    _check_list(spec.models, "models", fail, allow_empty=True)
    for i, b in enumerate(spec.grid):
        k = f"grid[{i}]"
        _check_list(b.methods, f"{k}.methods", fail, allow_empty=False)
        models = b.models if b.models is not None else spec.models
        if not models:
            raise fail(f"{k}.models", "is empty: set it, or the spec's top-level models")
        _check_list(models, f"{k}.models", fail, allow_empty=False)
        _check_list(b.seeds if b.seeds is not None else spec.seeds, f"{k}.seeds", fail, allow_empty=False)
        for v in b.variants:
            if not _NAME_RE.match(str(v)):
                raise fail(f"{k}.variants.{v}", "is not a valid name (letters, digits and _ . = + -)")
    if spec.paper.statistic and not _STAT_RE.match(spec.paper.statistic):
        raise fail("paper.statistic", f"{spec.paper.statistic!r} must be single, best-of-N, mean-of-N or median-of-N")
    if spec.paper.epoch not in ("best", "last"):
        raise fail("paper.epoch", f"{spec.paper.epoch!r} must be best or last")
    for student, entries in spec.paper.results.items():
        if not isinstance(entries, DictConfig):
            raise fail(f"paper.results.{student}", "must map labels to numbers")
        for label, value in entries.items():
            key = f"paper.results.{student}.{label}"
            if isinstance(value, DictConfig):
                bad = set(value.keys()) - set(_PAPER_FIELDS)
                if bad:
                    raise fail(f"{key}.{sorted(bad)[0]}", f"is unknown; an entry has {', '.join(_PAPER_FIELDS)}")
                nums = [value.get(f) for f in ("top1", "gain") if value.get(f) is not None]
            else:
                nums = [value]
            for x in nums:
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise fail(key, f"must be a number or {{top1, gain, note}}, got {x!r}")


def _check_list(values: Any, key: str, fail, allow_empty: bool) -> None:
    values = list(values or [])
    if not values and not allow_empty:
        raise fail(key, "is empty")
    seen = set()
    for v in values:
        if v in seen:
            raise fail(key, f"lists {v!r} twice")
        seen.add(v)
