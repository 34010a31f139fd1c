"""The Method's engine-facing interface: what the engine asks instead of reaching into method components."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import tfdistill
from tfdistill.methods import list_methods
from test_baselines import batch, build, small_params

ENGINE = Path(tfdistill.__file__).resolve().parent / "engine"


def _ids(params):
    return {id(p) for p in params}


def test_ft_paraphraser_is_trained_by_its_pre_stage_only():
    m, student, _ = build("ft")
    ft = m.distillers["ft"]
    para, trans = _ids(ft.paraphraser.parameters()), _ids(ft.translator.parameters())
    main = _ids(m.trainable_parameters("main"))
    assert _ids(student.parameters()) <= main and trans <= main and not (para & main)
    assert _ids(m.trainable_parameters("ft_paraphraser")) == para
    assert m.frozen_in_main() and all(n.startswith("distillers.ft.paraphraser.") for n in m.frozen_in_main())
    assert len(m.frozen_in_main()) == len(list(ft.paraphraser.parameters()))
    # declared, not probed: nothing is frozen until the main stage starts
    assert all(p.requires_grad for p in ft.paraphraser.parameters())
    m.on_epoch_start(0)
    assert not any(p.requires_grad for p in ft.paraphraser.parameters())
    assert all(p.requires_grad for p in ft.translator.parameters())
    with pytest.raises(KeyError, match="no training stage 'nope'; stages: main, ft_paraphraser"):
        m.trainable_parameters("nope")


@pytest.mark.parametrize("preset,frozen", [("ab_crd", True), ("ab", False)])
def test_ab_connectors_frozen_in_main_only_without_an_ab_term(preset, frozen):
    m, _, _ = build(preset)
    conn = _ids(m.distillers["ab"].connectors.parameters())
    assert conn
    assert bool(conn & _ids(m.trainable_parameters("main"))) is not frozen
    assert bool(m.frozen_in_main()) is frozen
    assert conn <= _ids(m.trainable_parameters("ab_init"))


def test_plain_methods_train_student_and_components_in_main():
    m, student, _ = build("fitnet")
    expect = list(student.parameters()) + [p for p in m.distillers.parameters()]
    assert _ids(m.trainable_parameters()) == _ids(expect)
    assert m.frozen_in_main() == [] and m.ddp_ignored() == [] and m.self_synced_buffers() == []


def test_crd_bank_is_self_synced_and_gets_the_gather():
    m, _, _ = build("crd")
    synced = m.self_synced_buffers()
    bufs = dict(m.named_buffers())
    assert synced and all(n in bufs and n.startswith("distillers.crd.") for n in synced)
    assert set(synced) == {f"distillers.crd.{n}" for n, _ in m.distillers["crd"].named_buffers()}
    assert set(m.ddp_ignored()) == set(synced)
    calls = []

    def gather(t):
        calls.append(t.shape)
        return t

    m.set_gather(gather)
    assert m.distillers["crd"].gather is gather
    m.train()
    x, y, idx = batch()
    m(x, y, idx)
    assert calls  # the component used it
    m.set_gather(None)
    assert m.distillers["crd"].gather is None


def test_component_state_round_trip():
    m, _, _ = build("crd")
    state = {k: v.clone() for k, v in m.component_state_dict().items()}
    assert state and not any(k.startswith("student.") for k in state)
    m2, _, _ = build("crd", seed=1)
    assert any(not torch.equal(state[k], v) for k, v in m2.component_state_dict().items())
    m2.load_component_state_dict(state)
    assert all(torch.equal(state[k], v) for k, v in m2.component_state_dict().items())


def test_engine_never_reaches_into_method_components():
    """engine/*.py use the Method interface, not ``.distillers`` and not ``on_epoch_start`` probing outside the epoch
    loop."""
    for f in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("distillers", "needs_gather", "gather"), f"{f.name}:{node.lineno}"


# --------------------------------------------------------------------------- config sections as plain objects
def _omegaconf_held(m) -> list[str]:
    """``module.attr`` for every OmegaConf container in the ``vars()`` of a module of the built method (the
    student's, the components', the frozen teacher's) or of its feature taps, and in the fields of a dataclass held
    there (a component's params)."""
    import dataclasses

    from omegaconf import DictConfig, ListConfig

    def bad(v, depth=0):
        if isinstance(v, (DictConfig, ListConfig)):
            return True
        if depth < 3 and dataclasses.is_dataclass(v) and not isinstance(v, type):
            return any(bad(getattr(v, f.name), depth + 1) for f in dataclasses.fields(v))
        if depth < 3 and isinstance(v, (list, tuple)):
            return any(bad(x, depth + 1) for x in v)
        if depth < 3 and isinstance(v, dict):
            return any(bad(x, depth + 1) for x in v.values())
        return False

    owners = [(f"method.{n}" if n else "method", mod) for n, mod in m.named_modules()]
    if m.teacher is not None:
        owners += [(f"teacher.{n}", mod) for n, mod in m.teacher.named_modules()]
    owners += [(name, tap) for name, tap in (("student_tap", m.student_tap), ("teacher_tap", m.teacher_tap)) if tap]
    return [f"{who}.{k}" for who, obj in owners for k, v in vars(obj).items() if bad(v)]


@pytest.mark.parametrize("preset", list_methods())
def test_built_methods_hold_no_omegaconf_containers(preset):
    """build_method converts cfg.method (an OmegaConf node, as the engine passes it) into its schema's dataclasses
    once, so no module of a built Method holds a DictConfig/ListConfig (torch.compile cannot trace them)."""
    import dataclasses

    from omegaconf import DictConfig

    from tfdistill.config import load_config
    from tfdistill.methods import build_method, method_uses, resolve_preset
    from test_baselines import NUM_CLASSES, NUM_TRAIN, TinyNet, teacher_for

    overrides = [f"method.name={preset}"]
    if "crd" in resolve_preset(preset).components:
        overrides.append("method.crd.nce_k=16")  # the tiny training set has 40 samples
    if "tfd" in resolve_preset(preset).components:
        overrides.append("method.tfd.width_stages=[0,1]")  # a list-valued key: a ListConfig in the node
    params = load_config(None, overrides).method
    assert isinstance(params, DictConfig)
    torch.manual_seed(0)
    teacher = None
    if method_uses(preset).teacher:
        teacher = TinyNet() if preset.startswith("tfkd_self") else teacher_for(preset)
    m = build_method(TinyNet(), params, example=batch()[0], num_classes=NUM_CLASSES, num_train=NUM_TRAIN, epochs=2,
                     teacher=teacher)
    assert _omegaconf_held(m) == []
    assert dataclasses.is_dataclass(m.params) and m.params.name == preset
    for name, comp in m.distillers.items():
        assert isinstance(comp.params, type(comp).Params), (name, type(comp.params))
        assert comp.params == getattr(m.params, name)


def test_an_untyped_method_section_gets_the_schema_defaults():
    from omegaconf import OmegaConf

    from tfdistill.errors import ConfigError
    from tfdistill.methods import build_method
    from test_baselines import TinyNet

    m = build_method(TinyNet(), OmegaConf.create({"name": "tfd", "tfd": {"alpha": 0.1, "width_stages": [0, 1]}}),
                     example=batch()[0], num_classes=5, num_train=40, epochs=1)
    p = m.distillers["tfd"].params
    assert (p.alpha, p.beta, p.width_stages, type(p.width_stages)) == (0.1, 4e-4, [0, 1], list)
    assert _omegaconf_held(m) == []
    with pytest.raises(ConfigError, match="bad method config: Key 'alpah' not in 'TFDParams'"):
        build_method(TinyNet(), OmegaConf.create({"name": "tfd", "tfd": {"alpah": 0.1}}), example=batch()[0],
                     num_classes=5, num_train=40, epochs=1)


def test_every_component_declares_its_coupling_and_methods_combine_them():
    """Each registered component says whether its terms are per-sample or batch-coupled (what gradient accumulation
    keeps exact); a method is batch-coupled when any of its components is."""
    from tfdistill.methods.registry import DISTILLERS, list_methods, method_coupling

    for name in DISTILLERS.names():
        assert DISTILLERS.get(name).coupling in ("per-sample", "batch-coupled"), name
    assert method_coupling("ce") == "per-sample"
    assert method_coupling("kd") == "per-sample"
    assert method_coupling("tfd") == "batch-coupled"
    assert method_coupling("tfd+kd") == "batch-coupled"
    assert {method_coupling(m) for m in list_methods()} <= {"per-sample", "batch-coupled"}
