"""``tfdistill cam``: Grad-CAM++ (pytorch-grad-cam) of the last stage, checkpoints side by side."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from tfdistill.cam import MissingDependencyError, cam_grid
from tfdistill.cli import main
from tfdistill.config import load_config
from tfdistill.engine import load_checkpoint, train
from tfdistill.errors import ConfigError

pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny resnet8 runs of one epoch on synthetic data (CE seed 0, TFD seed 1), and a 5-class one."""
    out = tmp_path_factory.mktemp("cam_runs")
    base = [*TINY, "data.synthetic_train=256", f"out_dir={out}", "engine.tensorboard=false"]
    ce = train(load_config(None, [*base, "name=ce"]), echo=lambda s: None).run_dir / "best.pt"
    tfd = train(load_config(None, [*base, "name=tfd", "method.name=tfd", "seed=1"]), echo=lambda s: None).run_dir
    five = train(load_config(None, [*base, "name=five", "data.synthetic_classes=5", "data.synthetic_train=64"]),
                 echo=lambda s: None).run_dir
    return ce, tfd / "best.pt", five / "best.pt"


def test_grid_over_the_checkpoints_test_split(ckpts, tmp_path):
    ce, tfd, _ = ckpts
    g = cam_grid([ce, tfd], "test", num=4, out=tmp_path / "grid.png", labels=["CE", "TFD"], device="cpu")
    assert g.layers == ["layer3", "layer3"]  # the last stage of a CIFAR ResNet by the feature-tap rule
    assert g.labels == ["CE", "TFD"]
    # 4 images evenly spaced over the checkpoint's 64-image synthetic test split
    from tfdistill.data.build import load_source

    src = load_source(load_config(None, [*TINY, "data.synthetic_train=256"]).data)
    idx = [0, 21, 42, 63]
    assert g.true == [int(src.test.labels[i]) for i in idx]
    assert g.class_names == list(src.class_names)
    for k, path in enumerate((ce, tfd)):
        maps = g.maps[k]
        assert maps.shape == (4, 32, 32) and maps.min() >= 0.0 and maps.max() <= 1.0
        assert all(float(m.max() - m.min()) > 0.1 for m in maps)  # a real map, not a constant
        # the predictions shown are the model's own
        from tfdistill.cam import _normalise, _view, load_checkpoint_model

        lm = load_checkpoint_model(path)
        x = _normalise([_view(src.test.load(i), lm.data) for i in idx], lm.data)
        with torch.no_grad():
            assert lm.model(x).argmax(1).tolist() == g.predicted[k]
    assert not np.allclose(g.maps[0], g.maps[1])  # two different networks, two different maps
    img = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    h, w, _ = img.shape
    assert 1.2 < h / w < 1.8  # 4 rows x 3 columns (input + 2 overlays) plus the titles
    assert img.std() > 20  # not blank


def test_cli_folder_of_images_true_target_and_old_checkpoints(ckpts, tmp_path, capsys):
    """A folder with class-named subfolders gives true labels; checkpoints without the stored data facts work
    (the dataset pipeline is rebuilt from their config)."""
    ce, tfd, _ = ckpts
    rng = np.random.default_rng(0)
    for c in ("class0", "class3", "unknown"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)  # not 32x32: resized + centre-cropped
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    old = load_checkpoint(tfd)
    del old["meta"]["data"]
    torch.save(old, tmp_path / "old.pt")
    out = tmp_path / "sub" / "cli.png"
    rc = main(["cam", "--checkpoint", str(ce), "--checkpoint", str(tmp_path / "old.pt"), "--images",
               str(tmp_path / "imgs"), "--num", "4", "--out", str(out), "--device", "cpu"])
    assert rc == 0 and out.is_file()
    assert "Grad-CAM++ of layer3, layer3 for 4 images x 2 checkpoints" in capsys.readouterr().out
    g = cam_grid([ce, tmp_path / "old.pt"], str(tmp_path / "imgs"), num=4, out=tmp_path / "g.png", device="cpu")
    assert g.true == [0, 3, 3, -1]  # files 0, 2, 3, 5 of the sorted 6; "unknown" is no class
    with pytest.raises(Exception, match="--target true needs the true label"):
        cam_grid([ce], str(tmp_path / "imgs"), num=6, out=tmp_path / "t.png", target="true", device="cpu")
    g = cam_grid([ce], str(tmp_path / "imgs" / "class3"), num=2, out=tmp_path / "t.png", target="true", device="cpu")
    assert g.true == [3, 3]


def test_clear_errors(ckpts, tmp_path, monkeypatch, capsys):
    ce, _, five = ckpts
    with pytest.raises(ConfigError, match="disagree on the number of classes"):
        cam_grid([ce, five], "test", num=2, out=tmp_path / "x.png", device="cpu")
    assert main(["cam", "--checkpoint", str(ce), "--images", str(tmp_path / "nope.d"), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "no such folder" in capsys.readouterr().err
    # grad-cam not installed: one line telling how to get it
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'tfdistill\[cam\]'"):
        cam_grid([ce], "test", num=2, out=tmp_path / "x.png")
    assert main(["cam", "--checkpoint", str(ce), "--images", "test", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grad-cam" in err[0] and "tfdistill[cam]" in err[0]


@pytest.mark.parametrize("name", ["grid.txt", "best.pt"])
def test_an_output_that_is_no_image_format_is_refused_before_any_work(tmp_path, capsys, name):
    """#29: `--out grid.txt` (or a checkpoint's name) was a raw traceback after the whole computation."""
    out = tmp_path / name
    out.write_text("precious")
    rc = main(["cam", "--checkpoint", str(tmp_path / "missing.pt"), "--images", "test", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    suffix = name[name.index("."):]
    assert err[0].startswith(f"tfdistill: error: --out {out}: '{suffix}' is not an image format; give a file ending in")
    assert ".png" in err[0] and ".pdf" in err[0] and "missing.pt" not in err[0]  # checked first
    assert out.read_text() == "precious"


def test_an_output_without_extension_gets_png_and_says_so(ckpts, tmp_path, capsys):
    ce, _, _ = ckpts
    rc = main(["cam", "--checkpoint", str(ce), "--images", "test", "--num", "2", "--out", str(tmp_path / "name"),
               "--device", "cpu"])
    assert rc == 0 and (tmp_path / "name.png").is_file() and not (tmp_path / "name").exists()
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'name.png'}: Grad-CAM++ of layer3")
