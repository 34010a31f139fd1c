"""fingerprint.json (#29, #32): what a run's data, initial weights, first-epoch order and environment were; resume
checks the data's identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY

from tfdistill.cli import main
from tfdistill.config import load_config
from tfdistill.fingerprint import data_difference, pair_problem, read, weights_hash
from tfdistill.rundir import FINGERPRINT_FILE


def _packed(tmp_path: Path, runs: dict[str, list[str]]) -> dict[str, dict]:
    """Train the runs ``name -> overrides`` as one packed group (each bit-identical to its own training); their
    fingerprints."""
    from tfdistill import train

    cfgs = [load_config(None, [*TINY, f"out_dir={tmp_path / 'runs'}", f"name={name}", "engine.max_steps_per_epoch=2",
                               "data.synthetic_test=32", *o]) for name, o in runs.items()]
    train(cfgs, echo=lambda s: None)
    return {name: read(tmp_path / "runs" / name) for name in runs}


def test_fingerprints_are_equal_across_methods_at_one_seed_and_differ_across_seeds(tmp_path):
    fps = _packed(tmp_path, {
        "ce": ["method.name=ce"], "tfd": ["method.name=tfd"], "ls": ["method.name=ls"],
        "pskd": ["method.name=pskd"], "dropblock": ["method.name=ce", "model.dropblock_prob=0.1"],
        "ce_s1": ["method.name=ce", "seed=1"]})
    ce = fps["ce"]
    assert ce["format"] == 1 and set(ce) >= {"data", "init", "order", "env"}
    assert ce["order"]["samples"] == 64 and ce["env"]["device"] == "cpu" and ce["env"]["torch"]  # 2 steps of 32
    assert ce["data"]["generator"] == {"train": 128, "test": 32, "classes": 10, "size": 32}
    for name in ("tfd", "ls", "pskd", "dropblock"):
        for section in ("data", "init", "order"):
            assert fps[name][section] == ce[section], (name, section)
        assert pair_problem(ce, fps[name]) is None
    other = fps["ce_s1"]
    assert other["data"] == ce["data"]
    assert other["init"] != ce["init"] and other["order"] != ce["order"]
    assert pair_problem(ce, other).startswith("other initial weights")


def test_the_order_is_the_loaders_and_a_resumed_run_keeps_it(tmp_path):
    """The order hash is the digest of the indices the training loader yielded in the first main epoch (computed
    here independently), written after that epoch; a resumed run keeps it; the init hash is that of the weights
    the student was built with."""
    import hashlib

    import torch

    from conftest import one_run

    cfg = load_config(None, [*TINY, f"out_dir={tmp_path / 'runs'}", "name=r", "schedule.name=constant"])
    run = one_run(cfg)
    init = weights_hash(run.student)
    run.data.train.set_epoch(0)
    idx = torch.cat([b[2] for b in run.data.train]).numpy().tobytes()
    from tfdistill import train

    train(cfg, overwrite=True, echo=lambda s: None)
    fp = read(tmp_path / "runs" / "r")
    assert fp["order"] == {"hash": hashlib.sha256(idx).hexdigest()[:16], "samples": 128}
    assert fp["init"]["hash"] == init
    cfg2 = load_config(None, [*TINY, f"out_dir={tmp_path / 'runs'}", "name=r", "schedule.name=constant", "epochs=2"])
    train(cfg2, resume=True, echo=lambda s: None)
    assert read(tmp_path / "runs" / "r") == fp


def _image_folder(root: Path, seed: int, sizes=(8, 8)) -> Path:
    """A tiny image folder: train/ (2 classes x 8 PNGs) and test/ (2 x 4); ``seed`` draws the pixels."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 8), ("test", 4)):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (*sizes, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return root


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def test_resume_from_a_moved_copy_works_other_data_is_refused_and_the_override_allows_it(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("TFDISTILL_CACHE", str(tmp_path / "cache"))
    data = _image_folder(tmp_path / "data", seed=0)
    base = ["data.name=imagefolder", "data.batch_size=4", "data.eval_batch_size=8", "model.name=resnet8",
            "schedule.name=constant", "engine.progress=false"]
    assert main(["train", *base, f"data.root={data}", "epochs=1", f"out_dir={tmp_path / 'runs'}", "name=r"]) == 0
    run = tmp_path / "runs" / "r"
    fp = json.loads((run / FINGERPRINT_FILE).read_text())
    assert str(tmp_path) not in json.dumps(fp)  # no absolute path
    assert fp["data"]["train"]["files"] == 16 and sorted(fp["data"]["train"]["classes"]) == ["cat", "dog"]

    # the run and its data copied to another folder (new modification times): it resumes there
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved / "data", copy_function=shutil.copy)
    shutil.copytree(run, moved / "runs" / "r", copy_function=shutil.copy)
    capsys.readouterr()
    assert main(["train", "--resume", str(moved / "runs" / "r"), "epochs=2", f"data.root={moved / 'data'}"]) == 0
    assert json.loads((moved / "runs" / "r" / "summary.json").read_text())["epochs"] == 2
    assert read(moved / "runs" / "r") == fp

    # other images under the same class names: refused in one line naming the difference, nothing touched
    other = _image_folder(tmp_path / "other", seed=1, sizes=(8, 9))
    before = _files(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "epochs=2", f"data.root={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "its data differ from the data it was trained on" in err, err
    assert "train/: other files (names or sizes) in 2 of 2 classes (cat, dog)" in err and "--accept-data-change" in err
    assert _files(run) == before

    # the override: it continues, and the change is recorded
    assert main(["train", "--resume", str(run), "epochs=2", f"data.root={other}", "--accept-data-change"]) == 0
    after = read(run)
    (change,) = after["data"]["changes"]
    assert change["after_epoch"] == 1 and change["from"] == fp["data"]["hash"] != after["data"]["hash"]
    assert after["init"] == fp["init"] and after["order"] == fp["order"]
    assert "--accept-data-change: resuming on other data" in (run / "train.log").read_text()
    # without --resume the flag is a mistake
    capsys.readouterr()
    assert main(["train", *base, f"data.root={data}", "--accept-data-change", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "--accept-data-change goes with --resume" in capsys.readouterr().err


def test_data_difference_names_what_differs():
    base = {"name": "imagefolder", "classes": ["a", "b"],
            "train": {"kind": "folder", "split": "train", "files": 2, "bytes": 10, "classes": {"a": "1", "b": "2"}},
            "test": {"kind": "archive", "split": "test.tar.gz", "bytes": 100}}
    assert data_difference(base, json.loads(json.dumps(base))) is None
    assert data_difference(base, {**base, "classes": ["a", "c"]}) == \
        "class names differ (only recorded: b; only now: c)"
    moved = {**base, "test": {"kind": "archive", "split": "test.tar.gz", "bytes": 101}}
    assert data_difference(base, moved) == "test: test.tar.gz of 100 bytes recorded, test.tar.gz of 101 bytes now"
    sub = {**base, "subset": {"train_subset": 1, "train_subset_indices": "x"}}
    assert data_difference(base, sub).startswith("subset null recorded, {")
    assert data_difference({"name": "digits"}, {"name": "synthetic"}) == "dataset 'digits' recorded, 'synthetic' now"


def test_the_subset_chosen_is_part_of_the_identity():
    from tfdistill.data import load_source

    cfg = load_config(None, ["data.name=digits", "data.train_subset=100"]).data
    a = load_source(cfg).identity
    cfg.train_subset = 200
    b = load_source(cfg).identity
    assert a["subset"]["train_subset"] == 100 and a["subset"] != b["subset"]
    assert data_difference(a, b).startswith("subset ")
