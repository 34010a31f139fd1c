"""The recipes in ``configs/``: shipped inside the wheel as ``tfdistill/configs/``, read in place from a checkout."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from .errors import ConfigError


def recipes_dir() -> Path:
    """The folder holding the YAML recipes: ``tfdistill/configs/`` inside an installed wheel (``setup.py`` copies
    them there), or in a checkout (an editable install, ``PYTHONPATH=src``) the repository's ``configs/``."""
    packaged = _as_dir(importlib.resources.files("tfdistill").joinpath("configs"))
    if packaged is not None:
        return packaged
    dev = Path(__file__).resolve().parents[2] / "configs"
    if dev.is_dir() and (Path(__file__).resolve().parents[1].name == "src"):
        return dev
    raise ConfigError(f"the recipes are missing from this install of tfdistill ({Path(__file__).parent}): "
                      f"reinstall it (pip install --force-reinstall tfdistill)")


def _as_dir(res) -> Path | None:
    """A folder on disk from an ``importlib.resources`` traversable: a ``pathlib.Path``, or a ``MultiplexedPath`` (a
    namespace package, Python 3.10+) whose first folder holding files is taken; ``None`` when it has none."""
    if isinstance(res, Path):
        return res if res.is_dir() else None
    try:
        children = list(res.iterdir())  # MultiplexedPath: the entries of all its folders, each a real Path
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    for child in children:
        if isinstance(child, Path):
            return child.parent
    return None


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
