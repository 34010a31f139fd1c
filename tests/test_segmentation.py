"""Segmentation (#30): the task seam's dense implementation, its metrics against independent computations, per-pixel
losses, method refusals, segmentation models and their declared taps, the CIFAR-10 proxy and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tfdistill.errors import ConfigError
from tfdistill.tasks import get_task
from tfdistill.tasks.segmentation import IGNORE, scores

from conftest import run_cli


def _np_scores(pred: np.ndarray, truth: np.ndarray, k: int):
    """An independent mIoU: per class, sets of pixel positions (numpy), IoU = |P & T| / |P | T|."""
    keep = truth != IGNORE
    pred, truth = pred[keep], truth[keep]
    iou = []
    for c in range(k):
        p, t = pred == c, truth == c
        union = np.logical_or(p, t).sum()
        iou.append(None if union == 0 else 100.0 * np.logical_and(p, t).sum() / union)
    present = [v for v in iou if v is not None]
    return float(np.mean(present)), 100.0 * float((pred == truth).mean()), iou


def _batches(k=5, seed=0, absent=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        logits = torch.randn(2, k, 6, 7, generator=g)
        logits[:, absent] = -1e9  # class `absent` is never predicted ...
        y = torch.randint(0, k - 1, (2, 6, 7), generator=g)  # ... and never true (labels 0..k-2)
        y[torch.rand(2, 6, 7, generator=g) < 0.2] = IGNORE
        out.append((logits, y))
    return out


def test_miou_equals_an_independent_computation_and_absent_classes_are_left_out():
    k = 5
    task = get_task("segmentation")
    ev = task.evaluator("cpu", k)
    batches = _batches(k)
    for logits, y in batches:
        ev.update(logits, y)
    got = ev.compute(ev.state())
    pred = np.concatenate([lg.argmax(1).numpy().ravel() for lg, _ in batches])
    truth = np.concatenate([y.numpy().ravel() for _, y in batches])
    miou, acc, iou = _np_scores(pred, truth, k)
    assert iou[4] is None and got["iou"][4] is None  # absent from prediction and truth: no IoU, not in the mean
    assert got["miou"] == pytest.approx(miou, abs=1e-10)
    assert got["pixel_acc"] == pytest.approx(acc, abs=1e-10)
    assert all((a is None and b is None) or a == pytest.approx(b, abs=1e-10) for a, b in zip(got["iou"], iou))
    assert got["count"] == 6
    # the loss is the mean per-pixel cross-entropy over labelled pixels
    ce = torch.cat([F.cross_entropy(lg, y, ignore_index=IGNORE, reduction="none")[y != IGNORE] for lg, y in batches])
    assert got["loss"] == pytest.approx(float(ce.double().mean()), rel=1e-6)


@pytest.mark.slow  # (importing torchmetrics takes ~15 s here)
def test_miou_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    k = 5
    ev = get_task("segmentation").evaluator("cpu", k)
    batches = _batches(k, seed=3)
    for logits, y in batches:
        ev.update(logits, y)
    got = ev.compute(ev.state())
    pred = torch.cat([lg.argmax(1).flatten() for lg, _ in batches])
    truth = torch.cat([y.flatten() for _, y in batches])
    macro = tm.multiclass_jaccard_index(pred, truth, num_classes=k, average="macro", ignore_index=IGNORE)
    assert got["miou"] == pytest.approx(100 * float(macro), abs=1e-4)
    per = tm.multiclass_jaccard_index(pred, truth, num_classes=k, average="none", ignore_index=IGNORE)
    assert [round(v, 4) for v in got["iou"][:4]] == [round(100 * float(v), 4) for v in per[:4]]


def test_scores_of_a_perfect_and_an_empty_matrix():
    assert scores(torch.diag(torch.tensor([3, 0, 5])))["iou"] == [100.0, None, 100.0]
    assert scores(torch.diag(torch.tensor([3, 0, 5])))["miou"] == 100.0
    assert np.isnan(scores(torch.zeros(3, 3, dtype=torch.long))["miou"])


def test_the_tasks_losses():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(4, 7, generator=g), torch.randint(0, 7, (4,), generator=g)
    cls = get_task("classification")
    assert torch.equal(cls.loss(logits, y, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1))
    seg = get_task("segmentation")
    dl, dy = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    dy[0, 0] = IGNORE
    # per pixel, label smoothing per pixel, ignored pixels left out of the mean
    keep = dy != IGNORE
    rows, ty = dl.movedim(1, -1)[keep], dy[keep]
    assert torch.allclose(seg.loss(dl, dy, 0.1), F.cross_entropy(rows, ty, label_smoothing=0.1))
    # logits at a lower resolution are upsampled to the labels'
    small = torch.randn(2, 3, 2, 2, generator=g)
    assert torch.allclose(seg.loss(small, dy), seg.loss(F.interpolate(small, size=(4, 4), mode="bilinear"), dy))
    hits, made = seg.hits(dl, dy)
    assert int(made) == int(keep.sum()) and int(hits) == int(((dl.argmax(1) == dy) & keep).sum())
    assert cls.check(logits) is None and "segmentation model" in seg.check(logits)
    assert "classification model" in cls.check(dl)


def test_per_pixel_kd_is_kd_over_pixels_averaged():
    from tfdistill.losses.kd import kd_loss, per_position

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    rows = [(s[n, :, i, j], t[n, :, i, j]) for n in range(2) for i in range(3) for j in range(4)]
    by_pixel = torch.stack([kd_loss(a[None], b[None], 4.0) for a, b in rows]).mean()
    assert torch.allclose(kd_loss(per_position(s), per_position(t), 4.0), by_pixel, rtol=1e-5)
    flat = torch.randn(3, 5)
    assert per_position(flat) is flat  # classification logits unchanged


def _method(name, student, teacher=None):
    from tfdistill.methods import build_method
    from tfdistill.methods.registry import method_schema

    params = method_schema(name)()
    params.name = name
    return build_method(student, params, example=torch.randn(2, 3, 32, 32), num_classes=3, num_train=8, epochs=1,
                        teacher=teacher, task=get_task("segmentation"))


def test_dense_methods_build_and_others_refuse_in_one_line():
    from tfdistill.models import create_model

    student = create_model("deeplabv3_resnet18", num_classes=3)
    for name in ("ce", "ls", "tfd", "tfd_ls"):
        m = _method(name, student)
        x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
        logits, terms = m(x, y)
        assert logits.shape == (2, 3, 32, 32) and all(torch.isfinite(v) for v in terms.values())
    teacher = create_model("deeplabv3_resnet18", num_classes=3)
    for name, term in (("kd", "kd"), ("fitnet", "fitnet")):
        m = _method(name, student, teacher)
        _, terms = m(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
        assert term in terms and torch.isfinite(terms[term])
    with pytest.raises(ConfigError) as err:
        _method("crd", student, teacher)
    msg = str(err.value)
    assert "does not apply to segmentation" in msg and "per image" in msg and "tfd" in msg and "\n" not in msg


def test_segmentation_models_tap_their_encoder_stages_never_the_head():
    from tfdistill.features import FeatureTap
    from tfdistill.models import create_model
    import torchvision.models as tvm

    x = torch.randn(2, 3, 64, 64)
    m = create_model("deeplabv3_resnet18", num_classes=4)
    assert m(x).shape == (2, 4, 64, 64)
    tap = FeatureTap(m, "auto")
    tap.discover(x)
    assert tap.names == [f"backbone.layer{k}" for k in range(1, 5)]  # layer2..4 all at 1/8: each its own tap
    assert [f.shape[-1] for f in tap(x)[1]] == [16, 8, 8, 8]
    raw = tvm.get_model("deeplabv3_resnet50", weights=None, weights_backbone=None, num_classes=4, aux_loss=False)
    tap = FeatureTap(raw, "auto")  # a plain torchvision model (library use): no classifier tapped
    tap.discover(x)
    assert tap.names == [f"backbone.layer{k}" for k in range(1, 5)]
    lr = create_model("lraspp_mobilenet_v3_large", num_classes=4)
    tap = FeatureTap(lr, "auto")
    tap.discover(x)
    assert tap.names == ["backbone.3", "backbone.6", "backbone.12", "backbone.16"]
    assert not any("classifier" in n for n in tap.names)


def test_smp_models_by_name():
    pytest.importorskip("segmentation_models_pytorch")
    from tfdistill.features import FeatureTap
    from tfdistill.models import create_model

    x = torch.randn(2, 3, 64, 64)
    for arch in ("Unet", "FPN", "DeepLabV3Plus"):
        m = create_model(f"smp.{arch}", num_classes=4)
        tap = FeatureTap(m, "auto")
        tap.discover(x)
        assert tap(x)[0].shape == (2, 4, 64, 64)
        assert tap.names == [f"encoder.layer{k}" for k in range(1, 5)]
    with pytest.raises(ConfigError, match="valid: .*smp.Unet"):
        create_model("smp.Unte", num_classes=4)
    t = FeatureTap(create_model("smp.Unet", num_classes=4, encoder_name="mobilenet_v2"), "auto")
    t.discover(x)  # smp's own declaration: the blocks at its _out_indexes, from stride 4 on
    assert t.names == ["encoder.features.3", "encoder.features.6", "encoder.features.13", "encoder.features.18"]
    with pytest.raises(ConfigError, match=r"DenseNetEncoder .*name the taps: model.taps="):
        t = FeatureTap(create_model("smp.Unet", num_classes=4, encoder_name="densenet121"), "auto")
        t.discover(x)


@pytest.fixture
def cifar_folder(tmp_path):
    """A CIFAR-10-shaped JPEG folder (10 classes, 3 train / 2 test images each): the proxy's on-disk input."""
    from PIL import Image

    g = np.random.default_rng(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in (("train", 3), ("test", 2)):
        for c in classes:
            d = tmp_path / "cifar" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return tmp_path / "cifar"


def _proxy(root, **kw):
    from tfdistill.config import load_config
    from tfdistill.data.segproxy import cifar10_seg

    over = {"proxy_train": 6, "proxy_test": 4, "proxy_canvas": 32, **kw}
    cfg = load_config(None, ["data.name=cifar10_seg", f"data.root={root}", *[f"data.{k}={v}" for k, v in over.items()]])
    return cifar10_seg(cfg.data)


def test_proxy_is_a_function_of_its_data_seed(cifar_folder):
    a, b, c = _proxy(cifar_folder), _proxy(cifar_folder), _proxy(cifar_folder, proxy_seed=1)
    assert a.task == "segmentation" and a.class_names[0] == "background" and len(a.class_names) == 11
    assert a.train.images.shape == (6, 3, 32, 32) and a.train.labels.shape == (6, 32, 32)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.labels, c.train.labels)
    assert int(a.train.labels.max()) <= 10 and (a.train.labels == 0).any() and (a.train.labels > 0).any()


def test_proxy_pastes_images_where_the_mask_says():
    from tfdistill.data.segproxy import compose

    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[1] = 255  # class 7: white; class 3: black
    x, m = compose(images, torch.tensor([3, 7]), 20, 32, 2, torch.Generator().manual_seed(0))
    white, black = m == 8, m == 4
    assert white.any() and black.any()
    assert (x.permute(1, 0, 2, 3)[:, white] == 255).all() and (x.permute(1, 0, 2, 3)[:, black] == 0).all()


def test_flip_moves_masks_with_their_images(cifar_folder):
    from tfdistill.config import load_config
    from tfdistill.data import build_data

    cfg = load_config(None, ["data.name=cifar10_seg", f"data.root={cifar_folder}", "data.proxy_train=8",
                             "data.proxy_test=4", "data.proxy_canvas=32", "data.batch_size=8", "data.augment=[flip]"])
    bundle = build_data(cfg.data, "cpu", seed=0)
    plain = build_data(load_config(None, ["data.name=cifar10_seg", f"data.root={cifar_folder}", "data.proxy_train=8", "data.proxy_test=4",
                                          "data.proxy_canvas=32", "data.batch_size=8", "data.augment=[]"]).data,
                       "cpu", seed=0)
    (x, y, idx), (x0, y0, idx0) = next(iter(bundle.train)), next(iter(plain.train))
    assert torch.equal(idx, idx0)
    assert not torch.equal(x, x0)  # some canvases were flipped
    for i in range(8):
        same = torch.equal(x[i], x0[i])
        assert torch.equal(y[i], y0[i] if same else y0[i].flip(-1))
        assert same or torch.equal(x[i], x0[i].flip(-1))
    with pytest.raises(ConfigError, match="only 'scale_crop' and 'flip'"):
        build_data(load_config(None, ["data.name=cifar10_seg", f"data.root={cifar_folder}", "data.proxy_train=8",
                                      "data.proxy_canvas=32", "data.augment=[crop,flip]"]).data, "cpu")


@pytest.mark.slow
def test_train_and_eval_a_segmentation_run_end_to_end(cifar_folder, tmp_path):
    out = tmp_path / "runs"
    args = ["train", "data.name=cifar10_seg", f"data.root={cifar_folder}", "data.proxy_train=16", "data.proxy_test=8",
            "data.proxy_canvas=32", "data.augment=[flip]", "data.batch_size=8", "data.eval_batch_size=8",
            "model.name=lraspp_mobilenet_v3_large", "method.name=tfd", "epochs=2", "engine.progress=false",
            "optim.lr=0.01", f"out_dir={out}"]
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-2000:]
    run = next(out.iterdir())
    s = json.loads((run / "summary.json").read_text())
    assert s["primary_metric"] == "miou" and "best_top1" not in s
    assert {"best_miou", "last_miou", "last_pixel_acc", "last_iou", "best_epoch"} <= set(s)
    assert len(s["last_iou"]) == 11
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"test_miou", "test_pixel_acc", "test_iou", "best_miou"} <= set(r) for r in rows)
    assert rows[-1]["test_miou"] == s["last_miou"]
    assert "tfd_depth" in rows[0]["terms"] and "backbone.16" in (run / "train.log").read_text()
    ev = run_cli(["eval", str(run), "--json"])
    assert ev.returncode == 0, ev.stderr[-2000:]
    got = json.loads(ev.stdout.strip().splitlines()[-1])
    assert got["primary_metric"] == "miou" and got["miou"] == pytest.approx(s["best_miou"])  # best.pt again
    bad = run_cli([*args[:-1], "method.name=crd", f"out_dir={tmp_path / 'bad'}"])
    assert bad.returncode != 0 and "does not apply to segmentation" in bad.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def _seg_cfg(root, out, *extra):
    from tfdistill.config import load_config

    return load_config(None, ["data.name=cifar10_seg", f"data.root={root}", "data.proxy_train=16", "data.proxy_test=8",
                              "data.proxy_canvas=32", "data.augment=[flip]", "data.batch_size=8",
                              "data.eval_batch_size=8", "model.name=lraspp_mobilenet_v3_large", "method.name=tfd",
                              "epochs=2", "engine.progress=false", "engine.tensorboard=false", "engine.device=cpu",
                              "optim.lr=0.01", "schedule.name=cosine", f"out_dir={out}", *extra])


def _weights(run_dir):
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def _rows(run_dir):
    drop = ("time", "epoch_seconds", "images_per_sec", "group_images_per_sec", "packed")
    return [{k: v for k, v in json.loads(r).items() if k not in drop}
            for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_segmentation_packed_seeds_equal_runs_alone_and_resume_is_bit_exact(cifar_folder, tmp_path, monkeypatch):
    from tfdistill import train

    from conftest import interrupt_in_epoch

    packed = train(_seg_cfg(cifar_folder, tmp_path / "packed", "seeds=[0,1]"), echo=lambda s: None)
    alone = [train(_seg_cfg(cifar_folder, tmp_path / f"alone{s}", f"seed={s}"), echo=lambda s: None) for s in (0, 1)]
    for p, a in zip(packed, alone):
        assert _rows(p.run_dir) == _rows(a.run_dir)
        wp, wa = _weights(p.run_dir), _weights(a.run_dir)
        assert all(torch.equal(wp[k], wa[k]) for k in wa)
        assert p.summary["best_miou"] == a.summary["best_miou"]
    # interrupted after epoch 1, resumed: the same bits as the run that went through
    restore = interrupt_in_epoch(monkeypatch, 1)
    cfg = _seg_cfg(cifar_folder, tmp_path / "resumed", "seed=0")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, echo=lambda s: None)
    restore()
    res = train(cfg, resume=True, echo=lambda s: None)
    assert _rows(res.run_dir) == _rows(alone[0].run_dir)
    w, w0 = _weights(res.run_dir), _weights(alone[0].run_dir)
    assert all(torch.equal(w[k], w0[k]) for k in w0)


@pytest.mark.slow
def test_segmentation_cli_resume_after_sigkill_is_bit_exact(cifar_folder, tmp_path):
    """`tfdistill train` on the proxy, SIGKILLed (nothing can run) once its first checkpoint is on disk: nothing is
    half-written, and `tfdistill train --resume RUN` ends with the metrics rows and weights of the run that went
    through."""
    import os
    import subprocess
    import sys
    import time

    from conftest import REPO

    args = ["train", "data.name=cifar10_seg", f"data.root={cifar_folder}", "data.proxy_train=16",
            "data.proxy_test=8", "data.proxy_canvas=32", "data.augment=[flip]", "data.batch_size=8",
            "data.eval_batch_size=8", "model.name=lraspp_mobilenet_v3_large", "method.name=tfd", "epochs=4",
            "engine.progress=false", "engine.tensorboard=false", "engine.device=cpu", "optim.lr=0.01", "name=r"]
    ref = run_cli([*args, f"out_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "runs"
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "tfdistill", *args, f"out_dir={out}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "r" / "last.pt").is_file():
        assert proc.poll() is None, f"ended early (exit {proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -9 and not (out / "r" / "summary.json").exists()
    assert len(_rows(out / "r")) < 4  # killed before the end
    res = run_cli(["train", "--resume", str(out / "r")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert _rows(out / "r") == _rows(tmp_path / "ref" / "r")
    w, w0 = _weights(out / "r"), _weights(tmp_path / "ref" / "r")
    assert w.keys() == w0.keys() and all(torch.equal(w[k], w0[k]) for k in w0)
    s, s0 = (json.loads((d / "summary.json").read_text()) for d in (out / "r", tmp_path / "ref" / "r"))
    assert (s["best_miou"], s["last_miou"], s["last_iou"]) == (s0["best_miou"], s0["last_miou"], s0["last_iou"])


@pytest.mark.slow
def test_segmentation_sweep_packed_equals_alone_and_reports_miou(cifar_folder, tmp_path):
    """`tfdistill sweep` of CE and TFD x 2 seeds on the proxy, packed into one process (--pack 4) and run one by one
    (--pack 1): every run's rows and weights are equal; `tfdistill report` tabulates mIoU with the gain's intervals."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("\n".join([
        "name: segs", "recipe: seg_proxy/lraspp", f"out_dir: {tmp_path / 'unused'}",
        "models: [lraspp_mobilenet_v3_large]", "seeds: [0, 1]", "overrides:",
        f"  - data.root={cifar_folder}", "  - data.proxy_train=16", "  - data.proxy_test=8",
        "  - data.proxy_canvas=32", "  - data.batch_size=8", "  - data.eval_batch_size=8", "  - epochs=2",
        "  - engine.progress=false", "  - engine.tensorboard=false", "  - engine.device=cpu",
        "grid:", "  - {methods: [ce, tfd]}", ""]))
    for pack in (4, 1):
        res = run_cli(["sweep", str(spec), "--pack", str(pack), "--out-dir", str(tmp_path / f"pack{pack}")],
                      timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "pack1" / "segs").iterdir() if (p / "summary.json").is_file())
    assert len(names) == 4, names
    for n in names:
        a, b = tmp_path / "pack4" / "segs" / n, tmp_path / "pack1" / "segs" / n
        assert _rows(a) == _rows(b), n
        wa, wb = _weights(a), _weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wb), n
    assert any(r.get("packed") for r in (json.loads(x) for x in
               (tmp_path / "pack4" / "segs" / names[0] / "metrics.jsonl").read_text().splitlines()))
    rep = run_cli(["report", str(tmp_path / "pack1" / "segs"), "--no-plots"])
    assert rep.returncode == 0, rep.stderr[-2000:]
    text = (tmp_path / "pack1" / "segs" / "report" / "report.md").read_text()
    assert "### cifar10_seg: last-epoch mIoU (%), mean ± std" in text and "top-1 (%)" not in text
    groups = json.loads((tmp_path / "pack1" / "segs" / "report" / "report.json").read_text())["sections"][0]["groups"]
    tfd = next(g for g in groups if g["method"] == "tfd")
    assert tfd["metric"] == "miou" and tfd["n"] == 2 and tfd["paired_last_pairs"] == 2, tfd


def test_bn_momentum_of_the_segmentation_models():
    from tfdistill.models import create_model

    bns = lambda m: {x.momentum for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)}  # noqa: E731
    assert bns(create_model("lraspp_mobilenet_v3_large", num_classes=3)) == {0.1, 0.01}  # torchvision's own
    assert bns(create_model("lraspp_mobilenet_v3_large", num_classes=3, bn_momentum=0.1)) == {0.1}
    assert bns(create_model("deeplabv3_resnet18", num_classes=3, bn_momentum=0.05)) == {0.05}
    with pytest.raises(ConfigError, match="bn_momentum must be a number in"):
        create_model("fcn_resnet50", num_classes=3, bn_momentum=2)
    with pytest.raises(ConfigError, match="output_stride must be 8 or 16"):
        create_model("deeplabv3_resnet18", num_classes=3, output_stride=4)


def test_a_run_written_before_the_proxy_keys_existed_still_resumes():
    import copy

    from tfdistill.config import load_config, to_dict
    from tfdistill.runs import resume_changes

    new = to_dict(load_config(None, ["data.name=synthetic"]))
    old = copy.deepcopy(new)
    for k in [k for k in old["data"] if k.startswith("proxy_")]:
        del old["data"][k]  # its config.yaml predates data.proxy_*
    assert resume_changes(old, new) == []  # their defaults: trained as they say
    new["data"]["proxy_seed"] = 3
    assert resume_changes(old, new) == ["data.proxy_seed"]


def test_poly_schedule():
    from types import SimpleNamespace

    from tfdistill.config import load_config
    from tfdistill.engine.schedule import lr_factor

    s = SimpleNamespace(name="poly", power=0.9, warmup_epochs=0, warmup_factor=0.1)
    f = [lr_factor(k, epochs=2, steps_per_epoch=5, schedule=s) for k in (0, 5, 10)]
    assert f == [1.0, 0.5 ** 0.9, 0.0]
    assert load_config(None, ["schedule.name=poly", "schedule.power=1.0"]).schedule.power == 1.0
    with pytest.raises(ConfigError, match="poly"):
        load_config(None, ["schedule.name=polly"])


def test_sliding_window_evaluation():
    from tfdistill.tasks.segmentation import sliding_logits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, 14, generator=g)
    pointwise = torch.nn.Conv2d(3, 4, 1)  # per pixel: any tiling gives the whole image's logits
    with torch.no_grad():
        whole = pointwise(x)
        for window, stride in (((5, 6), (3, 4)), ((11, 14), (1, 1)), ((4, 20), (4, 7)), ((3, 3), (3, 3))):
            assert torch.allclose(sliding_logits(pointwise, x, window, stride), whole, atol=1e-6)

    class Mean(torch.nn.Module):  # the window's mean: shows which windows covered each pixel
        def forward(self, t):
            return t[:, :1].mean((2, 3), keepdim=True).expand(-1, -1, *t.shape[-2:])

    ones = torch.ones(1, 3, 4, 6)
    ones[..., 3:] = 3.0
    out = sliding_logits(Mean(), ones, (4, 3), (4, 3))  # two windows side by side: 1 and 3
    assert torch.equal(out[0, 0, :, :3], torch.ones(4, 3)) and torch.equal(out[0, 0, :, 3:], torch.full((4, 3), 3.0))
    seg = get_task("segmentation", window=(5, 6))
    assert seg.stride == (3, 4)
    with torch.no_grad():
        assert torch.allclose(seg.predict(pointwise, x), whole, atol=1e-6)
    assert get_task("segmentation").predict(pointwise, x) is not None
    with pytest.raises(TypeError):
        get_task("classification", window=(3, 3))


def test_eval_window_reaches_the_task(cifar_folder):
    from tfdistill.config import load_config
    from tfdistill.data import build_data

    over = ["data.name=cifar10_seg", f"data.root={cifar_folder}", "data.proxy_train=8", "data.proxy_test=4",
            "data.proxy_canvas=32", "data.batch_size=4", "data.augment=[flip]"]
    assert build_data(load_config(None, over).data, "cpu").task_options == {}
    b = build_data(load_config(None, [*over, "data.eval_window=[16]", "data.eval_stride=[8,12]"]).data, "cpu")
    assert b.task_options == {"window": (16, 16), "stride": (8, 12)}
