"""engine.precision / channels_last / cuda_graphs = auto: one resolver, recorded in config.yaml and summary.json,
stated in the report."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tfdistill.config import load_config
from tfdistill.engine import train
from tfdistill.engine.auto import resolve_engine_settings
from tfdistill.errors import ConfigError
from tfdistill.rundir import config_diff

YES, NO = (lambda d: True), (lambda d: False)


def test_auto_is_fp32_contiguous_eager_on_the_cpu():
    s = resolve_engine_settings("auto", "auto", "auto", "cpu", bf16_supported=YES)  # the probe is not consulted
    assert (s.precision, s.channels_last, s.cuda_graphs) == ("fp32", False, False)


def test_auto_on_a_cuda_device_with_bf16():
    # a pure function of the device: torch.device("cuda") needs no GPU, bf16 support is injected
    s = resolve_engine_settings("auto", "auto", "auto", torch.device("cuda", 0), bf16_supported=YES)
    assert (s.precision, s.channels_last, s.cuda_graphs) == ("bf16", True, True)
    s = resolve_engine_settings("auto", "auto", "auto", "cuda", bf16_supported=NO)  # e.g. a V100
    assert (s.precision, s.channels_last, s.cuda_graphs) == ("fp32", True, True)
    # not capturable: DDP, or fp16 (its GradScaler syncs with the host every step)
    assert not resolve_engine_settings("auto", "auto", "auto", "cuda", distributed=True, bf16_supported=YES).cuda_graphs
    assert not resolve_engine_settings("fp16", "auto", "auto", "cuda", bf16_supported=YES).cuda_graphs


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_explicit_values_are_kept(device):
    for prec in ("fp32", "bf16", "fp16"):
        for cl in (True, False):
            for g in (True, False):
                s = resolve_engine_settings(prec, cl, g, device, bf16_supported=YES)
                assert (s.precision, s.channels_last, s.cuda_graphs) == (prec, cl, g)
    with pytest.raises(ConfigError, match="engine.precision.*valid: auto, fp32, bf16, fp16"):
        resolve_engine_settings("fp64", "auto", "auto", device)


def test_config_defaults_and_bad_values():
    e = load_config(None, []).engine
    assert (e.precision, e.channels_last, e.cuda_graphs) == ("auto", "auto", "auto")
    e = load_config(None, ["engine.channels_last=true", "engine.cuda_graphs=false"]).engine
    assert e.channels_last is True and e.cuda_graphs is False
    with pytest.raises(ConfigError, match="'engine.cuda_graphs': 'sometimes'; valid: auto, true, false"):
        load_config(None, ["engine.cuda_graphs=sometimes"])


def test_a_cpu_run_records_the_resolved_values(tiny, tmp_path):
    res = train(load_config(None, [*tiny, "engine.device=cpu", "name=auto"]))
    stored = yaml.safe_load((res.run_dir / "config.yaml").read_text())["engine"]
    assert (stored["precision"], stored["channels_last"], stored["cuda_graphs"]) == ("fp32", False, False)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["channels_last"] is False and summary["cuda_graphs"] is False
    # resuming with the unresolved config resolves it the same way: nothing to refuse
    again = train(load_config(None, [*tiny, "engine.device=cpu", "name=auto"]), resume=True)
    assert again.summary["best_top1"] == summary["best_top1"]


def test_a_planned_auto_matches_a_resolved_run_directory_only_where_asked():
    planned = {"engine": {"precision": "auto", "channels_last": "auto"}, "optim": {"lr": 0.1}}
    stored = {"engine": {"precision": "bf16", "channels_last": True}, "optim": {"lr": 0.1}}
    assert config_diff(stored, planned, auto_matches=True) == []
    assert config_diff(stored, planned) == ["engine.channels_last", "engine.precision"]
    assert config_diff(stored, {**planned, "optim": {"lr": 0.2}}, auto_matches=True) == ["optim.lr"]
