"""The Method's engine-facing interface: what the engine asks instead of reaching into method components."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import tfdistill
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
