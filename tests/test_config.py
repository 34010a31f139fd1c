"""Typed configs, recipes and packaging."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import tfdistill
from conftest import REPO
from tfdistill.config import load_config
from tfdistill.errors import ConfigError
from tfdistill.recipes import list_recipes


def test_every_recipe_loads():
    names = list_recipes()
    assert {"demo", "cifar100/paper", "cifar100/released", "imagenet/resnet18_tfd"} <= set(names)
    for name in names:
        if not name.startswith("reproduce/"):  # sweep specs have their own schema (tests/test_sweep.py)
            load_config(name)


def test_paper_and_released_recipes_match_their_sources():
    p = load_config("cifar100/paper")
    assert (p.epochs, p.data.batch_size, p.optim.lr, p.optim.momentum, p.optim.weight_decay) == (240, 64, 0.05, 0.9, 5e-4)
    assert list(p.schedule.milestones) == [150, 180, 210] and p.schedule.gamma == 0.1 and not p.optim.nesterov
    assert (p.method.tfd.alpha, p.method.tfd.beta, p.method.tfd.ramp_epochs) == (0.005, 0.0004, 0)
    r = load_config("cifar100/released")
    assert (r.optim.lr, r.data.batch_size, r.optim.nesterov, r.method.tfd.ramp_epochs) == (0.1, 128, True, 20)
    assert r.method.tfd.detach_top is False
    i = load_config("imagenet/resnet18_tfd")
    assert (i.epochs, i.optim.lr, list(i.schedule.milestones)) == (100, 0.1, [30, 60, 90])


def test_switching_method_keeps_only_settings_the_new_method_has():
    assert "tfd" not in load_config("cifar100/paper", ["method.name=ce"]).method
    both = load_config("cifar100/paper", ["method.name=tfd+kd"]).method
    assert both.tfd.alpha == 0.005 and both.kd.T == 4.0 and both.ce_weight == 0.1
    with pytest.raises(ConfigError, match="method.tfd"):
        load_config("cifar100/paper", ["method.name=ce", "method.tfd.alpha=1"])


def test_types_are_checked():
    with pytest.raises(ConfigError, match="epochs"):
        load_config(None, ["epochs=many"])
    with pytest.raises(ConfigError, match="method.tfd.detach_top"):
        load_config(None, ["method.name=tfd", "method.tfd.detach_top=maybe"])
    cfg = load_config(None, ["method.name=tfd", "method.tfd.direction=bidirectional", "model.taps=[layer1,layer3]"])
    assert cfg.method.tfd.direction == "bidirectional" and list(cfg.model.taps) == ["layer1", "layer3"]


def test_package_list_is_complete():
    """pyproject lists packages explicitly; every package must be there (the recipes are data: setup.py)."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = Path(tfdistill.__file__).parent  # the checkout's src/tfdistill, or an installed wheel's package
    found = {".".join(("tfdistill", *p.parent.relative_to(src).parts)) for p in src.rglob("__init__.py")}
    assert found == listed
