"""Packaging: the recipes are found from a checkout and from an installed wheel (.ci/wheel.sh runs this file against
the installed wheel with TFDISTILL_TEST_INSTALLED=1), the license metadata, and type checkers see the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfdistill
from conftest import REPO
from tfdistill.recipes import _as_dir, list_recipes, recipes_dir

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PACKAGE = Path(tfdistill.__file__).resolve().parent
FROM_CHECKOUT = PACKAGE == (REPO / "src" / "tfdistill").resolve()


def _names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def test_the_recipes_come_from_configs_in_a_checkout_and_from_the_package_when_installed():
    if os.environ.get("TFDISTILL_TEST_INSTALLED"):  # .ci/wheel.sh: the suite must be testing the wheel
        assert not FROM_CHECKOUT and "site-packages" in PACKAGE.parts, PACKAGE
    if FROM_CHECKOUT:
        assert recipes_dir() == REPO / "configs"
    else:  # the wheel's own copy, and every recipe of the checkout's configs/ is in it
        assert recipes_dir() == PACKAGE / "configs"
        assert _names(recipes_dir()) == _names(REPO / "configs")
    assert "demo" in list_recipes() and "reproduce/table1" in list_recipes(sweeps=True)


def test_a_namespace_packages_multiplexed_path_gives_its_folder(tmp_path):
    """``importlib.resources.files`` of a folder without ``__init__.py`` is a MultiplexedPath (Python 3.10-3.12), whose
    ``str()`` is no path: the folder holding files is taken from it."""
    readers = pytest.importorskip("importlib.readers")
    empty, full = tmp_path / "a", tmp_path / "b"
    empty.mkdir()
    (full / "sub").mkdir(parents=True)
    (full / "demo.yaml").write_text("epochs: 1\n")
    assert _as_dir(readers.MultiplexedPath(str(full), str(empty))) == full
    assert _as_dir(readers.MultiplexedPath(str(empty))) is None
    assert _as_dir(tmp_path / "missing") is None and _as_dir(full) == full


def test_license_and_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 The tfdistill authors" in text
    assert project["authors"] == [{"name": "The tfdistill authors"}] and project["keywords"]
    assert "Typing :: Typed" in project["classifiers"]
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # the SPDX string says it
    # SPDX `license` strings and `license-files` need setuptools >= 77
    assert meta["build-system"]["requires"] == ["setuptools>=77"]
    assert (PACKAGE / "py.typed").is_file()


def test_type_checkers_find_the_installed_package(tmp_path):
    """mypy resolves ``import tfdistill`` from how it is installed (editable: a plain path entry, no import hook)."""
    pytest.importorskip("mypy")
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    res = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", os.devnull, "--follow-imports=skip",
                          "--python-executable", sys.executable,
                          "-c", "import tfdistill\nfrom tfdistill import TFDLoss\n"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Success" in res.stdout, res.stdout + res.stderr
