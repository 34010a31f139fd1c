"""The ImageNet path end to end on a tiny generated ImageFolder: the shipped recipes (torchvision ResNet18
student, ResNet34 teacher), RandomResizedCrop/flip training and resize/center-crop evaluation through the
DataLoader with workers, bf16 autocast + channels_last (on the CPU here), teachers from torchvision-format
state_dict files, and no download at run time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli

CLASSES = ("ant", "bee", "cat")
IMAGE_SIZE = 64  # training/eval resolution; eval resizes the shorter side to 64 * 256 / 224 = 73 first


def make_imagefolder(root: Path, per_class: dict[str, int]) -> Path:
    """``root/{train,val}/<class>/*.png``: 80-96 px images (larger than 64 px, so the folder takes the ImageNet-like
    DataLoader path), each class a different colour plus noise, so one epoch can learn something."""
    rng = np.random.default_rng(0)
    colours = {"ant": (200, 40, 40), "bee": (40, 200, 40), "cat": (40, 40, 200)}
    for split, n in per_class.items():
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(80, 97)), int(rng.integers(80, 97))
                img = np.clip(rng.normal(colours[c], 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{c}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imagenet_tiny"), {"train": 8, "val": 4})


def tiny_imagenet(folder: Path, out: Path, name: str) -> list[str]:
    return [f"data.root={folder}", "epochs=1", "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=2",
            f"data.image_size={IMAGE_SIZE}", "engine.device=cpu", "engine.progress=false", "engine.tensorboard=false",
            f"out_dir={out}", f"name={name}"]


def _env(tmp_path: Path) -> dict:
    # an empty torch hub cache: a download attempt would have to write there (and fail offline)
    return {"TORCH_HOME": str(tmp_path / "torch_home"), "OMP_NUM_THREADS": "2"}


def test_recipe_data_pipeline_is_the_imagenet_one(folder):
    """The recipe builds torchvision-style transforms over the folder, with DataLoader workers."""
    from torchvision.transforms import v2

    from tfdistill.config import load_config
    from tfdistill.data import build_data

    cfg = load_config(REPO / "configs" / "imagenet" / "resnet18_tfd.yaml",
                      tiny_imagenet(folder, Path("unused"), "x"))
    assert cfg.engine.precision == "bf16" and cfg.engine.channels_last and cfg.model.name == "torchvision.resnet18"
    data = build_data(cfg.data, "cpu", seed=0, channels_last=True)
    assert data.loader == "dataloader" and data.num_classes == 3 and data.class_names == list(CLASSES)
    assert data.mean == pytest.approx((0.485, 0.456, 0.406)) and data.image_size == IMAGE_SIZE
    train_ops = [type(t) for t in data.train.dataset.transform.transforms]
    assert v2.RandomResizedCrop in train_ops and v2.RandomHorizontalFlip in train_ops
    eval_ops = data.test.dataset.transform.transforms
    assert isinstance(eval_ops[0], v2.Resize) and eval_ops[0].size == [int(IMAGE_SIZE * 256 / 224)]
    assert isinstance(eval_ops[1], v2.CenterCrop) and list(eval_ops[1].size) == [IMAGE_SIZE, IMAGE_SIZE]
    loader = data.train._dataloader()
    assert loader.num_workers == 2 and loader.pin_memory is False  # pinned memory only when training on CUDA
    x, y, idx = next(iter(data.train))
    assert x.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    xt, _, _ = next(iter(data.test))
    assert xt.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)


def test_resnet18_tfd_recipe_end_to_end(folder, tmp_path):
    """``tfdistill train configs/imagenet/resnet18_tfd.yaml`` (bf16 autocast + channels_last on the CPU)."""
    proc = run_cli(["train", str(REPO / "configs/imagenet/resnet18_tfd.yaml"),
                    *tiny_imagenet(folder, tmp_path / "runs", "tfd")], env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tfd"
    s = json.loads((run / "summary.json").read_text())
    assert s["precision"] == "bf16" and s["model"] == "torchvision.resnet18" and s["method"] == "tfd"
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row["terms"]) == {"ce", "tfd_depth", "tfd_width"}
    assert all(np.isfinite(v) for v in row["terms"].values())
    assert s["method_info"]["student_taps"] == ["layer1", "layer2", "layer3", "layer4"]
    assert not (tmp_path / "torch_home").exists()  # nothing was downloaded
    # the checkpoint is a plain torchvision resnet18 state_dict inside
    ck = torch.load(run / "best.pt", weights_only=True)
    import torchvision

    torchvision.models.resnet18(num_classes=3).load_state_dict(ck["model"])


def test_kd_recipe_with_a_torchvision_format_teacher_file(folder, tmp_path):
    """A teacher from a torchvision-format file (plain state_dict, as resnet34-b627a593.pth), no download."""
    import torchvision

    teacher_file = tmp_path / "resnet34-b627a593.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), teacher_file)
    proc = run_cli(["train", str(REPO / "configs/imagenet/resnet18_kd.yaml"),
                    *tiny_imagenet(folder, tmp_path / "runs", "kd"), f"teacher.checkpoint={teacher_file}",
                    "engine.precision=fp32"], env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "runs" / "kd" / "summary.json").read_text())
    assert s["method"] == "kd"
    row = json.loads((tmp_path / "runs" / "kd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row["terms"]) == {"ce", "kd"} and row["terms"]["kd"] > 0
    assert not (tmp_path / "torch_home").exists()



def test_kd_recipe_default_teacher_path_is_an_error_not_a_download(folder, tmp_path, monkeypatch):
    from tfdistill.config import load_config
    from tfdistill.engine import train
    from tfdistill.errors import CheckpointError

    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    cfg = load_config(REPO / "configs/imagenet/resnet18_kd.yaml", tiny_imagenet(folder, tmp_path / "runs", "kd"))
    assert cfg.teacher.checkpoint == os.path.abspath("checkpoints/resnet34-b627a593.pth")  # stored absolute
    with pytest.raises(CheckpointError, match="checkpoint not found: .*/checkpoints/resnet34-b627a593.pth"):
        train(cfg, echo=lambda s: None)


def test_torchvision_weight_files_load(tmp_path, monkeypatch):
    """torchvision's ImageNet weight files are plain state_dicts (1000 classes): they load through
    ``load_model_weights``; ``torchvision:<Weights>`` resolves to the torch hub cache and uses a cached file
    without any network access; a class-count mismatch is explained."""
    import torchvision

    from tfdistill.engine.checkpoint import load_model_weights
    from tfdistill.engine.build import weights_file
    from tfdistill.errors import CheckpointError, ConfigError
    from tfdistill.models import create_model

    hub = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    ref = torchvision.models.resnet18()  # 1000 classes, torchvision's key names
    torch.save(ref.state_dict(), cached)

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    path = weights_file("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert Path(path) == cached
    assert weights_file(str(cached)) == str(cached)  # a path stays a path
    model = create_model("torchvision.resnet18", num_classes=1000)
    load_model_weights(model, path, what="teacher")
    assert torch.equal(model.fc.weight, ref.fc.weight)
    with pytest.raises(CheckpointError, match="trained for 1000 classes, this run has 3"):
        load_model_weights(create_model("torchvision.resnet18", num_classes=3), path, what="teacher")
    with pytest.raises(ConfigError, match="unknown torchvision weights"):
        weights_file("torchvision:ResNet18_Weights.NOPE")
    os.remove(cached)
    with pytest.raises(CheckpointError, match="could not download .*tried to download.*fetch it by hand"):
        weights_file("torchvision:ResNet18_Weights.IMAGENET1K_V1")  # missing file + explicit spec -> download
