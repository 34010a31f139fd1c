"""The recipes in ``configs/`` (shipped inside the package as ``tfdistill.configs``)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def recipes_dir() -> Path:
    """The folder holding the YAML recipes: the installed ``tfdistill.configs`` package, or in a development
    checkout installed in editable mode, the repository's ``configs/``."""
    try:
        return Path(str(importlib.resources.files("tfdistill.configs")))
    except ModuleNotFoundError:
        dev = Path(__file__).resolve().parents[2] / "configs"
        if dev.is_dir():
            return dev
        raise


SWEEPS = "reproduce"
"""The folder of ``configs/`` that holds sweep specs (``tfdistill sweep``) rather than training recipes."""


def list_recipes(sweeps: bool = False) -> list[str]:
    """Training recipes (``tfdistill train``), or with ``sweeps`` the sweep specs (``tfdistill sweep``)."""
    root = recipes_dir()
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return [n for n in names if n.startswith(f"{SWEEPS}/") == sweeps]


def resolve_recipe(spec: str) -> Path:
    """A path to a YAML file, or a recipe name such as ``cifar100/resnet32_tfd`` (``.yaml`` optional)."""
    p = Path(spec)
    if p.is_file():
        return p
    root = recipes_dir()
    for cand in (root / spec, root / f"{spec}.yaml"):
        if cand.is_file():
            return cand
    return p  # let the config loader report the missing file
