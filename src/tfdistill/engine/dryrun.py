"""``tfdistill train RECIPE --dry-run``: build everything a run needs, print its header, train and write nothing.

The run is built as a real start builds it (:func:`~.trainer.build_group`: data, student, teacher, method with its
feature taps, optimizer, schedule), so every error a real start would raise is raised here; it writes into a
temporary folder that is deleted afterwards, after the real run directory was checked the way a real start checks
it (exists without --resume/--overwrite, nothing to resume). Caches outside the run directory (the decoded-dataset
cache of image folders) may be filled, as a real start would.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from ..config import config_notes, plural
from ..rundir import RunDir, device_name
from ..runs import run_path


def dry_run(cfg: Any, *, resume: bool = False, overwrite: bool = False,
            echo: Callable[[str], None] = print) -> dict:
    """Build the run of ``cfg`` (its first seed's, with ``seeds``) and describe it; returns the facts printed."""
    from .trainer import build_group

    dirs = ([run_path(cfg, int(s)) for s in cfg.seeds] if getattr(cfg, "seeds", None) else [run_path(cfg)])
    for d in dirs:
        RunDir(d).prepare(resume=resume, overwrite=overwrite, dry=True)
    tmp = Path(tempfile.mkdtemp(prefix="tfdistill-dry-run-"))
    try:
        one = OmegaConf.merge(cfg, {"out_dir": str(tmp), "name": "dry", "engine": {"tensorboard": False}})
        if getattr(cfg, "seeds", None):
            one = OmegaConf.merge(one, {"seed": int(cfg.seeds[0]), "seeds": None})
        t = build_group([one], echo=lambda s: None).runs[0]
        params = sum(p.numel() for p in t.student.parameters())
        extra = sum(p.numel() for p in t.method.extra_parameters())
        facts = {
            "run_dirs": [str(d) for d in dirs],
            "model": str(cfg.model.name), "method": str(cfg.method.name), "dataset": str(cfg.data.name),
            "num_train": int(t.data.num_train), "num_classes": int(t.num_classes), "epochs": int(cfg.epochs),
            "steps_per_epoch": int(t.steps_per_epoch), "params": params, "extra_params": extra,
            "device": device_name(t.device), "describe": t.method.describe(),
            "header": [*t.data.notes, *t.method.describe_taps()],  # resolution decided, layers tapped
        }
        t.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs = ", ".join(facts["run_dirs"])
    echo(f"dry run: {runs}: {facts['model']} / {facts['method']} on {facts['dataset']} ({facts['num_train']} train "
         f"images, {facts['num_classes']} classes), {plural(facts['epochs'], 'epoch')} of {plural(facts['steps_per_epoch'], 'step')}, "
         f"{facts['params']:,} student parameters" + (f" + {facts['extra_params']:,} in the method's modules"
                                                     if facts["extra_params"] else "")
         + f", device {facts['device']}")
    d = facts["describe"] or {}
    parts = [f"{k.replace('_', ' ')} {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
             for k, v in d.items() if v not in ([], (), None, "")]
    if parts:
        echo(f"method: {'; '.join(parts)}")
    for line in facts["header"]:
        echo(line)
    for note in config_notes(cfg):
        echo(note)
    echo("nothing was trained or written (drop --dry-run to start)")
    return facts
