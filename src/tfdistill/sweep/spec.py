"""Sweep specs: a base recipe and a grid, validated and expanded into runs before anything trains.

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
    paper:                            # the paper's numbers, shown beside ours by `tfdistill report`
      source: Table 1
      statistic: best-of-3            # best-of-N | mean-of-N | median-of-N | single
      epoch: best                     # the paper's numbers are best-epoch (CRD's protocol) or last-epoch accuracies
      results:
        resnet20: {ce: 69.06, tfd: 70.56, tfd/bottom_up: {top1: 72.11, gain: 0.97, note: "..."}}

Each run's config = the recipe, with its ``method`` section adapted to the run's method (sub-sections of
components the method does not have are dropped, as are the recipe's scalar method fields when the method
differs: ``cifar100/paper`` sets ``method.tfd.*``, which a ``ce`` run must not carry, while ``tfd_ls`` and ``tfd+kd``
keep the recipe's TFD settings), then the spec's ``overrides``, the student's ``per_model`` overrides, the
variant's overrides, the teacher (``teacher.model``/``teacher.checkpoint``, for methods that use one), the
command line's overrides, and finally the run's identity (``model.name``, ``method.name``, ``seed``, ``name``,
``out_dir``), which no override may set. Every run's config is validated with :func:`build_config` up front.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import adapt_method_section, build_config, parse_overrides, read_yaml
from ..errors import ConfigError, TfdError
from ..rundir import RUN_IDENTITY_KEYS, flat_keys

# Keys a run's identity owns (tfdistill.rundir.RUN_IDENTITY_KEYS: the grid's model, method, seed, the sweep's name
# and out_dir, the teacher mapping), with where a spec sets each instead.
_IDENTITY_HINTS = {
    "name": "the sweep names every run",
    "out_dir": "use the spec's out_dir or --out-dir",
    "seed": "use the spec's seeds",
    "seeds": "the sweep trains one seed per run",
    "model.name": "use the grid's models",
    "method.name": "use the grid's methods",
    "teacher.model": "use per_model.<student>.teacher and teachers",
    "teacher.checkpoint": "use the spec's teachers mapping",
}
IDENTITY_KEYS = {k: _IDENTITY_HINTS.get(k, "the sweep sets it") for k in RUN_IDENTITY_KEYS}
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


class MissingPresetError(ConfigError):
    """The spec names methods that are not registered (yet); ``.missing`` lists them."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


# ------------------------------------------------------------------------------------------------ planned runs
@dataclass
class PlannedRun:
    index: int
    name: str
    label: str
    """The report's column: the method, or ``method/variant``."""
    model: str
    method: str
    variant: str
    seed: int
    teacher: str
    overrides: list[str]
    """The run's overrides on top of the (method-adapted) recipe, in the order they apply."""
    variant_overrides: list[str]
    cfg: Any
    sweep_dir: Path

    @property
    def group(self) -> str:
        """Runs differing only by seed share a group (the report aggregates over it; packing uses :func:`pack_key`)."""
        return self.name[: self.name.rfind("_s")]

    @property
    def run_dir(self) -> Path:
        return self.sweep_dir / self.name

    @property
    def config_path(self) -> Path:
        return self.sweep_dir / "configs" / f"{self.name}.yaml"

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "model": self.model, "method": self.method,
                "variant": self.variant, "seed": self.seed, "teacher": self.teacher, "overrides": list(self.overrides)}


@dataclass
class Plan:
    spec: Any
    """The validated spec (typed DictConfig of :class:`SweepSpec`)."""
    spec_path: Path | None
    recipe_path: Path
    cli_overrides: list[str]
    sweep_dir: Path
    runs: list[PlannedRun]

    def select(self, patterns: list[str] | None) -> list[PlannedRun]:
        """Runs whose name or label matches one of the glob ``patterns`` (all runs when none are given)."""
        if not patterns:
            return list(self.runs)
        chosen = [r for r in self.runs if any(fnmatch.fnmatchcase(r.name, p) or fnmatch.fnmatchcase(r.label, p)
                                              for p in patterns)]
        if not chosen:
            raise ConfigError(f"--only {' '.join(patterns)} matches none of the {len(self.runs)} runs "
                              f"(e.g. {self.runs[0].name})")
        return chosen

    def resolved(self) -> dict:
        """What ``sweep.yaml`` holds: the resolved spec, the command line's overrides and the expanded runs."""
        spec = OmegaConf.to_container(self.spec, resolve=True)
        spec["recipe"] = str(self.recipe_path)
        spec["out_dir"] = str(self.sweep_dir.parent)
        return {"spec": spec, "spec_path": str(self.spec_path) if self.spec_path else None,
                "cli_overrides": list(self.cli_overrides), "runs": [r.describe() for r in self.runs]}


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


# ------------------------------------------------------------------------------------------------ expansion
def _check_overrides(overrides: list[str], key: str, path: Path | None) -> DictConfig:
    try:
        patch = parse_overrides([str(o) for o in overrides])
    except ConfigError as exc:
        raise ConfigError(f"{_where(path)}: key {key!r}: {exc}") from None
    for k in flat_keys(OmegaConf.to_container(patch)):
        for ident, hint in IDENTITY_KEYS.items():
            if k == ident or k.startswith(ident + "."):
                raise ConfigError(f"{_where(path)}: key {key!r} overrides {k!r}, which the sweep sets ({hint})")
    return patch


def _resolve_recipe_path(recipe: str, spec_path: Path | None) -> Path:
    from ..recipes import resolve_recipe

    p = resolve_recipe(recipe)
    if not p.is_file() and spec_path is not None:
        for cand in (spec_path.parent / recipe, spec_path.parent / f"{recipe}.yaml"):
            if cand.is_file():
                return cand
    if not p.is_file():
        raise ConfigError(f"{_where(spec_path)}: key 'recipe': {recipe!r} is neither a file nor a recipe name "
                          f"(see `tfdistill recipes`)")
    return p


def missing_methods(spec: Any) -> list[str]:
    """The spec's methods that are not registered presets (nor compositions of them), in grid order."""
    from ..methods import resolve_preset

    missing: list[str] = []
    for b in spec.grid:
        for m in b.methods:
            try:
                resolve_preset(str(m))
            except TfdError:
                if m not in missing:
                    missing.append(str(m))
    return missing


def _check_models(names: list[str], key: str, path: Path | None) -> None:
    from ..models import TORCHVISION_PREFIX, list_models, list_torchvision_models

    zoo = set(list_models())
    tv = None
    for n in names:
        if n in zoo:
            continue
        if n.startswith(TORCHVISION_PREFIX):
            tv = tv if tv is not None else set(list_torchvision_models())
            if n[len(TORCHVISION_PREFIX):] in tv:
                continue
        raise ConfigError(f"{_where(path)}: key {key!r}: unknown model {n!r}; valid: {', '.join(sorted(zoo))} or "
                          f"{TORCHVISION_PREFIX}<name> (see `tfdistill models`)")


def _adapt_method(recipe: DictConfig, method: str) -> DictConfig:
    """The recipe with its method section made valid for ``method`` (see the module docs)."""
    raw = recipe.copy()
    raw.method = adapt_method_section(raw.get("method", None), method)
    return raw


def _teacher(spec: Any, student: str, method: str, where: str) -> tuple[str, list[str], Optional[DictConfig]]:
    """(teacher architecture, overrides for display, config patch) of a run; empty for teacher-free methods."""
    from ..methods import method_uses

    if not method_uses(method).teacher:
        return "", [], None
    extra = spec.per_model.get(student, None)
    teacher = str(extra.teacher) if extra is not None else ""
    if not teacher:
        raise ConfigError(f"{where}: key 'per_model.{student}.teacher' is missing: method {method!r} needs a "
                          f"teacher for student {student}")
    ckpt = spec.teachers.get(f"{teacher}@{method}", None) or spec.teachers.get(teacher, None)
    if not ckpt:
        raise ConfigError(f"{where}: key 'teachers.{teacher}' is missing: the checkpoint of teacher {teacher} "
                          f"(used by {student} with {method})")
    return (teacher, [f"teacher.model={teacher}", f"teacher.checkpoint={ckpt}"],
            OmegaConf.create({"teacher": {"model": teacher, "checkpoint": str(ckpt)}}))


def _run_name(model: str, method: str, variant: str, seed: int) -> str:
    parts = [model, method] + ([variant] if variant else []) + [f"s{seed}"]
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", "_".join(parts))


def expand(spec: Any, cli_overrides: list[str] | None = None, *, spec_path: str | Path | None = None,
           out_dir: str | Path | None = None) -> Plan:
    """Expand a validated spec into runs, each with a config validated by :func:`build_config`."""
    from ..data.base import check_augments

    path = Path(spec_path) if spec_path else None
    where = _where(path)
    cli_overrides = [str(o) for o in (cli_overrides or [])]
    for o in cli_overrides:
        if o.split("=", 1)[0].strip() == "out_dir":
            raise ConfigError("out_dir is the sweep's: use --out-dir DIR (or the spec's out_dir), not out_dir=...")
    missing = missing_methods(spec)
    if missing:
        from ..methods import list_methods

        raise MissingPresetError(
            f"{where}: key 'grid.methods': method(s) {', '.join(repr(m) for m in missing)} not registered "
            f"(yet?); registered: {', '.join(list_methods())}", missing)
    all_models = sorted({m for b in spec.grid for m in (b.models if b.models is not None else spec.models)})
    _check_models(all_models, "grid.models", path)
    for student, extra in spec.per_model.items():
        if student not in all_models:
            raise ConfigError(f"{where}: key 'per_model.{student}': {student!r} is not a model of the grid "
                              f"({', '.join(all_models)})")
        if extra.teacher:
            _check_models([extra.teacher], f"per_model.{student}.teacher", path)
    _check_models(sorted({str(k).split("@", 1)[0] for k in spec.teachers.keys()}), "teachers", path)

    recipe_path = _resolve_recipe_path(spec.recipe, path)
    recipe = read_yaml(recipe_path)
    base_patch = _check_overrides(list(spec.overrides), "overrides", path)
    cli_patch = _check_overrides(cli_overrides, "command-line overrides", path)
    model_patch = {m: _check_overrides(list(e.overrides), f"per_model.{m}.overrides", path)
                   for m, e in spec.per_model.items()}
    sweep_dir = Path(out_dir if out_dir is not None else spec.out_dir) / spec.name

    runs: list[PlannedRun] = []
    names: dict[str, str] = {}
    adapted: dict[str, DictConfig] = {}
    for i, block in enumerate(spec.grid):
        models = list(block.models if block.models is not None else spec.models)
        seeds = [int(s) for s in (block.seeds if block.seeds is not None else spec.seeds)]
        variants = {str(k): _check_overrides(list(v), f"grid[{i}].variants.{k}", path)
                    for k, v in block.variants.items()}
        variant_overrides = {str(k): [str(o) for o in v] for k, v in block.variants.items()}
        for model in models:
            extra = spec.per_model.get(model, None)
            for method in [str(m) for m in block.methods]:
                teacher, teacher_ov, teacher_patch = _teacher(spec, model, method, where)
                if method not in adapted:
                    adapted[method] = _adapt_method(recipe, method)
                for variant in (list(variants) or [""]):
                    for seed in seeds:
                        name = _run_name(model, method, variant, seed)
                        origin = f"grid[{i}]" + (f".variants.{variant}" if variant else "")
                        if name in names:
                            raise ConfigError(f"{where}: run {name} is produced twice ({names[name]} and {origin})")
                        names[name] = origin
                        ident = OmegaConf.create({"model": {"name": model}, "method": {"name": method}, "seed": seed,
                                                  "name": name, "out_dir": str(sweep_dir)})
                        patches = [base_patch, model_patch.get(model), variants.get(variant), teacher_patch,
                                   cli_patch, ident]
                        raw = adapted[method]
                        try:
                            raw = OmegaConf.merge(raw, *[p for p in patches if p is not None])
                        except OmegaConfBaseException as exc:
                            raise ConfigError(f"{where}: run {name} ({origin}): {str(exc).splitlines()[0]}") from None
                        try:
                            cfg = build_config(raw)
                            check_augments(list(cfg.data.augment))
                        except TfdError as exc:
                            raise ConfigError(f"{where}: run {name} ({origin}): {exc}") from None
                        overrides = (list(spec.overrides) + (list(extra.overrides) if extra is not None else [])
                                     + variant_overrides.get(variant, []) + teacher_ov + cli_overrides)
                        label = f"{method}/{variant}" if variant else method
                        runs.append(PlannedRun(len(runs), name, label, model, method, variant, seed, teacher,
                                               overrides, variant_overrides.get(variant, []), cfg, sweep_dir))
    _check_paper(spec, runs, path)
    return Plan(spec, path, recipe_path, cli_overrides, sweep_dir, runs)


def _check_paper(spec: Any, runs: list[PlannedRun], path: Path | None) -> None:
    labels: dict[str, set[str]] = {}
    for r in runs:
        labels.setdefault(r.model, set()).add(r.label)
    for student, entries in spec.paper.results.items():
        if student not in labels:
            raise ConfigError(f"{_where(path)}: key 'paper.results.{student}': {student!r} is not a model of the grid")
        for label in entries.keys():
            if label not in labels[student]:
                raise ConfigError(f"{_where(path)}: key 'paper.results.{student}.{label}': no run of the grid has "
                                  f"that label; labels: {', '.join(sorted(labels[student]))}")


def paper_entry(paper: dict, student: str, label: str) -> dict:
    """``{"top1": float|None, "gain": float|None, "note": str}`` for one cell of a spec's paper results."""
    value = ((paper or {}).get("results") or {}).get(student, {}).get(label)
    if value is None:
        return {"top1": None, "gain": None, "note": ""}
    if isinstance(value, dict):
        return {"top1": value.get("top1"), "gain": value.get("gain"), "note": value.get("note") or ""}
    return {"top1": float(value), "gain": None, "note": ""}
