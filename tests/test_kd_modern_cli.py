"""One epoch of each modern teacher-based preset (#31: DKD, DIST, logit standardization, ReviewKD and their TFD
combinations) through the CLI, with a tiny teacher trained by the same CLI; ``tfdistill methods`` lists them."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from tfdistill.cli import main
from tfdistill.methods import method_uses
from tfdistill.methods.registry import PRESETS, method_coupling, preset_family

SMALL = [*TINY, "data.synthetic_train=64", "data.synthetic_test=32"]

# preset -> the loss terms its metrics row logs
CASES = {
    "dkd": {"ce", "dkd_tckd", "dkd_nckd"},
    "dkd_logit_stand": {"ce", "dkd_tckd", "dkd_nckd"},
    "tfd+dkd": {"ce", "dkd_tckd", "dkd_nckd", "tfd_depth", "tfd_width"},
    "dist": {"ce", "dist_inter", "dist_intra"},
    "logit_stand": {"ce", "logit_stand"},
    "reviewkd": {"ce", "reviewkd"},
    "reviewkd_imagenet": {"ce", "reviewkd"},
    "tfd+dist": {"ce", "dist_inter", "dist_intra", "tfd_depth", "tfd_width"},
}
COUPLING = {"dkd": "per-sample", "dkd_imagenet": "per-sample", "dkd_logit_stand": "per-sample",
            "tfd+dkd": "batch-coupled", "dist": "batch-coupled", "dist_imagenet": "batch-coupled",
            "tfd+dist": "batch-coupled", "logit_stand": "per-sample", "logit_stand_imagenet": "per-sample",
            "reviewkd": "per-sample", "reviewkd_imagenet": "per-sample"}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A resnet14 teacher trained with the CLI (one epoch of the tiny synthetic task)."""
    out = tmp_path_factory.mktemp("teachers")
    assert main(["train", *SMALL, "model.name=resnet14", f"out_dir={out}", "name=t"]) == 0
    return out / "t" / "best.pt"


@pytest.mark.parametrize("preset", list(CASES))
def test_one_epoch(preset, teacher_ckpt, tmp_path, capsys):
    assert method_uses(preset).teacher
    args = ["train", *SMALL, f"method.name={preset}", f"out_dir={tmp_path}", "name=r", "teacher.model=resnet14",
            f"teacher.checkpoint={teacher_ckpt}"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished"
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert set(rows[0]["terms"]) == CASES[preset]
    assert all(v == v and abs(v) < 1e6 for v in rows[0]["terms"].values())
    if preset == "reviewkd_imagenet":  # no warm-up: the ABFs are trained and checkpointed with the student
        assert rows[0]["terms"]["reviewkd"] > 0
        ck = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
        flat = json.dumps(sorted(_keys(ck)))
        assert "fusion.abfs.0.conv1.0.weight" in flat and "fusion.abfs.3.conv2.0.weight" in flat


def _keys(obj, prefix=""):
    """Every key path of nested dicts (a checkpoint's)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{prefix}{k}"
            yield from _keys(v, f"{prefix}{k}.")


def test_registered_with_family_paper_reference_and_coupling(capsys):
    for name, coupling in COUPLING.items():
        assert preset_family(name) == "teacher-based", name
        assert method_coupling(name) == coupling, name
        if "+" not in name:
            p = PRESETS.get(name)
            assert p.paper and "/" in p.reference and p.summary, name
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in COUPLING:
        assert f"  {name} " in listed, name


@pytest.mark.parametrize("bad, valid", [
    ("method.dkd.T=0", "must be > 0"), ("method.dkd.stand_std=biased", "valid: sample, population"),
    ("method.dist.tau=-1", "must be > 0"), ("method.logit_stand.std=biased", "valid: sample, population"),
    ("method.reviewkd.warmup_offset=2", "warmup_offset 0 or 1"),
])
def test_bad_settings_are_one_clear_line(bad, valid, teacher_ckpt, tmp_path, capsys):
    method = bad.split(".")[1]
    args = ["train", *SMALL, f"method.name={method}", bad, f"out_dir={tmp_path}", "name=r",
            "teacher.model=resnet14", f"teacher.checkpoint={teacher_ckpt}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and valid in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "r" / "last.pt").exists()
