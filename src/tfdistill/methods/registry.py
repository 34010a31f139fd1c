"""The methods registry: distiller components and presets by name, each method's config schema, and the loading
of the built-in ones.

* :data:`DISTILLERS` -- component name -> :class:`~.base.Distiller` subclass (``tfd``, ``kd``, ``fitnet``, ...).
* :data:`PRESETS` -- method name -> components + default weights (``ce``, ``ls``, ``tfd``, ``tfd_ls``, ...).
  A name ``a+b`` that is not itself registered composes the presets ``a`` and ``b``.

The method modules beside this one register their components and presets on import; the first lookup imports
them all (:func:`_load_builtins`). :mod:`.method` builds the engine's ``Method`` from what is registered here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownNameError
from ..registry import Registry
from .base import Distiller, Uses

__all__ = ["DISTILLERS", "PRESETS", "Preset", "FAMILIES", "MethodParams", "register_distiller", "register_preset",
           "merge_defaults", "resolve_preset", "method_schema", "preset_family", "method_uses", "method_coupling",
           "list_methods"]

DISTILLERS: Registry[type[Distiller]] = Registry("distiller")


@dataclass(frozen=True)
class Preset:
    components: tuple[str, ...]
    defaults: dict = field(default_factory=dict)
    """Default values for the method section: {"ce_weight": 0.1, "kd": {"weight": 0.9}}."""
    summary: str = ""
    family: str = ""
    """One of :data:`FAMILIES` (how ``tfdistill methods`` groups it); empty: derived by :func:`preset_family`."""
    paper: str = ""
    """The paper that defines the method (authors, venue, year), for ``tfdistill methods`` and the docs."""
    reference: str = ""
    """The authors' public code its tests check it against (``owner/repo``), or what else it is checked against."""


FAMILIES = ("baseline", "teacher-based", "self-distillation", "teacher-free")
"""baseline: no distillation (CE, label smoothing); teacher-based: a separately trained teacher; self-distillation:
the student (or auxiliary parts of it, or its own past/paired predictions) teaches itself; teacher-free: no teacher
network at all (TFD, Tf-KD's virtual teacher)."""

PRESETS: Registry[Preset] = Registry("method")


def register_distiller(name: str):
    return DISTILLERS.register(name)


def register_preset(name: str, components: list[str] | tuple[str, ...], defaults: dict | None = None,
                    summary: str = "", family: str = "", *, paper: str = "", reference: str = "") -> Preset:
    if family and family not in FAMILIES:
        raise ValueError(f"unknown method family {family!r} for {name!r}; valid: {', '.join(FAMILIES)}")
    preset = Preset(tuple(components), dict(defaults or {}), summary, family, paper, reference)
    PRESETS.register(name)(preset)
    return preset


def merge_defaults(a: dict, b: dict) -> dict:
    """Nested dict merge: values of ``b`` win, sub-dicts merge recursively."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_defaults(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_preset(name: str) -> Preset:
    """A registered preset, or the composition of the ``+``-separated registered presets."""
    _load_builtins()
    if name in PRESETS:
        return PRESETS.get(name)
    parts = [p.strip() for p in str(name).split("+")]
    if len(parts) < 2 or not all(parts):
        raise UnknownNameError(PRESETS.unknown_message(name) + " (or combine them with '+', e.g. tfd+kd)")
    comps: list[str] = []
    defaults: dict = {}
    for p in parts:
        if p not in PRESETS:
            raise UnknownNameError(PRESETS.unknown_message(p) + f" (in combination {name!r})")
        sub = PRESETS.get(p)
        for c in sub.components:
            if c in comps:
                raise ConfigError(f"method {name!r} uses component {c!r} twice")
            comps.append(c)
        defaults = merge_defaults(defaults, sub.defaults)
    return Preset(tuple(comps), defaults, f"combination of {', '.join(parts)}")


@dataclass
class MethodParams:
    """The fields every method config has."""

    name: str = "ce"
    ce_weight: float = 1.0
    """Weight of the cross-entropy term."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy term (0.1 gives the paper's TFD-dagger when added to TFD)."""


def _with_defaults(cls: type, overrides: dict, where: str) -> Any:
    """An instance of dataclass ``cls`` with ``overrides`` applied (validated)."""
    known = {f.name for f in dataclasses.fields(cls)}
    bad = set(overrides) - known
    if bad:
        raise ConfigError(f"preset defaults for {where} name unknown fields {sorted(bad)}")
    return cls(**overrides)


def method_schema(name: str) -> type:
    """The params dataclass of method ``name``: MethodParams + one field per component, preset defaults applied."""
    preset = resolve_preset(name)
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=str(name)))]
    common = {k: v for k, v in preset.defaults.items() if not isinstance(v, dict)}
    base = _with_defaults(MethodParams, {"name": str(name), **common}, "method")
    for f in dataclasses.fields(MethodParams):
        if f.name != "name":
            fields.append((f.name, f.type, dataclasses.field(default=getattr(base, f.name))))
    for comp in preset.components:
        cls = DISTILLERS.get(comp).Params
        sub = preset.defaults.get(comp, {})
        default = _with_defaults(cls, sub, f"method.{comp}")
        fields.append((comp, cls, dataclasses.field(default_factory=lambda d=default: dataclasses.replace(d))))
    return dataclasses.make_dataclass(f"{str(name).replace('+', '_')}_params", fields)


def preset_family(name: str) -> str:
    """The family of method ``name``: its registered ``family``; for a combination the first of teacher-based,
    self-distillation, teacher-free that any part has; otherwise teacher-based when it needs a teacher, else
    baseline when it has no components, else teacher-free."""
    _load_builtins()
    if name in PRESETS and PRESETS.get(name).family:
        return PRESETS.get(name).family
    if name not in PRESETS and "+" in str(name):
        fams = {preset_family(p.strip()) for p in str(name).split("+")}
        for f in ("teacher-based", "self-distillation", "teacher-free"):
            if f in fams:
                return f
        return "baseline"
    if method_uses(name).teacher:
        return "teacher-based"
    return "teacher-free" if resolve_preset(name).components else "baseline"


def method_coupling(name: str) -> str:
    """``"per-sample"`` when every term of method ``name`` is a sum of per-sample terms (so gradient accumulation
    over sub-batches gives exactly the full batch's update, BatchNorm aside), else ``"batch-coupled"`` (a term ranks,
    normalises or relates samples across the batch, e.g. TFD's width term). From the components' declared
    :attr:`~.base.Distiller.coupling`; CE alone is per-sample."""
    couplings = [DISTILLERS.get(c).coupling for c in resolve_preset(name).components]
    return "batch-coupled" if "batch-coupled" in couplings else "per-sample"


def method_uses(name: str) -> Uses:
    uses = Uses()
    for comp in resolve_preset(name).components:
        uses = uses | DISTILLERS.get(comp).uses
    return uses


_LOADED = False


def _load_builtins() -> None:
    """Import the modules that register built-in components and presets (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    package = __name__.rsplit(".", 1)[0]
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name not in ("base", "method", "registry", "create") and not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")


def list_methods() -> list[str]:
    _load_builtins()
    return PRESETS.names()
