"""Typed run configuration: dataclasses merged from YAML + dotted overrides with OmegaConf.

The schema is the single source of truth for every knob a run has. `load_config` validates keys and types
(unknown keys and wrong types are `ConfigError`s naming the key). The `method` section is typed per method:
its schema comes from the method registry (see `tfdistill.methods`), so `method.tfd.alpha=0.01` is checked
against `TFDParams` and a typo is an error, not a silently ignored argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


@dataclass
class DataConfig:
    name: str = "digits"
    """Dataset: cifar10 | cifar100 | imagefolder | digits | synthetic (see `tfdistill.data`)."""
    root: str = "data"
    """Where the dataset lives (torchvision CIFAR folder, or an ImageFolder root with train/ and val/ or test/)."""
    download: bool = False
    """Let torchvision download CIFAR when the files are missing (off by default: runs are offline)."""
    loader: str = "auto"
    """auto | device | dataloader. `device`: uint8 tensors resident on the training device, batched augmentation;
    `dataloader`: torch DataLoader with workers + torchvision transforms; `auto`: device for small datasets."""
    batch_size: int = 64
    eval_batch_size: int = 512
    num_workers: int = 4
    on_bad_file: str = "error"
    """Image folders: what an unreadable, corrupt or non-image file does. ``error``: every problem of the folder
    (bad files, empty classes, class mismatches, too few images) is reported in one message and nothing trains;
    ``skip``: bad files are left out with one warning (count and first names), recorded in summary.json."""
    augment: list[str] = field(default_factory=lambda: ["crop", "flip"])
    """Training augmentations in order. CIFAR-style: crop (reflect-pad 4 + random 32x32 crop), flip, cutout,
    autoaugment (torchvision's CIFAR10 policy). ImageNet-style (dataloader path): rrc (RandomResizedCrop), flip."""
    cutout_size: int = 16
    image_size: int = 0
    """Training/eval resolution for image folders (0 = dataset default: 32 for CIFAR-sized data, 224 otherwise)."""
    train_subset: int = 0
    """Use only this many training images (class-balanced, chosen with a fixed seed, the same for every run); 0 = all."""
    test_subset: int = 0
    synthetic_train: int = 512
    synthetic_test: int = 256
    synthetic_classes: int = 10
    synthetic_size: int = 32
    crop_size: list[int] = field(default_factory=list)
    """Segmentation ``scale_crop``: the training crop ``[h, w]`` (or ``[s]``); empty: the resident image size."""
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    """Segmentation ``scale_crop``: the random scale is drawn uniformly from this range."""
    eval_window: list[int] = field(default_factory=list)
    """Segmentation: evaluate by sliding windows of this ``[h, w]`` (or ``[s]``); empty: whole images."""
    eval_stride: list[int] = field(default_factory=list)
    """Segmentation: the sliding windows' stride (empty: 2/3 of the window)."""
    proxy_seed: int = 0
    """The CIFAR-10 segmentation proxy (``cifar10_seg``, :mod:`tfdistill.data.segproxy`): the seed its canvases are
    composed from -- fixed data, not the run's training seed (``seed``), and recorded with the run's config."""
    proxy_canvas: int = 64
    """Its canvas side (pixels)."""
    proxy_train: int = 1000
    """Its training canvases (composed from CIFAR-10 training images)."""
    proxy_test: int = 500
    """Its test canvases (composed from CIFAR-10 test images only)."""
    proxy_objects: int = 3
    """At most this many CIFAR images per canvas (1 to this many, uniformly)."""


@dataclass
class ModelConfig:
    name: str = "resnet20"
    num_classes: int = 0
    """0 = take it from the dataset."""
    taps: Any = "auto"
    """Feature taps for feature-based methods: "auto" or a list of module names, shallow to deep."""
    dropout: float = 0.0
    """Dropout before the classifier (zoo models)."""
    dropblock_prob: float = 0.0
    """DropBlock (Ghiasi et al., 2018) drop probability on the output of the tapped stages chosen by
    `dropblock_stages` (0 = off); ramped linearly from 0 over training as in the paper."""
    dropblock_size: int = 5
    dropblock_stages: list[int] = field(default_factory=lambda: [-1])
    """Indices into the model's auto-discovered stages (default: the last stage)."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for the model constructor."""
    init_checkpoint: str = ""
    """Optional weights to start from (a tfdistill checkpoint or a plain state_dict file)."""
    pretrained: bool = False
    """timm.<name> models: start from timm's pretrained weights, read from the local cache only (no download at run
    time unless model.kwargs.allow_download=true); an error for zoo and torchvision models."""


@dataclass
class TeacherConfig:
    model: str = ""
    """Teacher architecture ('' = no teacher)."""
    checkpoint: str = ""
    """A tfdistill checkpoint (best.pt/last.pt) or a plain state_dict file."""
    taps: Any = "auto"
    kwargs: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4


@dataclass
class ScheduleConfig:
    name: str = "multistep"
    """multistep | cosine | poly | constant."""
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: int = 0
    """Linear warm-up from lr * warmup_factor over this many epochs (per step)."""
    warmup_factor: float = 0.1
    min_lr: float = 0.0
    """Floor of the cosine schedule."""
    power: float = 0.9
    """Exponent of the poly schedule (segmentation's "poly" learning-rate policy)."""


@dataclass
class EngineConfig:
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps."""
    precision: str = "auto"
    """auto | fp32 | bf16 | fp16 (autocast; fp16 uses a GradScaler). auto: bf16 on a CUDA device that supports it,
    else fp32 (resolved by tfdistill.engine.auto; the run's config.yaml and summary.json record the result)."""
    channels_last: Any = "auto"
    """auto | true | false. auto: on for CUDA devices, off elsewhere."""
    compile: bool = False
    """torch.compile the train step (falls back to eager where compilation is unavailable)."""
    cuda_graphs: Any = "auto"
    """auto | true | false: capture the whole fixed-shape train step in a CUDA graph. auto: on for a CUDA device
    when the step is capturable (one process, not fp16); true on a CPU is ignored with a warning."""
    deterministic: bool = False
    sync_bn: bool = False
    """Convert the student's BatchNorm layers to SyncBatchNorm under DDP (statistics over the global batch; GPU-only
    in PyTorch). Without it each rank normalises over its own share of the batch, so a W-process run is close to,
    not equal to, a 1-process run with the same global batch; with it the normalisation matches the 1-process run
    (training is slower: one all-reduce per BN layer per step). Ignored on one process."""
    eval_every: int = 1
    """Evaluate on the test set after every N-th epoch (and always after the last)."""
    eval_last: int = 0
    """Also evaluate after each of the last N epochs (e.g. eval_every=10, eval_last=10: every 10th epoch and each of
    the last 10). Epochs not evaluated carry no test figures in ``metrics.jsonl``."""
    progress: bool = True
    tensorboard: bool = True
    """Write TensorBoard events when the tensorboard package is installed."""
    max_steps_per_epoch: int = 0
    """Cap on train steps per epoch (0 = no cap); for smoke tests and benchmarks."""
    save_epochs: Optional[list[int]] = None
    """Also keep the weights after these epochs (1-based) as ``epoch_<E>.pt`` in the run directory (the keys of
    ``best.pt``), e.g. an early-stopped teacher for ESKD (``teacher.checkpoint=runs/<teacher>/epoch_<E>.pt``)."""


@dataclass
class Config:
    name: str = ""
    """Run name: the run directory is `<out_dir>/<name>`. Empty = derived from model, method and seed."""
    out_dir: str = "runs"
    seed: int = 0
    seeds: Optional[list[int]] = None
    """Several seeds trained in one process as one packed group (same recipe); each gets its own run dir."""
    epochs: int = 240
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    method: Any = field(default_factory=lambda: {"name": "ce"})
    """Method section; its schema is the method's params dataclass (see `tfdistill.methods`)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


def _fail(exc: Exception, where: str = "", schema: Any = None) -> ConfigError:
    """Turn an OmegaConf exception into a one-line ConfigError that names the key (and, for an unknown key, the
    closest valid one and the valid keys of its section, read from ``schema``)."""
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None) or ""
        msg = str(exc).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not in" in msg or "ConfigKeyError" in type(exc).__name__:
            return ConfigError(f"unknown config key {key!r}{where}{unknown_key_hint(str(key), schema)}")
        if "is not a ListConfig" in msg:
            return ConfigError(f"bad value for config key {key!r}{where}: it takes a list, e.g. {key}=[a,b]")
        if key:
            return ConfigError(f"bad value for config key {key!r}{where}: {msg}")
        return ConfigError(f"{msg}{where}")
    return ConfigError(f"{exc}{where}")


def unknown_key_hint(key: str, schema: Any) -> str:
    """``"; did you mean 'optim.lr'? valid keys in optim: ..."`` for an unknown ``key`` of ``schema``."""
    from .registry import closest

    if schema is None or not key:
        return ""
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema, section) if section else schema
    every = sorted(_flat_schema_keys(schema))
    hint = ""
    if isinstance(node, DictConfig):
        near = closest(leaf, [str(k) for k in node.keys()])
        if near:
            hint = f"; did you mean {(section + '.' if section else '') + near[0]!r}?"
    if not hint:  # the right name in the wrong section (lr= for optim.lr=), or a typo in the section's name
        by_leaf = [k for k in every if k.rsplit(".", 1)[-1] == leaf]
        near = by_leaf or closest(key, every)
        if near:
            hint = f"; did you mean {near[0]!r}?"
    if isinstance(node, DictConfig):
        where = f"in {section}" if section else "at the top level"
        hint += f" Valid keys {where}: {', '.join(str(k) for k in node.keys())}"
    return hint


def _flat_schema_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    for k in node.keys():
        v = node._get_node(k) if isinstance(node, DictConfig) else None
        full = f"{prefix}{k}"
        if isinstance(v, DictConfig) and not v._is_none() and str(k) not in ("kwargs",):
            out += _flat_schema_keys(v, full + ".")
        else:
            out.append(full)
    return out


def read_yaml(path: str | Path) -> DictConfig:
    from .recipes import resolve_recipe

    p = resolve_recipe(str(path))
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (nor a recipe of that name; see `tfdistill recipes`)")
    try:
        cfg = OmegaConf.load(p)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(yaml_error_message(p, exc)) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"malformed config {p}: the top level must be a mapping, not a list")
    return cfg


def yaml_error_message(path: Path, exc: Exception) -> str:
    """``file:line:column: malformed YAML: problem`` (1-based, as editors count) from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if mark is not None:
        return f"{path}:{mark.line + 1}:{mark.column + 1}: malformed YAML: {problem}"
    return f"malformed YAML in {path}: {problem}"


def parse_overrides(overrides: list[str]) -> DictConfig:
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"bad override {o!r}: expected key=value, e.g. optim.lr=0.1")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise ConfigError(f"bad override in {overrides}: {str(exc).splitlines()[0]}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (optional) + dotted overrides -> validated `Config` (a typed DictConfig behaving like one)."""
    raw = read_yaml(path) if path else OmegaConf.create({})
    if path and "grid" in raw and "recipe" in raw:
        raise ConfigError(f"{path} is a sweep spec (a grid of runs), not a training recipe; run it with "
                          f"`tfdistill sweep {path}`")
    if overrides:
        extra = parse_overrides(overrides)
        _adapt_method_section(raw, extra)
        raw = OmegaConf.merge(raw, extra)
    augment = OmegaConf.select(raw, "data.augment", default=None)
    if isinstance(augment, str):  # data.augment=crop,flip (or one name): a list, as the schema wants
        raw.data.augment = [a.strip() for a in augment.split(",") if a.strip()]
    return build_config(raw)


def _adapt_method_section(base: DictConfig, overrides: DictConfig) -> None:
    """When the overrides switch a recipe to another method, adapt the recipe's method section to it (see
    :func:`adapt_method_section`). Settings given in the overrides themselves are always validated."""
    new = OmegaConf.select(overrides, "method.name", default=None)
    if new is not None and "method" in base:
        base.method = adapt_method_section(base.method, str(new))


def adapt_method_section(section: Any, method: str) -> DictConfig:
    """A recipe's ``method`` section made valid for ``method``: unchanged if it already names ``method``;
    otherwise only the sub-sections of components that ``method`` has are kept, and the scalar fields
    (``ce_weight``, ``label_smoothing``) revert to ``method``'s own defaults. So ``cifar100/paper`` (TFD settings)
    with ``method.name=ce`` drops ``method.tfd``, while ``method.name=tfd+kd`` keeps the recipe's TFD settings."""
    from .methods import resolve_preset

    if isinstance(section, str):
        section = OmegaConf.create({"name": section})
    if not isinstance(section, DictConfig):
        return OmegaConf.create({"name": method})
    if str(section.get("name", "")) == method:
        return section
    comps = set(resolve_preset(method).components)
    keep = {k: OmegaConf.to_container(section[k]) for k in section.keys()
            if k in comps and isinstance(section[k], DictConfig)}
    return OmegaConf.create({"name": method, **keep})


def build_config(raw: DictConfig | dict) -> Config:
    """Validate a raw mapping against the schema, including the per-method schema."""
    from .methods import method_schema  # late import: methods import config types

    raw = OmegaConf.create(raw) if not isinstance(raw, DictConfig) else raw
    method_raw = raw.get("method", None)
    if method_raw is None:
        method_raw = OmegaConf.create({"name": "ce"})
    elif isinstance(method_raw, str):
        method_raw = OmegaConf.create({"name": method_raw})
    if not isinstance(method_raw, DictConfig):
        raise ConfigError("config key 'method' must be a mapping with a 'name' (e.g. method.name=tfd)")
    if "name" not in method_raw:  # e.g. only method.label_smoothing=0.1 given: the default method, ce
        method_raw = OmegaConf.merge({"name": "ce"}, method_raw)
    method_name = str(method_raw.name)
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, False)
    schema.method = OmegaConf.structured(method_schema(method_name))
    OmegaConf.set_struct(schema, True)
    for free in (schema.model.kwargs, schema.teacher.kwargs):  # constructor arguments: any key (model.kwargs.img_size=32)
        OmegaConf.set_struct(free, False)
    body = OmegaConf.masked_copy(raw, [k for k in raw.keys() if k != "method"]) if "method" in raw else raw
    try:
        cfg = OmegaConf.merge(schema, body)
    except OmegaConfBaseException as exc:
        raise _fail(exc, schema=schema) from None
    try:
        cfg.method = OmegaConf.merge(schema.method, method_raw)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "")
        part = key.split(".")[1] if key.count(".") >= 1 else ""
        from .methods import DISTILLERS

        if part in DISTILLERS and part not in schema.method:
            raise ConfigError(f"config key {key!r} belongs to the '{part}' component, which method "
                              f"{method_name!r} does not use; set method.name={part} (or a preset with it, "
                              f"see `tfdistill methods`)") from None
        raise _fail(exc, schema=schema) from None
    _check(cfg)
    _absolute_paths(cfg)
    return cfg  # type: ignore[return-value]


PATH_KEYS = ("data.root", "teacher.checkpoint", "model.init_checkpoint")
"""Config keys holding file paths: stored absolute, so a run's config.yaml (and checkpoints) work from any folder."""


def _absolute_paths(cfg: Any) -> None:
    """Make the :data:`PATH_KEYS` absolute (relative to the current folder, ``~`` expanded); empty values and
    ``torchvision:<Weights>`` names stay as they are."""
    import os

    for key in PATH_KEYS:
        section, leaf = key.split(".")
        value = str(cfg[section][leaf])
        if value and not value.startswith("torchvision:"):
            cfg[section][leaf] = os.path.abspath(os.path.expanduser(value))


def _check(cfg: Any) -> None:
    choices = {
        "engine.precision": (cfg.engine.precision, ("auto", "fp32", "bf16", "fp16")),
        "schedule.name": (cfg.schedule.name, ("multistep", "cosine", "poly", "constant")),
        "optim.name": (cfg.optim.name, ("sgd",)),
        "data.loader": (cfg.data.loader, ("auto", "device", "dataloader")),
        "data.on_bad_file": (cfg.data.on_bad_file, ("error", "skip")),
    }
    from .data.base import check_augments  # the data layer owns the augmentation names

    check_augments(list(cfg.data.augment or []))
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"bad value for config key {key!r}: {value!r}; valid: {', '.join(valid)}")
    for key in ("channels_last", "cuda_graphs"):  # auto | true | false (resolved by tfdistill.engine.auto)
        v = cfg.engine[key]
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            cfg.engine[key] = v.strip().lower() == "true"
        elif not (isinstance(v, bool) or v == "auto"):
            raise ConfigError(f"bad value for config key 'engine.{key}': {v!r}; valid: auto, true, false")
    if cfg.epochs < 1:
        raise ConfigError(f"bad value for config key 'epochs': {cfg.epochs}; must be >= 1")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"bad value for config key 'data.batch_size': {cfg.data.batch_size}; must be >= 1")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"bad value for config key 'optim.lr': {cfg.optim.lr}; must be > 0")
    ranges = {  # key: (value, low, high, what)
        "method.label_smoothing": (cfg.method.label_smoothing, 0.0, 1.0, "in [0, 1)"),
        "method.ce_weight": (cfg.method.ce_weight, 0.0, None, ">= 0"),
        "data.image_size": (cfg.data.image_size, 0, None, ">= 0 (0: the dataset's own size)"),
        "data.train_subset": (cfg.data.train_subset, 0, None, ">= 0 (0: all)"),
        "data.test_subset": (cfg.data.test_subset, 0, None, ">= 0 (0: all)"),
        "data.eval_batch_size": (cfg.data.eval_batch_size, 1, None, ">= 1"),
        "optim.momentum": (cfg.optim.momentum, 0.0, None, ">= 0"),
        "optim.weight_decay": (cfg.optim.weight_decay, 0.0, None, ">= 0"),
        "engine.eval_every": (cfg.engine.eval_every, 1, None, ">= 1"),
        "engine.eval_last": (cfg.engine.eval_last, 0, None, ">= 0"),
    }
    for key, (value, low, high, what) in ranges.items():
        if value < low or (high is not None and value >= high):
            raise ConfigError(f"bad value for config key {key!r}: {value}; must be {what}")
    name = str(cfg.name)
    if name and (name in (".", "..") or "/" in name or "\\" in name):
        raise ConfigError(f"bad value for config key 'name': {name!r}; a run name is a folder name inside out_dir "
                          f"(no '/'); use out_dir=... for the parent folder")
    bad_saves = [e for e in (cfg.engine.save_epochs or []) if not 1 <= e <= cfg.epochs]
    if bad_saves:
        raise ConfigError(f"bad value for config key 'engine.save_epochs': {bad_saves} outside 1..{cfg.epochs} "
                          f"(epochs are 1-based)")
    if cfg.seeds is not None and len(cfg.seeds) == 0:
        raise ConfigError("seeds=[] is empty; give at least one seed, e.g. seeds=[0,1,2]")
    taps = cfg.model.taps
    if not (taps == "auto" or isinstance(taps, (list, ListConfig))):
        raise ConfigError(f"bad value for config key 'model.taps': {taps!r}; valid: 'auto' or a list of module names")


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" + ("" if int(n) == 1 else "s")


def config_notes(cfg: Any) -> list[str]:
    """Valid but probably unintended settings, as ``note: ...`` lines for the run's log (not errors: a recipe's
    schedule stays valid when a smoke test shortens ``epochs``)."""
    notes = []
    if cfg.schedule.name == "multistep":
        late = [int(m) for m in cfg.schedule.milestones if int(m) >= int(cfg.epochs)]
        if late:
            notes.append(f"note: schedule.milestones {late} never take effect in a run of "
                         f"{plural(int(cfg.epochs), 'epoch')} (a milestone m lowers the lr from epoch m+1 on)")
    if int(cfg.schedule.warmup_epochs) >= int(cfg.epochs):
        notes.append(f"note: schedule.warmup_epochs={int(cfg.schedule.warmup_epochs)} covers the whole run of "
                     f"{plural(int(cfg.epochs), 'epoch')}")
    return notes


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
