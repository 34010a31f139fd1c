"""Sweep specs expanded into runs: each run's name, label and validated config, before anything trains.

The spec's keys are in :mod:`.schema`. Each run's config = the recipe, with its ``method`` section adapted to the run's method (sub-sections of
components the method does not have are dropped, as are the recipe's scalar method fields when the method
differs: ``cifar100/paper`` sets ``method.tfd.*``, which a ``ce`` run must not carry, while ``tfd_ls`` and ``tfd+kd``
keep the recipe's TFD settings), then the spec's ``overrides``, the student's ``per_model`` overrides, the
variant's overrides, the teacher (``teacher.model``/``teacher.checkpoint``, for methods that use one), the
command line's overrides, and finally the run's identity (``model.name``, ``method.name``, ``seed``, ``name``,
``out_dir``), which no override may set. Every run's config is validated with :func:`build_config` up front.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import adapt_method_section, build_config, parse_overrides, read_yaml
from ..errors import ConfigError, TfdError
from ..rundir import RUN_IDENTITY_KEYS, flat_keys
from ..runs import grid_run_name
from .schema import (GridBlock, LauncherOptions, MissingPresetError, PaperSpec, StudentExtra, SweepSpec, _where,
                     load_spec, spec_from_raw)

__all__ = ["GridBlock", "LauncherOptions", "MissingPresetError", "PaperSpec", "StudentExtra", "SweepSpec", "load_spec",
           "spec_from_raw", "PlannedRun", "Plan", "expand", "missing_methods", "paper_entry"]

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


def seed_major(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Seed-major order: every label's first seed before any second seed (early partial results cover all)."""
    return sorted(runs, key=lambda r: (r.seed, r.index))


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
                        name = grid_run_name(model, method, variant, seed)
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
