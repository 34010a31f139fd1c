"""Classification does not move by a bit: tiny CE, LS, TFD, KD and packed-seed runs retrained now equal, row for row
and weight for weight, the golden records committed before the task seam (#30) (``tests/golden/classification_runs.py``).

Bit-exactness is promised on the CPU for the torch version that wrote the records; another torch version (a CI leg
on an older torch) may round differently, so there the test skips, saying why."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("golden_classification_runs", REPO / "tests/golden/classification_runs.py")
golden = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(golden)


@pytest.mark.slow
def test_classification_runs_equal_the_golden_records(tmp_path):
    saved = json.loads(golden.GOLDEN.read_text())
    if saved["torch"] != torch.__version__:
        pytest.skip(f"golden records written with torch {saved['torch']}, this is {torch.__version__}")
    threads = torch.get_num_threads()
    try:
        now = golden.produce(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert sorted(now) == sorted(saved["runs"])
    for name, rec in saved["runs"].items():
        assert now[name]["rows"] == rec["rows"], name
        assert now[name]["summary"] == rec["summary"], name
        assert now[name]["student_sha256"] == rec["student_sha256"], name
    # the records are not vacuous: two epochs each, the methods' terms are there, the packed seeds differ
    assert all(len(r["rows"]) == 2 for r in saved["runs"].values())
    assert "kd" in saved["runs"]["kd"]["rows"][0]["terms"]
    assert any(k.startswith("tfd") and k != "tfd" for k in saved["runs"]["tfd"]["rows"][0]["terms"])
    packed = [v["student_sha256"] for k, v in saved["runs"].items() if k.startswith("tfd_packed/")]
    assert len(packed) == 2 and packed[0] != packed[1]
