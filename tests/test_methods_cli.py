"""Every method trains for one epoch through the engine, with a tiny teacher trained by the same CLI;
pre-training stages (FitNets hint, AB, FT, FSP init) run and hand over to the main stage."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from test_baselines import EXPECTED_TERMS, PRESET_CASES
from tfdistill.cli import main
from tfdistill.config import load_config
from tfdistill.engine import train

SMALL = [*TINY, "data.synthetic_train=64", "data.synthetic_test=32"]
PRE_EPOCHS = {"ab": "method.ab.init_epochs=1", "ab_crd": "method.ab.init_epochs=1", "ft": "method.ft.init_epochs=1",
              "fsp_crd": "method.fsp.init_epochs=1"}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A resnet14 teacher trained with the CLI (one epoch of the tiny synthetic task)."""
    out = tmp_path_factory.mktemp("teachers")
    assert main(["train", *SMALL, "model.name=resnet14", f"out_dir={out}", "name=t"]) == 0
    return out / "t" / "best.pt"


@pytest.mark.parametrize("preset, needs_teacher", PRESET_CASES, ids=[p for p, _ in PRESET_CASES])
def test_one_epoch_per_method(preset, needs_teacher, teacher_ckpt, tmp_path):
    over = [*SMALL, f"method.name={preset}", f"out_dir={tmp_path}", "name=r"]
    if needs_teacher:
        over += ["teacher.model=resnet14", f"teacher.checkpoint={teacher_ckpt}"]
    if preset in PRE_EPOCHS:
        over.append(PRE_EPOCHS[preset])
    summary = train(load_config(None, over), echo=lambda s: None).summary
    assert summary["status"] == "finished"
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    stage_rows = [r for r in rows if "stage" in r]  # pre-stage epochs come first, marked with their stage
    rows = rows[len(stage_rows):]
    assert stage_rows or preset not in PRE_EPOCHS
    assert all(r["epoch"] == 0 and r["stage_loss"] == r["stage_loss"] for r in stage_rows)
    assert [r["epoch"] for r in rows] == [1]
    assert set(rows[0]["terms"]) == EXPECTED_TERMS[preset]
    assert all(isinstance(v, float) for v in rows[0]["terms"].values())


@pytest.mark.parametrize("preset, override", [
    ("fitnet", "method.fitnet.init_epochs=1"), ("ab", "method.ab.init_epochs=1"), ("ft", "method.ft.init_epochs=1"),
])
def test_pre_stage_runs_then_main_stage(preset, override, teacher_ckpt, tmp_path):
    over = [*SMALL, f"method.name={preset}", override, "teacher.model=resnet14",
            f"teacher.checkpoint={teacher_ckpt}", f"out_dir={tmp_path}", "name=r", "epochs=2"]
    lines = []
    train(load_config(None, over), echo=lines.append)
    pre = [i for i, line in enumerate(lines) if line.startswith("pre-stage")]
    main_epochs = [i for i, line in enumerate(lines) if line.startswith("epoch")]
    assert pre and main_epochs and max(pre) < min(main_epochs)
    log = (tmp_path / "r" / "train.log").read_text()
    assert "pre-stage" in log
    # an interrupted run resumed after its pre-stage does not run the pre-stage again
    run = tmp_path / "r"
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["epoch"] = 1
    torch.save(ck, run / "last.pt")
    (run / "summary.json").unlink()
    lines.clear()
    train(load_config(None, over), resume=True, echo=lines.append)
    assert not any(line.startswith("pre-stage") for line in lines)
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["2/2"]


def test_teacher_is_frozen_and_not_in_optimizer(teacher_ckpt, tmp_path):
    from tfdistill.engine import build_group

    cfg = load_config(None, [*SMALL, "method.name=tfd+kd", "teacher.model=resnet14",
                             f"teacher.checkpoint={teacher_ckpt}", f"out_dir={tmp_path}", "name=r"])
    group = build_group([cfg], echo=lambda s: None)
    tr = group.runs[0]
    before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    (result,) = group.fit()
    assert not isinstance(result, BaseException), result
    assert not tr.teacher.training
    assert all(not p.requires_grad for p in tr.teacher.parameters())
    in_opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in tr.teacher.parameters())
    for k, v in tr.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN statistics untouched too
    assert "teacher" not in dict(tr.method.named_children())
