"""Grad-CAM++ maps of the last stage, several checkpoints side by side (the paper's Figure 3).

>>> grid = cam_grid(["runs/ce/best.pt", "runs/tfd/best.pt"], "test", num=8, out="grid.png", labels=["CE", "TFD"])

Each checkpoint's model is rebuilt from the config stored in it (as :func:`tfdistill.evaluate.evaluate_checkpoint`
does); its last stage is the deepest module of the feature-tap "auto" rule (``find_stages(model, x)[-1]``:
``layer3`` of a CIFAR ResNet, ``layer4`` of a torchvision ResNet). The maps come from ``pytorch_grad_cam``'s
``GradCAMPlusPlus`` (the ``grad-cam`` package, ``pip install tfdistill[cam]``), for the predicted class or, with
``target="true"``, the true one. The grid has one row per image and the columns *input*, then one overlay per
checkpoint, titled with the predicted class (green when right, red when wrong) and its probability.

Images: ``images`` is a folder of image files (searched recursively; a parent folder named after a class gives
the true label, as in an ImageFolder tree), or ``"test"`` / ``"train"`` (that split of the first checkpoint's
dataset), or a dataset name (its test split, e.g. ``cifar100``; ``data.*`` of the first checkpoint's config
otherwise). ``num`` images are picked deterministically, evenly spaced over the sorted files / the split. Every
checkpoint sees the same images, preprocessed the way its own evaluation was (resolution, resize + centre crop,
normalisation; stored in checkpoints since this version, else rebuilt from the checkpoint's dataset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError, DataError, TfdError

__all__ = ["CamGrid", "cam_grid", "load_checkpoint_model", "last_stage", "output_path"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("test", "train")


class MissingDependencyError(TfdError, ImportError):
    """An optional dependency is not installed."""


def _require_grad_cam():
    try:
        import pytorch_grad_cam  # noqa: F401
        from pytorch_grad_cam import GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise MissingDependencyError("tfdistill cam needs the grad-cam package: pip install 'tfdistill[cam]' "
                                     "(or pip install grad-cam)") from None
    return GradCAMPlusPlus, ClassifierOutputTarget


# ----------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    path: str
    model: nn.Module
    cfg: Any
    num_classes: int
    data: dict
    """``image_size``, ``eval_resize``, ``mean``, ``std``, ``class_names``, ``name`` (see ``engine.build.data_meta``)."""
    label: str = ""


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model of a ``tfdistill train`` checkpoint, in eval mode on ``device``, with how its inputs were made."""
    from omegaconf import OmegaConf

    from .config import build_config
    from .engine.checkpoint import checkpoint_in, load_checkpoint, load_model_weights
    from .models import create_model

    path = checkpoint_in(path)  # a run directory: its best.pt (else last.pt)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config_yaml"), str) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a tfdistill checkpoint (no stored config); Grad-CAM needs one written "
                              f"by tfdistill train (best.pt / last.pt)")
    cfg = build_config(OmegaConf.create(ckpt["config_yaml"]))
    meta = ckpt.get("meta") or {}
    data = meta.get("data")
    if not isinstance(data, dict):  # older checkpoints: rebuild the dataset pipeline to learn it
        from .data import build_data
        from .engine.build import data_meta

        data = data_meta(build_data(cfg.data, "cpu", seed=int(cfg.seed)))
    num_classes = int(meta.get("num_classes") or cfg.model.num_classes or len(data["class_names"]))
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.dropout:
        kwargs["dropout"] = cfg.model.dropout
    model = create_model(cfg.model.name, num_classes=num_classes, **kwargs)
    load_model_weights(model, path)
    model.to(device).eval()
    label = f"{cfg.model.name} / {cfg.method.name}"
    return LoadedModel(str(path), model, cfg, num_classes, dict(data), label)


def last_stage(model: nn.Module, example: torch.Tensor) -> tuple[str, nn.Module]:
    """The deepest stage of the feature-tap "auto" rule: the layer whose Grad-CAM++ map is drawn."""
    from .features import find_stages

    stages = find_stages(model, example)
    if not stages:
        raise ConfigError(f"found no stage (a module with a spatial output) in {type(model).__name__}")
    return stages[-1], model.get_submodule(stages[-1])


# ----------------------------------------------------------------------------------------------- images
@dataclass
class Picked:
    images: list[Any]
    """PIL images or uint8 (3,H,W) tensors, as the source holds them."""
    labels: list[int]
    """True labels (-1: unknown)."""
    names: list[str]
    class_names: list[str]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices evenly spaced over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def pick_images(spec: str, num: int, first: LoadedModel) -> Picked:
    """The ``num`` images of ``spec`` (a folder, a split name or a dataset name; see the module docs)."""
    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    class_names = list(first.data.get("class_names") or [])
    p = Path(spec)
    if p.is_dir():
        from PIL import Image

        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {p}")
        chosen = [files[i] for i in _spread(len(files), num)]
        index = {c: i for i, c in enumerate(class_names)}
        images = []
        for f in chosen:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        labels = [index.get(f.parent.name, -1) for f in chosen]
        return Picked(images, labels, [str(f.relative_to(p)) for f in chosen], class_names)
    if p.suffix or "/" in spec or "\\" in spec:
        raise DataError(f"--images {spec!r}: no such folder (nor a split name {SPLITS} or a dataset name)")

    from omegaconf import OmegaConf

    from .config import build_config
    from .data.build import load_source

    raw = OmegaConf.create(OmegaConf.to_container(first.cfg, resolve=True))
    split_name = spec if spec in SPLITS else "test"
    if spec not in SPLITS:
        raw.data.name = spec
    for key in ("train_subset", "test_subset"):
        raw.data[key] = 0
    src = load_source(build_config(raw).data)
    split = src.train if split_name == "train" else src.test
    idx = _spread(len(split), num)
    images = [split.load(i) for i in idx]
    labels = [int(split.labels[i]) for i in idx]
    return Picked(images, labels, [f"{src.name}/{split_name}[{i}]" for i in idx], list(src.class_names))


def _view(img: Any, data: dict) -> torch.Tensor:
    """uint8 (3,S,S): the checkpoint's evaluation view (shorter side to eval_resize, centre crop to image_size)."""
    from torchvision.transforms.v2 import functional as F

    size, resize = int(data["image_size"]), int(data.get("eval_resize") or data["image_size"])
    x = F.pil_to_tensor(img) if not isinstance(img, torch.Tensor) else img
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        x = F.resize(x, resize, antialias=True)
        x = F.center_crop(x, [size, size])
    return x.as_subclass(torch.Tensor).contiguous()


def _normalise(views: list[torch.Tensor], data: dict) -> torch.Tensor:
    x = torch.stack(views).float() / 255.0
    mean = torch.tensor(data["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------- the grid
@dataclass
class CamGrid:
    path: Path
    labels: list[str]
    """Column title of each checkpoint."""
    layers: list[str]
    """The stage drawn for each checkpoint."""
    true: list[int]
    predicted: list[list[int]]
    """Per checkpoint, the predicted class of each image."""
    probability: list[list[float]]
    maps: list[np.ndarray] = field(repr=False, default_factory=list)
    """Per checkpoint, (N, S, S) Grad-CAM++ maps in [0, 1]."""
    class_names: list[str] = field(default_factory=list)


def _class_name(c: int, names: Sequence[str]) -> str:
    if c < 0:
        return "?"
    return str(names[c]) if c < len(names) else str(c)


def cam_grid(checkpoints: Sequence[str | Path], images: str, *, num: int = 8, out: str | Path = "grid.png",
             labels: Sequence[str] | None = None, target: str = "pred", device: str = "auto") -> CamGrid:
    """Grad-CAM++ maps of each checkpoint's last stage over the same ``num`` images, written as a grid PNG (or
    another image format matplotlib writes, by ``out``'s extension; none: ``.png`` is added)."""
    out = output_path(out)  # before any work
    GradCAMPlusPlus, ClassifierOutputTarget = _require_grad_cam()
    from .engine.build import resolve_device

    if not checkpoints:
        raise ConfigError("give at least one --checkpoint")
    if target not in ("pred", "true"):
        raise ConfigError(f"--target must be 'pred' or 'true', got {target!r}")
    if labels is not None and len(labels) != len(checkpoints):
        raise ConfigError(f"--labels has {len(labels)} names for {len(checkpoints)} checkpoints")
    dev = resolve_device(device)
    models = [load_checkpoint_model(c, dev) for c in checkpoints]
    classes = {m.num_classes for m in models}
    if len(classes) > 1:
        detail = ", ".join(f"{m.path}: {m.num_classes}" for m in models)
        raise ConfigError(f"the checkpoints disagree on the number of classes ({detail}); their maps cannot be "
                          f"compared over the same images")
    num_classes = classes.pop()
    picked = pick_images(images, num, models[0])
    names = picked.class_names or list(models[0].data.get("class_names") or [])
    if target == "true" and any(y < 0 for y in picked.labels):
        raise DataError("--target true needs the true label of every image (class-named subfolders or a dataset)")
    if any(y >= num_classes for y in picked.labels):
        raise DataError(f"the images' labels go up to {max(picked.labels)}, but the models have {num_classes} classes")

    display = torch.stack([_view(im, models[0].data) for im in picked.images])  # (N,3,S,S) uint8, first model's view
    result = CamGrid(Path(out), [], [], list(picked.labels), [], [], [], names)
    for k, m in enumerate(models):
        views = [_view(im, m.data) for im in picked.images]
        x = _normalise(views, m.data).to(dev)
        layer_name, layer = last_stage(m.model, x[:1])
        with torch.no_grad():
            prob = torch.softmax(m.model(x).float(), dim=1).cpu()
        pred = prob.argmax(1)
        tgt = torch.tensor(picked.labels) if target == "true" else pred
        with GradCAMPlusPlus(model=m.model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in tgt])
        if maps.shape[-2:] != tuple(display.shape[-2:]):
            t = torch.from_numpy(maps).unsqueeze(1)
            maps = torch.nn.functional.interpolate(t, size=tuple(display.shape[-2:]), mode="bilinear",
                                                   align_corners=False).squeeze(1).clamp(0, 1).numpy()
        result.labels.append(labels[k] if labels is not None else f"{m.label}\n{_short(m.path)}")
        result.layers.append(layer_name)
        result.predicted.append(pred.tolist())
        result.probability.append(prob.gather(1, pred[:, None]).squeeze(1).tolist())
        result.maps.append(np.asarray(maps, dtype=np.float32))
    _draw(result, display, picked, target)
    return result


def output_path(out: str | Path) -> Path:
    """The grid's file: ``out`` if matplotlib writes its format, ``out.png`` if it has no extension; anything else
    (``grid.txt``, ``best.pt``) is a :class:`ConfigError` naming the formats."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(out)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.suffix[1:].lower() not in formats:
        raise ConfigError(f"--out {out}: {path.suffix!r} is not an image format; give a file ending in one of "
                          f"{', '.join('.' + f for f in formats)} (e.g. grid.png)")
    return path


def _short(path: str, width: int = 24) -> str:
    """``run_name/best.pt``, shortened in the middle to fit a column."""
    p = Path(path)
    text = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
    if len(text) > width:
        half = (width - 1) // 2
        text = text[:half] + "\u2026" + text[-(width - 1 - half):]
    return text


def _draw(g: CamGrid, display: torch.Tensor, picked: Picked, target: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = display.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    n, cols = rgb.shape[0], 1 + len(g.maps)
    cell = 2.0
    fig = Figure(figsize=(cell * cols, (cell + 0.3) * n + 0.8), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    names = g.class_names
    for i in range(n):
        ax = axes[i][0]
        ax.imshow(rgb[i], interpolation="bilinear")
        ax.set_xlabel(f"true: {_class_name(g.true[i], names)}", fontsize=9)
        for k in range(len(g.maps)):
            ax = axes[i][k + 1]
            ax.imshow(show_cam_on_image(rgb[i], g.maps[k][i], use_rgb=True, image_weight=0.5),
                      interpolation="bilinear")
            c, p = g.predicted[k][i], g.probability[k][i]
            known = g.true[i] >= 0
            colour = ("tab:green" if c == g.true[i] else "tab:red") if known else "black"
            ax.set_xlabel(f"pred: {_class_name(c, names)} ({p:.2f})", fontsize=9, color=colour)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    heads = ["input", *(f"{lab}\n[{layer}]" for lab, layer in zip(g.labels, g.layers))]
    for k, head in enumerate(heads):
        axes[0][k].set_title(head, fontsize=9, fontweight="bold")
    what = "predicted" if target == "pred" else "true"
    fig.suptitle(f"Grad-CAM++ of the last stage (target: {what} class)", fontsize=11)
    g.path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(g.path, dpi=110)
