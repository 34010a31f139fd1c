"""Evaluate a checkpoint written by ``tfdistill train`` on its (or another) dataset's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .config import build_config, parse_overrides
from .data import build_data
from .engine.checkpoint import checkpoint_in, load_checkpoint, load_model_weights
from .engine.auto import apply_engine_settings
from .engine.build import resolve_device
from .engine.evaluation import evaluate
from .errors import CheckpointError, ConfigError
from .models import create_model
from .tasks import get_task


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None, device: str = "auto") -> dict[str, Any]:
    """Evaluate the checkpoint ``path`` (a file, or a run directory: its best.pt, else its last.pt)."""
    path = checkpoint_in(path)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config_yaml"), str) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a tfdistill checkpoint (no stored config); it cannot be evaluated alone")
    raw = OmegaConf.create(ckpt["config_yaml"])
    if overrides:
        raw = OmegaConf.merge(raw, parse_overrides(overrides))
    cfg = build_config(raw)
    dev = resolve_device(device)
    apply_engine_settings(cfg, dev)  # a stored "auto" (never written by train, but possible by hand)
    data = build_data(cfg.data, dev, seed=int(cfg.seed), channels_last=bool(cfg.engine.channels_last))
    num_classes = int(ckpt.get("meta", {}).get("num_classes", cfg.model.num_classes or data.num_classes))
    if num_classes != data.num_classes:
        raise ConfigError(f"the checkpoint's model has {num_classes} classes but dataset {cfg.data.name!r} has "
                          f"{data.num_classes}")
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.dropout:
        kwargs["dropout"] = cfg.model.dropout
    model = create_model(cfg.model.name, num_classes=num_classes, **kwargs)
    load_model_weights(model, path)
    model.to(dev)
    task = get_task(data.task, **data.task_options)
    res = evaluate(model, data.test, precision=cfg.engine.precision, device=dev, task=task, num_classes=num_classes)
    return {"checkpoint": str(path), "model": cfg.model.name, "dataset": cfg.data.name,
            "epoch": ckpt.get("epoch"), "primary_metric": task.primary_metric, "text": task.text(res), **res}
