"""Building what a run trains: its device, student, frozen teacher, DropBlock, DDP wrapper, optimizer, pre-stage steps.

Each function takes the config (or the section it needs) and returns the built piece; :class:`~.run.Run` calls
them in order. Weights files (``teacher.checkpoint``, ``model.init_checkpoint``) are resolved here too: a path, or
``torchvision:<Weights>`` for torchvision's published file (:func:`weights_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..data import build_data
from ..interrupts import note_interrupt
from ..methods import Method, build_method, method_uses
from ..models import create_model
from .checkpoint import load_model_weights
from .auto import apply_engine_settings
from .distributed import DistInfo, all_reduce_sum, broadcast_tensors, gather_rows, setup_distributed
from .step import TrainStep


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


def settle(cfg: Any) -> tuple[DistInfo, torch.device]:
    """A run's process (DDP rank or none), its device, and ``engine.*`` = ``auto`` resolved for them and written into
    ``cfg`` (:func:`~.auto.apply_engine_settings`): once per run, by :func:`~.trainer.build_group`, before the runs
    of a group are compared and built."""
    info = setup_distributed(cfg.engine.device)
    device = resolve_device(cfg.engine.device, info)
    apply_engine_settings(cfg, device, distributed=info.enabled)
    return info, device


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


def build_student(cfg: Any, num_classes: int, device: torch.device, info: DistInfo) -> nn.Module:
    """``cfg.model`` built for ``num_classes`` classes, its ``init_checkpoint`` loaded, on ``device`` (channels_last
    when ``engine.channels_last``), with SyncBatchNorm under DDP when ``engine.sync_bn``."""
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.dropout:
        kwargs["dropout"] = cfg.model.dropout
    if cfg.model.pretrained:
        kwargs["pretrained"] = True
    student = create_model(cfg.model.name, num_classes=num_classes, **kwargs)
    if cfg.model.init_checkpoint:
        load_model_weights(student, weights_file(cfg.model.init_checkpoint), what="model.init_checkpoint")
    student.to(device, memory_format=memory_format(cfg))
    return _sync_bn(student, cfg, device, info)


def memory_format(cfg: Any) -> torch.memory_format:
    return torch.channels_last if cfg.engine.channels_last else torch.preserve_format


def _sync_bn(student: nn.Module, cfg: Any, device: torch.device, info: DistInfo) -> nn.Module:
    """SyncBatchNorm under DDP when ``engine.sync_bn`` (batch statistics over the global batch).

    Without it every rank normalises over its own share of the batch, so a W-process run is not the same
    computation as a 1-process run with the same global batch (close, not equal). PyTorch implements
    SyncBatchNorm for GPUs only.
    """
    if not (cfg.engine.sync_bn and info.enabled):
        return student
    if device.type != "cuda":
        raise ConfigError(f"engine.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); this "
                          f"run uses {device.type}. Set engine.sync_bn=false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(student)


def example_batch(data: Any, name: str) -> Tensor:
    """Up to 8 test images: the example input methods and feature taps are resolved with."""
    for x, _, _ in data.test:
        return x[: min(8, x.shape[0])]
    raise ConfigError(f"dataset {name!r} has an empty test split")


def attach_dropblock(cfg: Any, student: nn.Module, example: Tensor):
    """DropBlock on the stages ``model.dropblock_stages`` when ``model.dropblock_prob`` > 0, else None."""
    m = cfg.model
    if not m.dropblock_prob:
        return None
    from ..features import find_stages
    from ..regularizers import attach_dropblock as attach

    stages = find_stages(student, example)
    try:
        names = [stages[i] for i in m.dropblock_stages]
    except IndexError:
        raise ConfigError(f"model.dropblock_stages {list(m.dropblock_stages)} out of range for the "
                          f"{len(stages)} stages {stages}") from None
    return attach(student, names, m.dropblock_prob, m.dropblock_size)


def taps(value: Any) -> Any:
    """``model.taps`` / ``teacher.taps``: ``auto`` (a string) or a list of layer names."""
    return value if isinstance(value, str) else [str(t) for t in value]


def build_optimizer(params: list, optim: Any, lr: float | None = None) -> torch.optim.SGD:
    """SGD with the run's settings (``optim``); ``lr`` overrides ``optim.lr`` (a pre-stage's own rate)."""
    return torch.optim.SGD(params, lr=lr or optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=optim.weight_decay)


def wrap_ddp(method: Method, device: torch.device, info: DistInfo) -> tuple[nn.Module, set[str]]:
    """``method`` wrapped in DistributedDataParallel under torchrun (as it is otherwise), and the names of the
    buffers it keeps identical across ranks itself."""
    if not info.enabled:
        return method, set()
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # Buffers that components keep identical across ranks themselves (CRD's memory bank, updated from the
    # all-gathered global batch) are broadcast once here and then left alone by DDP; so are the parameters the
    # main stage keeps frozen (their gradients in the pre-stages the engine all-reduces itself).
    method.set_gather(gather_rows)
    own_sync = method.self_synced_buffers()
    if own_sync:
        bufs = dict(method.named_buffers())
        broadcast_tensors([bufs[n] for n in own_sync], info)
    ignored = method.ddp_ignored()
    if ignored:
        DDP._set_params_and_buffers_to_ignore_for_model(method, ignored)
    # Components may own modules that only a pre-stage trains (AB connectors, FitNets' regressor).
    unused = bool(method.extra_parameters())
    return DDP(method, device_ids=ids, find_unused_parameters=unused), set(own_sync)


def build_stage_step(method: Method, stage: Any, cfg: Any, device: torch.device, precision: str, info: DistInfo,
                     log: Any) -> TrainStep:
    """The step of a pre-stage (FitNets hint, AB, FT): ``stage.modules``' trainable parameters, SGD with the run's
    settings (``stage.lr`` or ``optim.lr``), its own GradScaler, minimising the sum of ``stage.loss`` terms of the
    main stage's forward pass; gradients all-reduced by hand under DDP (the stage's modules are not DDP's)."""
    params = method.trainable_parameters(stage.name)
    opt = build_optimizer(params, cfg.optim, lr=stage.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def all_reduce_grads() -> None:
        for p in params:
            if p.grad is not None:
                all_reduce_sum(p.grad, info).div_(info.world_size)

    return TrainStep(_StageStep(method, stage), opt, scaler, device=device, precision=precision,
                     cuda_graphs=bool(cfg.engine.cuda_graphs), distributed=info.enabled, log=log,
                     watch=method, after_backward=all_reduce_grads if info.enabled else None)


class _StageStep(nn.Module):
    """The step module of a pre-stage: the main stage's forward pass, the stage's loss terms."""

    def __init__(self, method: Method, stage: Any) -> None:
        super().__init__()
        self.method = method
        self.__dict__["stage"] = stage  # holds modules of the method: not registered twice

    def forward(self, x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.method.outputs(x, y, idx)
        return out.logits_s, self.stage.loss(out)


def check_task(task: Any, model: nn.Module, example: torch.Tensor, name: str) -> None:
    """Refuse (one line) a model whose output does not fit the data's task (a classifier on segmentation masks)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(example[:1])
    finally:
        model.train(was)
    why = task.check(logits)
    if why is not None:
        raise ConfigError(f"model {name!r} does not fit the {task.name} data set: {why}")


def build_run_data(cfg: Any, device: torch.device, info: DistInfo, where: Path) -> Any:
    """A run's data bundle (:func:`tfdistill.data.build_data`), with CS-KD's paired batches when the method asks."""
    try:
        return build_data(cfg.data, device, seed=int(cfg.seed), rank=info.rank, world_size=info.world_size,
                          channels_last=bool(cfg.engine.channels_last),
                          paired=method_uses(cfg.method.name).paired_batches)
    except KeyboardInterrupt as exc:
        note_interrupt(exc, f"while building the data set {cfg.data.name!r} for {where}")
        raise


def num_classes(cfg: Any, data: Any) -> int:
    """The student's number of classes: ``model.num_classes``, or the data's when 0 (a mismatch is an error)."""
    if cfg.model.num_classes and cfg.model.num_classes != data.num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but dataset {cfg.data.name!r} has "
                          f"{data.num_classes} classes; leave model.num_classes=0 to follow the data")
    return int(cfg.model.num_classes or data.num_classes)


def build_run_method(cfg: Any, student: nn.Module, teacher: nn.Module | None, data: Any, task: Any
                     ) -> tuple[Method, Any]:
    """A run's :class:`~tfdistill.methods.Method` (taps and component shapes from one example batch, the task
    checked against the student's output first) and its DropBlock regulariser (or None)."""
    example = example_batch(data, cfg.data.name)
    check_task(task, student, example, cfg.model.name)
    method = build_method(
        student, cfg.method, example=example, num_classes=num_classes(cfg, data), num_train=data.num_train,
        epochs=int(cfg.epochs), teacher=teacher, student_taps=taps(cfg.model.taps),
        teacher_taps=taps(cfg.teacher.taps), student_name=cfg.model.name,
        teacher_name=cfg.teacher.model or None, seed=int(cfg.seed), task=task)
    return method, attach_dropblock(cfg, student, example)
