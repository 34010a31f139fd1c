"""One run of the training engine: config -> data, student (+ teacher), method, optimizer -> run directory.

:class:`Run` is the per-run record of a group (see :mod:`.group`, which drives the epochs of K >= 1 runs): it builds
the run, owns its run directory (checked, created or -- with ``--overwrite`` -- replaced only once the run is built;
the replaced run comes back if the new one stops before its first checkpoint), checkpoints and resume, random
streams, metrics rows, evaluation and summary. The engine knows the :class:`Method` interface and nothing else
about methods.

Data parallelism (``torchrun --nproc_per_node=N -m tfdistill train ...``; multi-node with torchrun's ``--nnodes``
/ ``--rdzv-*`` flags): NCCL on GPUs, gloo on CPUs. ``data.batch_size`` is the global batch, sharded by the data
layer; the :class:`Method` (student + components' trainable modules, never the frozen teacher) is wrapped in
DistributedDataParallel, optionally after SyncBatchNorm conversion (``engine.sync_bn``, GPU only); metric sums and
eval counts are all-reduced; rank 0 alone writes the run directory; checkpoints hold the unwrapped modules and every
rank's RNG state; components with a ``gather`` hook (CRD's memory bank) get an all-gather so every rank applies the
global batch's update. With a BatchNorm-free model a 2-process run reproduces the 1-process run with the same global
batch to float32 rounding (tests/test_distributed.py).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import __version__
from ..config import config_notes, to_dict, to_yaml
from ..data import build_data
from ..errors import CheckpointError, ConfigError, DivergenceError, signal_name
from ..interrupts import deferred
from ..methods import Method, build_method, method_uses
from ..methods.base import PreStage
from ..models import create_model
from ..precision import autocast
from .progress import epoch_line
from .checkpoint import load_checkpoint, load_model_weights, rng_state, set_rng_state
from .distributed import (DistInfo, all_reduce_sum, barrier, broadcast_object, broadcast_or_raise,
                          broadcast_tensors, gather_object, gather_rows, setup_distributed)
from ..rundir import RunDir, device_name, flat_keys, git_commit, save_atomic
from .schedule import StepLR
from .step import TrainStep
from .auto import apply_engine_settings

CHECKPOINT_FORMAT = "tfdistill/1"


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


# ----------------------------------------------------------------------------------------------- warnings
SHOWN_WARNINGS: list[str] = []
"""Warnings the CLI has shown in its own form (once each) in this process: the engine writes them to the train.log of
the runs they concern and does not echo them again (a library user sees Python's warnings and the log lines)."""
_OPEN_RUNS: "weakref.WeakSet[Run]" = weakref.WeakSet()
_GROUP_MARK: list[int] = []
"""Where in SHOWN_WARNINGS the group being built began (its data is built before its runs)."""


def record_warning(msg: str) -> None:
    """The CLI has shown warning ``msg``: into the train.log of every run open now (later runs being built get it
    when they open)."""
    if msg in SHOWN_WARNINGS:
        return
    SHOWN_WARNINGS.append(msg)
    for run in list(_OPEN_RUNS):
        run._log_warning(msg)


def _warning_text(line: str) -> str | None:
    for prefix in ("warning: ", "note: "):
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


# ----------------------------------------------------------------------------------------------- helpers
def note_interrupt(exc: BaseException, where: str, after: str = "nothing was written; run the same command to "
                                                                    "start") -> None:
    """Give an interrupt that carries no message yet the one line the CLI prints: which signal, where, what now."""
    if isinstance(exc, KeyboardInterrupt) and not exc.args:
        exc.args = (f"stopped by {signal_name(exc)} {where}; {after}",)


def resolve_device(spec: str, info: DistInfo | None = None) -> torch.device:
    spec = str(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            spec = "mps"
        else:
            spec = "cpu"
    if spec == "cuda" and info is not None and info.enabled:
        spec = f"cuda:{info.local_rank}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"bad value for config key 'engine.device': {spec!r}; valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asks for CUDA, but no CUDA device is available; use the CPU "
                          f"(engine.device=cpu, or --device cpu for eval/cam)")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"engine.device={spec} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        # the current device: CUDA-graph capture streams and tensors created without a device land on it
        torch.cuda.set_device(device)
    return device


def default_run_name(cfg: Any, seed: int | None = None) -> str:
    s = cfg.seed if seed is None else seed
    return f"{cfg.data.name}_{cfg.model.name}_{str(cfg.method.name).replace('+', '-')}_s{s}"


TORCHVISION_WEIGHTS = "torchvision:"


def weights_file(spec: str) -> str:
    """A local weights file for ``teacher.checkpoint`` / ``model.init_checkpoint``.

    A path is returned as is (a tfdistill checkpoint or a plain state_dict such as torchvision's
    ``resnet34-b627a593.pth``): nothing is ever downloaded for it. ``torchvision:<Weights>`` (e.g.
    ``torchvision:ResNet34_Weights.IMAGENET1K_V1``) explicitly asks for torchvision's published file: it is taken
    from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) and downloaded there only if missing.
    """
    spec = str(spec)
    if not spec.startswith(TORCHVISION_WEIGHTS):
        return spec
    from torchvision.models import get_weight

    name = spec[len(TORCHVISION_WEIGHTS):]
    try:
        url = get_weight(name).url
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"unknown torchvision weights {name!r} in {spec!r} (expected e.g. "
                          f"torchvision:ResNet34_Weights.IMAGENET1K_V1): {exc}") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as exc:  # offline, proxy, disk full
            raise CheckpointError(f"could not download {url} ({type(exc).__name__}: {str(exc)[:120]}); fetch it "
                                  f"by hand to {path} or pass its local path instead of {spec!r}") from None
    return str(path)


def build_teacher(cfg: Any, num_classes: int, device: torch.device) -> nn.Module | None:
    t = cfg.teacher
    if not t.model:
        if t.checkpoint:
            raise ConfigError("teacher.checkpoint is set but teacher.model is empty; set teacher.model too")
        return None
    if not t.checkpoint:
        raise ConfigError(f"teacher.model={t.model} needs teacher.checkpoint (e.g. runs/<teacher run>/best.pt)")
    # The teacher's random initialisation is overwritten by its checkpoint: drawing it must not shift the run's
    # random stream (the components built next draw from it), so building a teacher -- or sharing one already
    # built, in a packed group -- leaves the student's and the components' initial weights the same.
    with torch.random.fork_rng(devices=[]):
        teacher = create_model(t.model, num_classes=num_classes, **dict(t.kwargs))
    load_model_weights(teacher, weights_file(t.checkpoint), what="teacher")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device)


def data_meta(data: Any) -> dict:
    """How the model's inputs were made, for using a checkpoint without its dataset (``tfdistill cam``): class
    names, normalisation, resolution and ``eval_resize``, the shorter side evaluation images are resized to
    before the centre crop to ``image_size`` (``image_size * 256 / 224`` on the ImageNet path)."""
    size = int(data.image_size)
    resize = size
    transform = getattr(getattr(data.test, "dataset", None), "transform", None)
    for op in getattr(transform, "transforms", None) or []:
        if type(op).__name__ == "Resize" and isinstance(getattr(op, "size", None), (list, tuple)):
            resize = int(op.size[0])
            break
    return {"name": str(data.name), "image_size": size, "eval_resize": resize,
            "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
            "class_names": [str(c) for c in data.class_names]}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, precision: str = "fp32", device: torch.device | None = None,
             info: DistInfo = DistInfo(), max_batches: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader`` (reduced across ranks). Top-5
    only where there are more than 5 classes (with 5 or fewer it is 100 % by construction: not a measurement)."""
    was = model.training
    model.eval()
    device = device or next(model.parameters()).device
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, count
    classes = 0
    for b, (x, y, _) in enumerate(loader):
        if max_batches and b >= max_batches:
            break
        with autocast(precision, device):
            logits = model(x)
        logits = logits.float()
        classes = logits.shape[1]
        k = min(5, classes)
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y.view(-1, 1))
        stats += torch.stack([hit[:, :1].sum(), hit.sum(), F.cross_entropy(logits, y, reduction="sum"),
                              torch.tensor(float(y.numel()), device=device)]).to(stats.dtype)
    all_reduce_sum(stats, info)
    model.train(was)
    c1, c5, loss, n = stats.tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * c1 / n, **({"top5": 100.0 * c5 / n} if classes > 5 else {}), "loss": loss / n,
            "count": int(n)}


# ----------------------------------------------------------------------------------------------- trainer
class Run:
    """One run of a group: its model, method, optimizer, schedule, GradScaler, step (:class:`TrainStep`), random
    streams (:attr:`rng`), data order, run directory (prepare / commit / rollback), checkpoints and resume, metrics
    rows and summary. The epochs are driven by :class:`~.group.Group` (K >= 1 runs; K = 1 is a plain run)."""

    def __init__(self, cfg: Any, *, resume: bool = False, overwrite: bool = False,
                 echo: Callable[[str], None] | None = None, data: Any = None, teacher: nn.Module | None = None,
                 defer_open: bool = False) -> None:
        """``data``: a prebuilt data bundle and ``teacher``: a prebuilt frozen teacher for ``cfg.teacher`` (both
        shared by the runs of a packed group); built from ``cfg`` when None. ``defer_open``: the run directory is
        created only by :meth:`open` (a group builds all its runs first)."""
        self.cfg = cfg
        self._warn_mark = _GROUP_MARK[-1] if _GROUP_MARK else len(SHOWN_WARNINGS)
        self._logged_warnings: set[str] = set()
        self.info = setup_distributed(cfg.engine.device)
        self.echo = echo if echo is not None else (lambda s: tqdm.write(s, file=sys.stdout))
        # Progress bars on an interactive terminal; in logs and CI the per-epoch lines carry the progress.
        self.show_bars = bool(cfg.engine.progress) and sys.stdout.isatty()
        self.device = resolve_device(cfg.engine.device, self.info)
        # engine.precision / channels_last / cuda_graphs = auto -> their values on this device, written into cfg
        # (config.yaml, checkpoints and summary.json record what was computed)
        apply_engine_settings(cfg, self.device, distributed=self.info.enabled)
        self.name = cfg.name or default_run_name(cfg)
        self.run = RunDir(Path(cfg.out_dir) / self.name)
        # Checked now, created (or, with --overwrite, replaced) only once the whole run has been built: bad input
        # found while building leaves no folder behind and never costs the old run.
        self._pending_log: list[str] | None = []
        do_resume = self._prepare_run_dir(resume, overwrite, dry=True)
        if self.info.is_main and self.run.path.is_dir():  # a second process on this run directory is refused now
            self.run.lock()
        if resume and not do_resume:
            self._log(f"note: nothing to resume in {self.run.path} (it does not exist yet): a new run starts")
        for note in config_notes(cfg):  # valid but probably unintended settings (milestones beyond epochs)
            self._log(note)
        self.started = time.time()
        self.show_bars = self.show_bars and self.info.is_main

        seed = int(cfg.seed)
        random.seed(seed)
        torch.manual_seed(seed)
        if cfg.engine.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False  # a previous run in this process may have turned it on
        self.channels_last = bool(cfg.engine.channels_last)
        try:
            self.data = data if data is not None else build_data(  # `data`: a prebuilt bundle (packed runs)
                cfg.data, self.device, seed=seed, rank=self.info.rank, world_size=self.info.world_size,
                channels_last=self.channels_last, paired=method_uses(cfg.method.name).paired_batches)
        except KeyboardInterrupt as exc:
            note_interrupt(exc, f"while building the data set {cfg.data.name!r} for {self.run.path}")
            raise
        num_classes = cfg.model.num_classes or self.data.num_classes
        if cfg.model.num_classes and cfg.model.num_classes != self.data.num_classes:
            raise ConfigError(f"model.num_classes={cfg.model.num_classes} but dataset {cfg.data.name!r} has "
                              f"{self.data.num_classes} classes; leave model.num_classes=0 to follow the data")
        self.num_classes = num_classes

        kwargs = dict(cfg.model.kwargs)
        if cfg.model.dropout:
            kwargs["dropout"] = cfg.model.dropout
        if cfg.model.pretrained:
            kwargs["pretrained"] = True
        self.student = create_model(cfg.model.name, num_classes=num_classes, **kwargs)
        if cfg.model.init_checkpoint:
            load_model_weights(self.student, weights_file(cfg.model.init_checkpoint), what="model.init_checkpoint")
        mf = torch.channels_last if self.channels_last else torch.preserve_format
        self.student.to(self.device, memory_format=mf)
        self.student = self._sync_bn(self.student)
        self.teacher = teacher if teacher is not None else build_teacher(cfg, num_classes, self.device)
        if self.teacher is not None:
            self.teacher.to(memory_format=mf)

        example = self._example_batch()
        self.method: Method = build_method(
            self.student, cfg.method, example=example, num_classes=num_classes, num_train=self.data.num_train,
            epochs=int(cfg.epochs), teacher=self.teacher, student_taps=_taps(cfg.model.taps),
            teacher_taps=_taps(cfg.teacher.taps), student_name=cfg.model.name, teacher_name=cfg.teacher.model or None)
        self.dropblock = self._attach_dropblock(example)

        self.params = self.method.trainable_parameters("main")
        o = cfg.optim
        self.optimizer = torch.optim.SGD(self.params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                         weight_decay=o.weight_decay)
        self.steps_per_epoch = len(self.data.train)
        if cfg.engine.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, int(cfg.engine.max_steps_per_epoch))
        self.sched = StepLR(self.optimizer, o.lr, epochs=int(cfg.epochs), steps_per_epoch=self.steps_per_epoch,
                            schedule=cfg.schedule)
        self.precision = cfg.engine.precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.model: nn.Module = self._wrap(self.method)
        self.accel = TrainStep(self.model, self.optimizer, self.scaler, device=self.device,
                               precision=self.precision, compile=bool(cfg.engine.compile),
                               cuda_graphs=bool(cfg.engine.cuda_graphs), distributed=self.info.enabled,
                               log=self._log)
        if self.info.enabled:
            # Replicas are built from the same seed; from here on each rank draws its own random numbers (dropout
            # masks, CRD negatives), otherwise samples at positions r and r+1 of a global batch would share them.
            torch.manual_seed(seed * 1000003 + self.info.rank)

        self.epoch = 0  # epochs completed
        self.saved_epoch = 0  # ... and in last.pt
        self.best_top1 = -1.0
        self.best_epoch = 0
        self.pre_done = False
        self.resumed_from = None
        if do_resume:
            self._load_resume()
        self.rng = rng_state(self.device)
        """This run's random streams while another run of its group steps (see :meth:`own_rng`)."""
        self.tb = None
        self._opening = (do_resume, resume, overwrite)
        if not defer_open:
            self.open()

    def open(self) -> None:
        """Create (or, with ``--overwrite``, replace) the run directory of a new run, write the notes issued while
        building to its train.log, start TensorBoard. A packed group opens its runs once all of them are built."""
        do_resume, resume, overwrite = self._opening
        if not do_resume:
            self._prepare_run_dir(resume, overwrite, dry=False)
            if self.info.is_main:
                self.run.lock()
                self.run.config.write_text(to_yaml(self.cfg))
        pending, self._pending_log = self._pending_log or [], None
        if self.info.is_main:
            for line in pending:
                self.run.log_line(line)
            for msg in SHOWN_WARNINGS[self._warn_mark:]:  # shown while this run was being built
                self._log_warning(msg)
            _OPEN_RUNS.add(self)
        self.tb = self._tensorboard()

    def _prepare_run_dir(self, resume: bool, overwrite: bool, *, dry: bool) -> bool:
        """Rank 0 checks (``dry``) or creates the run directory; every rank gets its verdict (or its error)."""
        verdict: Any = False
        if self.info.is_main:
            try:
                verdict = self.run.prepare(resume=resume, overwrite=overwrite, dry=dry)
            except Exception as exc:  # every rank raises it, rather than waiting for rank 0 forever
                verdict = exc
        return bool(broadcast_or_raise(verdict, self.info))

    # ------------------------------------------------------------------ construction helpers
    def _example_batch(self) -> Tensor:
        for x, _, _ in self.data.test:
            return x[: min(8, x.shape[0])]
        raise ConfigError(f"dataset {self.cfg.data.name!r} has an empty test split")

    def _attach_dropblock(self, example: Tensor):
        m = self.cfg.model
        if not m.dropblock_prob:
            return None
        from ..features import find_stages
        from ..regularizers import attach_dropblock

        stages = find_stages(self.student, example)
        try:
            names = [stages[i] for i in m.dropblock_stages]
        except IndexError:
            raise ConfigError(f"model.dropblock_stages {list(m.dropblock_stages)} out of range for the "
                              f"{len(stages)} stages {stages}") from None
        return attach_dropblock(self.student, names, m.dropblock_prob, m.dropblock_size)

    def _wrap(self, method: Method) -> nn.Module:
        if not self.info.enabled:
            return method
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers that components keep identical across ranks themselves (CRD's memory bank, updated from the
        # all-gathered global batch) are broadcast once here and then left alone by DDP; so are the parameters the
        # main stage keeps frozen (their gradients in the pre-stages the engine all-reduces itself).
        method.set_gather(gather_rows)
        own_sync = method.self_synced_buffers()
        if own_sync:
            bufs = dict(method.named_buffers())
            broadcast_tensors([bufs[n] for n in own_sync], self.info)
        self._self_synced = set(own_sync)
        ignored = method.ddp_ignored()
        if ignored:
            DDP._set_params_and_buffers_to_ignore_for_model(method, ignored)
        # Components may own modules that only a pre-stage trains (AB connectors, FitNets' regressor).
        unused = bool(method.extra_parameters())
        return DDP(method, device_ids=ids, find_unused_parameters=unused)

    def _sync_bn(self, student: nn.Module) -> nn.Module:
        """SyncBatchNorm under DDP when ``engine.sync_bn`` (batch statistics over the global batch).

        Without it every rank normalises over its own share of the batch, so a W-process run is not the same
        computation as a 1-process run with the same global batch (close, not equal). PyTorch implements
        SyncBatchNorm for GPUs only.
        """
        if not (self.cfg.engine.sync_bn and self.info.enabled):
            return student
        if self.device.type != "cuda":
            raise ConfigError(f"engine.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); this "
                              f"run uses {self.device.type}. Set engine.sync_bn=false")
        return nn.SyncBatchNorm.convert_sync_batchnorm(student)

    def _tensorboard(self):
        if not (self.cfg.engine.tensorboard and self.info.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            return None
        return SummaryWriter(str(self.run.path / "tb"))

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.student.state_dict(),
            "method": self.method.component_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "pre_done": self.pre_done,
            "rng": rng_state(self.device),
            "config_yaml": to_yaml(self.cfg),
            "meta": {"tfdistill": __version__, "torch": str(torch.__version__), "num_classes": self.num_classes,
                     "model": self.cfg.model.name, "method": self.cfg.method.name, "data": data_meta(self.data)},
        }

    def save(self, best: bool) -> None:
        rng_ranks = gather_object(rng_state(self.device), self.info) if self.info.enabled else None  # collective: all ranks
        if not self.info.is_main:
            return
        state = self.state()
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        # last.pt is written last: a kill (SIGKILL, power loss) between the files leaves last.pt at the previous
        # epoch, which --resume trains again bit-exactly and so rewrites best.pt / epoch_N.pt as they were
        keep = ("format", "model", "method", "epoch", "best_top1", "best_epoch", "config_yaml", "meta")
        if best:
            save_atomic({k: state[k] for k in keep}, self.run.best)
        if self.epoch in (self.cfg.engine.save_epochs or ()):
            save_atomic({k: state[k] for k in keep}, self.run.path / f"epoch_{self.epoch}.pt")
        save_atomic(state, self.run.last)
        self.saved_epoch = self.epoch
        self.run.commit()  # a run replaced by --overwrite is deleted only now

    def restore_replaced(self) -> bool:
        """The run stopped before its first checkpoint: with ``--overwrite``, the run it replaced comes back (True)."""
        if self.info.is_main and self.run.replaced is not None:
            if self.tb is not None:
                self.tb.close()
            if self.run.rollback():
                self.echo(f"note: {self.run.path} stopped before its first checkpoint; the run it was to replace "
                          f"(--overwrite) is restored")
                return True
        return False

    def _read_last(self) -> dict:
        """``last.pt`` on every rank (on the CPU: the RNG states must stay CPU tensors; load_state_dict moves the
        rest). Every rank reads the file itself when it can see it (a shared filesystem); otherwise (multi-node
        without one) rank 0 reads it and broadcasts it. A read error on rank 0 is raised on every rank."""
        if not self.info.enabled or all(gather_object(self.run.last.is_file(), self.info)):
            return load_checkpoint(self.run.last, map_location="cpu")
        ckpt: Any = None
        if self.info.is_main:
            try:
                ckpt = load_checkpoint(self.run.last, map_location="cpu")
            except Exception as exc:
                ckpt = exc
        return broadcast_or_raise(ckpt, self.info)

    def _load_resume(self) -> None:
        from omegaconf import OmegaConf

        ckpt = self._read_last()
        if ckpt.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt:
            raise CheckpointError(f"{self.run.last} is not a resumable tfdistill checkpoint")
        stored = OmegaConf.to_container(OmegaConf.create(ckpt["config_yaml"]))
        from .resume import resume_changes  # resume-free keys, and an allowed extension of epochs

        diff = resume_changes(stored, to_dict(self.cfg))
        if diff:
            raise CheckpointError(f"cannot resume {self.run.path}: the config differs from the checkpoint's at "
                                  f"{', '.join(diff[:8])}")
        try:
            self.student.load_state_dict(ckpt["model"])
            self.method.load_component_state_dict(ckpt["method"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {self.run.last} does not match this run: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        self.sched.load_state_dict(ckpt["sched"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = self.saved_epoch = int(ckpt["epoch"])
        self.best_top1 = float(ckpt["best_top1"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.pre_done = bool(ckpt.get("pre_done", True))
        ranks = ckpt.get("rng_ranks")
        if self.info.enabled and isinstance(ranks, list) and len(ranks) == self.info.world_size:
            set_rng_state(ranks[self.info.rank], self.device)
        else:
            set_rng_state(ckpt["rng"], self.device)
            if self.info.enabled:
                torch.manual_seed(int(torch.randint(0, 2**62, ())) + self.info.rank)  # distinct streams per rank
        self.resumed_from = self.epoch
        done = [r for r in self.run.read_metrics() if r.get("epoch", 0) <= self.epoch]
        if done and isinstance(done[-1].get("time"), (int, float)):
            self.started = time.time() - float(done[-1]["time"])  # wall time counts the earlier session too
        if self.info.is_main:
            self.run.truncate_metrics(self.epoch)
            self.run.log_line(f"resumed after epoch {self.epoch}")
        barrier(self.info)  # every rank has read last.pt before rank 0 may replace it

    # ------------------------------------------------------------------ what the group loop calls
    @contextlib.contextmanager
    def own_rng(self, cuda: bool = True):
        """This run's random streams as the global ones (for one step, evaluation or checkpoint of a packed group):
        swapped in on entry, saved back on exit. ``cuda``: the CUDA generator too (not while the group replays a
        packed CUDA graph, see :class:`~.graphs.GraphRunner`)."""
        dev = self.device if cuda else None
        set_rng_state(self.rng, dev)
        try:
            yield
        finally:
            self.rng = {**self.rng, **rng_state(dev)}

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()
        if self.teacher is not None:
            self.teacher.eval()
        self.method.on_epoch_start(epoch)
        if self.dropblock is not None:
            self.dropblock.set_progress(epoch / max(1, self.cfg.epochs))
        self.data.train.set_epoch(epoch)

    def stage_step(self, stage: PreStage) -> TrainStep:
        """The step of a pre-stage (FitNets hint, AB, FT): ``stage.modules``' trainable parameters, SGD with the run's
        settings (``stage.lr`` or ``optim.lr``), its own GradScaler, minimising the sum of ``stage.loss`` terms of the
        main stage's forward pass; gradients all-reduced by hand under DDP (the stage's modules are not DDP's)."""
        params = self.method.trainable_parameters(stage.name)
        o = self.cfg.optim
        opt = torch.optim.SGD(params, lr=stage.lr or o.lr, momentum=o.momentum, nesterov=o.nesterov,
                              weight_decay=o.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        info = self.info

        def all_reduce_grads() -> None:
            for p in params:
                if p.grad is not None:
                    all_reduce_sum(p.grad, info).div_(info.world_size)

        return TrainStep(_StageStep(self.method, stage), opt, scaler, device=self.device, precision=self.precision,
                         cuda_graphs=bool(self.cfg.engine.cuda_graphs), distributed=info.enabled, log=self._log,
                         watch=self.method, after_backward=all_reduce_grads if info.enabled else None)

    def begin_stage_epoch(self, e: int) -> None:
        self.method.train()
        if self.teacher is not None:
            self.teacher.eval()
        self.data.train.set_epoch(-1 - e)  # its own data order, distinct from the main epochs'

    def end_pre_stages(self) -> None:
        for p in self.method.parameters():  # no pre-stage gradient may reach the main stage
            p.grad = None
        self.pre_done = True

    def record_stage(self, stage: PreStage, e: int, train: dict) -> None:
        """A metrics row of pre-stage epoch ``e`` (0-based): ``"stage"`` names it; ``"epoch": 0`` keeps it before the
        main epochs (resume keeps it), and its loss is ``stage_loss``, so curves of the main ``loss`` skip it."""
        row = {"epoch": 0, "stage": stage.name, "stage_epoch": e + 1, "stage_epochs": stage.epochs,
               "stage_loss": train["loss"], "terms": train["terms"], "epoch_seconds": train["epoch_seconds"],
               "images_per_sec": train["images_per_sec"], "time": time.time() - self.started}
        if self.info.is_main:
            self.run.append_metrics(row)
        self._log(f"pre-stage {stage.name} {e + 1}/{stage.epochs}  loss {train['loss']:.4f}  "
                  f"{train['epoch_seconds']:.1f}s")

    def evaluates_after(self, epoch: int) -> bool:
        """Whether main epoch ``epoch`` (0-based) ends with an evaluation: every ``engine.eval_every``-th epoch, each
        of the last ``engine.eval_last`` epochs, and always the last one."""
        n, every, last = epoch + 1, max(1, int(self.cfg.engine.eval_every)), int(self.cfg.engine.eval_last or 0)
        epochs = int(self.cfg.epochs)
        return n == epochs or n % every == 0 or n > epochs - last

    def record_epoch(self, epoch: int, lr: float, train: dict, evaluated: dict, *, eta: float, who: str = "") -> None:
        """After main epoch ``epoch`` (0-based): best top-1, metrics row, TensorBoard, checkpoints, the epoch line.
        ``evaluated``: this epoch's test figures, or {} when the epoch was not evaluated -- its metrics row then
        carries no test figures (never an earlier epoch's)."""
        improved = bool(evaluated) and evaluated["top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = evaluated["top1"], epoch + 1
        self.epoch = epoch + 1
        tested = {f"test_{k}": evaluated.get(k) for k in ("top1", "top5", "loss") if k in evaluated}
        row = {"epoch": epoch + 1, "lr": lr, **train, **tested, "best_top1": self.best_top1,
               "time": time.time() - self.started}
        with deferred():  # a SIGINT/SIGTERM waits until the row and the checkpoints of this epoch are written
            if self.info.is_main:
                self.run.append_metrics(row)
                self._tb_write(row)
            self.save(best=improved)
        speed = f"{train['group_images_per_sec']:.0f} img/s ({train['packed']} runs)" if train.get("packed") else None
        line, terms = epoch_line(epoch + 1, int(self.cfg.epochs), lr, train, evaluated, self.best_top1,
                                 self.best_epoch, eta, who=who, speed=speed)  # <= 100 columns (+ who)
        self._log(line)
        if terms and self.info.is_main:  # the terms that did not fit on the line
            self.run.log_line(terms)

    def finish(self, last_eval: dict, extra: dict | None = None) -> RunResult:
        summary = {**self._summary(last_eval), **(extra or {})}
        if self.info.is_main:
            with deferred():
                self.run.write_summary(summary)
            self._log(f"finished: best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}), "
                      f"last {summary['last_top1']:.2f}%  -> {self.run.path}")
        self.close()
        barrier(self.info)
        return RunResult(self.run.path, summary)

    def finished_result(self) -> RunResult | None:
        """The result of a resumed run that had finished already (rank 0's view decides), else None."""
        if self.resumed_from is None or self.epoch < self.cfg.epochs:
            return None
        done = json.loads(self.run.summary.read_text()) if self.info.is_main and self.run.finished() else None
        done = broadcast_object(done, self.info)
        if done is None:
            return None
        self._log(f"{self.run.path} already finished; nothing to resume")
        self.close()
        return RunResult(self.run.path, done)

    def diverged(self, where: str, bad_terms: list[str]) -> DivergenceError:
        """The error that stops this run (alone): its loss became NaN/inf ``where`` (e.g. "in epoch 3")."""
        which = f" (non-finite term: {', '.join(bad_terms)})" if bad_terms else ""
        keep = (f"the last good checkpoint is {self.run.last} (after epoch {self.epoch})" if self.run.last.exists()
                else "no checkpoint was written yet")
        return DivergenceError(f"loss became NaN/inf {where}{which}; stopped, {keep}")

    def stop(self, err: BaseException) -> str | None:
        """This run stops (it diverged while its group goes on, or the group stopped): the reason goes to its
        train.log and, unless it is resumable after an interrupt, a FAILED marker (:meth:`RunDir.record_stop`); a run
        it replaced (--overwrite) comes back instead if it had no checkpoint yet. Returns the line recorded."""
        self.close()
        line = None
        if self.info.is_main and self.run.replaced is None:
            line = self.run.record_stop(err, self.saved_epoch, int(self.cfg.epochs))
        if self.restore_replaced():
            line = (f"stopped by {signal_name(err)} before the first checkpoint of {self.run.path}: the run it was to "
                    f"replace (--overwrite) is restored" if isinstance(err, KeyboardInterrupt) else
                    f"{self.run.path} stopped before its first checkpoint ({type(err).__name__}): the run it was to "
                    f"replace (--overwrite) is restored")
        return line

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.info.is_main:
            self.run.unlock()
        _OPEN_RUNS.discard(self)

    def _log_warning(self, msg: str) -> None:
        """A warning the CLI has shown: once into this run's train.log."""
        if self.info.is_main and msg not in self._logged_warnings and self._pending_log is None:
            self._logged_warnings.add(msg)
            with contextlib.suppress(OSError):
                self.run.log_line(f"warning: {msg}")

    def _log(self, line: str) -> None:
        text = _warning_text(line)
        if text is not None and text in SHOWN_WARNINGS:  # shown by the CLI already: train.log only, once
            if self._pending_log is not None:
                return  # written when the run directory opens
            self._log_warning(text)
            return
        if self.info.is_main:
            self.echo(line)
            if getattr(self, "_pending_log", None) is not None:  # the run directory does not exist yet
                self._pending_log.append(line)  # type: ignore[union-attr]
            else:
                self.run.log_line(line)

    def _evaluate(self) -> dict[str, float]:
        if self.info.enabled:
            # BatchNorm running statistics (student, components' modules) drift apart after DDP's broadcast at
            # the start of each step (every rank updates them from its own share of the batch): evaluate, and go
            # on from, what rank 0 checkpoints. Self-synchronised buffers (CRD's bank) are identical already.
            synced = getattr(self, "_self_synced", set())
            broadcast_tensors([b for n, b in self.method.named_buffers() if n not in synced], self.info)
        return evaluate(self.student, self.data.test, precision=self.precision, device=self.device, info=self.info)

    def _tb_write(self, row: dict) -> None:
        if self.tb is None:
            return
        step = row["epoch"]
        for k, v in flat_keys(row).items():
            if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(k.replace(".", "/"), v, step)

    def _summary(self, last_eval: dict) -> dict:
        rows = self.run.read_metrics() if self.info.is_main else []
        speeds = [r["images_per_sec"] for r in rows
                  if "stage" not in r and isinstance(r.get("images_per_sec"), (int, float))]
        cfg = self.cfg
        return {
            "status": "finished",
            "name": self.name,
            "model": cfg.model.name,
            "method": cfg.method.name,
            "dataset": cfg.data.name,
            "data": self.data.describe(),  # the resolution as decided (data.image_size=0: by the dataset)
            "seed": int(cfg.seed),
            "epochs": int(cfg.epochs),
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "last_top1": last_eval.get("top1"),
            **({"last_top5": last_eval["top5"]} if "top5" in last_eval else {}),  # (more than 5 classes)
            "last_test_loss": last_eval.get("loss"),
            "params": sum(p.numel() for p in self.student.parameters()),
            "wall_seconds": time.time() - self.started,
            "images_per_sec": sum(speeds) / len(speeds) if speeds else None,
            "device": device_name(self.device),
            "world_size": self.info.world_size,
            "precision": self.precision,
            "channels_last": bool(cfg.engine.channels_last),
            "cuda_graphs": bool(cfg.engine.cuda_graphs),
            "step_mode": self.accel.mode,
            "torch": str(torch.__version__),
            "tfdistill": __version__,
            "git_commit": git_commit(),
            "resumed_from_epoch": self.resumed_from,
            "method_info": self.method.describe(),
        }


def _taps(taps: Any) -> Any:
    return taps if isinstance(taps, str) else [str(t) for t in taps]


class _StageStep(nn.Module):
    """The step module of a pre-stage: the main stage's forward pass, the stage's loss terms."""

    def __init__(self, method: Method, stage: PreStage) -> None:
        super().__init__()
        self.method = method
        self.__dict__["stage"] = stage  # holds modules of the method: not registered twice

    def forward(self, x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.method.outputs(x, y, idx)
        return out.logits_s, self.stage.loss(out)
