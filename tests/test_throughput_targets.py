"""benchmarks/throughput.py reports issue #12's targets (PASS / FAIL / n.a.) and caps the compile warm-up."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from conftest import REPO


def _tp():
    spec = importlib.util.spec_from_file_location("throughput_bench", REPO / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["throughput_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def _result(device_type: str) -> dict:
    return {
        "device": "some device", "device_type": device_type, "batch": 64, "big_batch": 512,
        "speed": {"engine_big/ce": {"images_per_sec": 120_000.0}},
        "ratios": {"tfd_over_ce_step_b64": 1.03, "tfd_over_ce_step_b512": 1.07, "fitnet_over_tfd_step_b64": 1.5,
                   "engine_over_classic_b64": {"ce": 5.5}},
        "packed": {"k": 8, "mode": "sequential", "reason": "no group engine", "aggregate_over_single": 1.0},
        "compile": {"status": "skipped", "budget_s": 120, "reason": "over budget"},
    }


def test_targets_pass_fail_and_na():
    tp = _tp()
    got = {t["target"]: t["status"] for t in tp.evaluate_targets(_result("cuda"))}
    assert got == {
        "one ResNet32 run, batch 512, images/s": "PASS",        # 120k >= 100k
        "TFD/CE step, batch 64": "PASS",                        # 1.03 <= 1.05
        "TFD/CE step, batch 512": "FAIL",                       # 1.07 > 1.05
        "FitNets/TFD step, batch 64": "FAIL",                   # 1.5 < 1.6
        "engine/classic CE, batch 64": "PASS",                  # 5.5 >= 5
        "K=8 packed runs aggregate vs one run": "n.a.",         # measured sequentially: not a packing result
        "torch.compile warm-up (reported, no target)": "skipped",
    }
    cpu = {t["target"]: t["status"] for t in tp.evaluate_targets(_result("cpu"))}
    assert cpu["one ResNet32 run, batch 512, images/s"] == "n.a." and cpu["engine/classic CE, batch 64"] == "n.a."
    assert cpu["TFD/CE step, batch 64"] == "PASS"  # ratios are targets on the CPU too
    packed = _result("cuda")
    packed["packed"].update(mode="packed", aggregate_over_single=3.2)
    assert {t["target"]: t["status"] for t in tp.evaluate_targets(packed)}[
        "K=8 packed runs aggregate vs one run"] == "PASS"
    # with one run at batch K*B measured too, the packed target names its bound (packing cannot beat batching)
    packed["packed"]["aggregate_over_single"] = 2.2
    packed["ratios"]["big_b512_over_single_b64"] = 2.88
    t = {t["target"]: t for t in tp.evaluate_targets(packed)}["K=8 packed runs aggregate vs one run"]
    assert t["status"] == "FAIL" and t["note"] == "bound: one run at batch 512 is 2.88x one at 64"


def test_compile_over_budget_is_reported_as_skipped(tmp_path):
    tp = _tp()
    args = argparse.Namespace(compile_budget=0.5, device="cpu", batch=8, steps=1)
    res = tp.measure_compile(args, tmp_path)  # the child cannot even import torch in half a second
    assert res["status"] == "skipped" and "--compile-budget" in res["reason"]
    args.compile_budget = 0
    assert tp.measure_compile(args, tmp_path)["status"] == "skipped"
    args.compile = True  # --compile --compile-budget 0: the engine runs compile without the capped probe
    assert tp.measure_compile(args, tmp_path)["status"] == "not probed"


def test_parts_and_big_methods_are_checked(capsys):
    tp = _tp()
    a = tp.parse_args(["--device", "cpu", "--parts", "big,packed", "--big-methods", "ce"])
    assert a.parts == ["big", "packed"] and a.big_methods == ["ce"]
    assert tp.parse_args(["--device", "cpu"]).parts == list(tp.PARTS)
    for bad in (["--parts", "big,fast"], ["--parts", ","], ["--big-methods", "kd"]):
        try:
            tp.parse_args(["--device", "cpu", *bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(bad)
    err = capsys.readouterr().err
    assert "bad --parts fast; valid: engine, big, ratios, packed" in err and "bad --big-methods 'kd'" in err
