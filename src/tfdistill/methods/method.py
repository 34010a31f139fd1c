"""The engine-facing :class:`Method`: one forward pass of student (and frozen teacher), components' terms."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import FeatureTap
from ..tasks import Task, get_task
from .base import BuildContext, Distiller, FeatureInfo, PreStage, StepOutputs, Uses
from .registry import DISTILLERS, method_schema, method_uses, resolve_preset


class Method(nn.Module):
    """Student (+ frozen teacher) forward pass and the sum of named loss terms.

    ``forward(images, targets, index=None) -> (logits, terms)``: ``terms`` holds the weighted cross-entropy
    (``"ce"``) and every component's weighted terms; the engine sums them. The student and the components'
    modules are submodules (trained, checkpointed, wrapped for data parallelism); the teacher is deliberately
    *not* a submodule: it is frozen, kept in eval mode, run under ``no_grad`` and never handed to an optimizer
    or a DDP wrapper.
    """

    def __init__(
        self,
        student: nn.Module,
        params: Any,
        distillers: dict[str, Distiller],
        *,
        uses: Uses,
        teacher: nn.Module | None = None,
        student_tap: FeatureTap | None = None,
        teacher_tap: FeatureTap | None = None,
        task: Task | None = None,
    ) -> None:
        super().__init__()
        self.task = task if task is not None else get_task("classification")
        """The supervised loss on the logits (``"ce"``: per image, per pixel) is the task's (:mod:`tfdistill.tasks`)."""
        self.student = student
        self.distillers = nn.ModuleDict(distillers)
        self.params = params
        self.uses = uses
        self.ce_weight = float(params.ce_weight)
        self.label_smoothing = float(params.label_smoothing)
        self.__dict__["teacher"] = teacher  # not a submodule on purpose (see class docs)
        self.__dict__["student_tap"] = student_tap
        self.__dict__["teacher_tap"] = teacher_tap
        self.__dict__["student_call"] = student  # what runs the student: itself, or a wrapper given to bind()
        if teacher is not None:
            freeze(teacher)

    # ----------------------------------------------------------------- outside the harness
    def bind(self, wrapped: Callable[..., Any]) -> "Method":
        """Run the student's forward passes through ``wrapped`` -- its compiled, DDP or Accelerate-prepared form --
        instead of the plain student (the tap plan, made on the plain student, stays). Returns ``self``."""
        self.__dict__["student_call"] = wrapped
        if self.student_tap is not None:
            _bind_tap(self.student_tap, wrapped)
        return self

    @contextmanager
    def capture(self) -> Iterator["Captured"]:
        """``with method.capture() as cap: out = model(x)``: records the student's tapped features (and embedding)
        of the forward pass someone else makes inside the block -- a framework's own call of the model -- for
        :meth:`terms_from`. Without taps in use the block records nothing (and needs nothing)."""
        cap = Captured()
        if self.student_tap is None:
            yield cap
            return
        with _tap_capture(self.student_tap, cap):
            yield cap

    def terms_from(self, captured: "Captured", logits: Tensor, targets: Tensor, *, images: Tensor | None = None,
                   index: Tensor | None = None) -> dict[str, Tensor]:
        """The components' weighted terms -- no cross-entropy: the caller has its own -- for a student forward pass
        made elsewhere inside :meth:`capture` (``captured``), with its ``logits``; ``images`` feed the teacher
        (needed when the method has one), ``index`` is each sample's dataset index (PS-KD, CRD)."""
        if self.uses.teacher and images is None:
            raise ConfigError(f"method {self.params.name!r} runs a teacher: pass the batch's images (images=...)")
        if index is None and self.needs_index():
            raise ConfigError(f"method {self.params.name!r} needs each sample's dataset index in every batch: "
                              "pass index=")
        logits_t, feats_t, emb_t = self.run_teacher(images) if self.teacher is not None else (None, [], None)
        needs_maps = self.uses.student_feats or self.uses.embedding
        if self.student_tap is not None and captured.error and needs_maps:
            raise ConfigError(captured.error)
        missing = (self.uses.student_feats and not captured.features) or (self.uses.embedding and
                                                                             captured.embedding is None)
        if self.student_tap is not None and missing:
            raise ConfigError(f"method {self.params.name!r} saw no features of the student: the model's forward "
                              "pass must run inside `with method.capture():`, on the module the method was made for")
        out = StepOutputs(images, targets, index, logits, captured.features, captured.embedding,  # type: ignore
                          logits_t, feats_t, emb_t, None)
        return self.terms(out, ce=False)

    # ----------------------------------------------------------------- forward
    def run_student(self, images: Tensor) -> tuple[Tensor, list[Tensor], Tensor | None]:
        tap = self.student_tap
        if tap is None:
            return logits_of(self.student_call(images)), [], None
        logits, feats = tap(images)
        return logits_of(logits), feats, tap.embedding

    @torch.no_grad()
    def run_teacher(self, images: Tensor) -> tuple[Tensor | None, list[Tensor], Tensor | None]:
        if self.teacher is None:
            return None, [], None
        if self.teacher.training:
            self.teacher.eval()
        tap = self.teacher_tap
        if tap is None:
            return logits_of(self.teacher(images)), [], None
        logits, feats = tap(images)
        return logits_of(logits), feats, tap.embedding

    def outputs(self, images: Tensor, targets: Tensor, index: Tensor | None = None) -> StepOutputs:
        pair = None
        if self.uses.paired_batches and images.shape[0] == 2 * targets.shape[0]:
            # a paired batch (see tfdistill.data.base.Batch): the second half holds the same-class partners
            images, pair = images[: targets.shape[0]], images[targets.shape[0]:]
        logits_t, feats_t, emb_t = self.run_teacher(images)
        mix = self._mixer() if self.uses.mixed_pairs and self.training else None
        if mix is None:
            logits, feats, emb = self.run_student(images)
        else:  # one forward pass over [x; lam x + (1 - lam) x[perm]] (Uses.mixed_pairs)
            n = images.shape[0]
            lam, perm = mix.draw_mix(n, images.device)
            lam_x = lam.to(images.dtype)
            both = torch.cat([images, lam_x * images + (1 - lam_x) * images.index_select(0, perm)])
            logits, feats, emb = self.run_student(both)
            mixed = (logits[n:], [f[n:] for f in feats], None if emb is None else emb[n:])
            logits, feats, emb = logits[:n], [f[:n] for f in feats], None if emb is None else emb[:n]
        logits_pair = None
        if pair is not None:
            with torch.no_grad():  # after the main forward, as CS-KD's code (BatchNorm sees both, in this order)
                logits_pair = self.student_call(pair)
        out = StepOutputs(images, targets, index, logits, feats, emb, logits_t, feats_t, emb_t, logits_pair)
        if mix is not None:
            out.logits_mix, out.feats_mix, out.emb_mix = mixed
            out.mix_lam, out.mix_perm = lam, perm
        return out

    def _mixer(self) -> Distiller:
        """The component that draws the mixing of ``Uses(mixed_pairs=True)`` (the first that declares it)."""
        return next(c for c in self.distillers.values() if type(c).uses.mixed_pairs)

    def capturable(self) -> bool:
        """Whether a CUDA graph may capture this method's training step: not when a component draws random numbers
        on the host in every step (:attr:`~.base.Distiller.host_draws`; the graph would replay one draw)."""
        return not any(c.host_draws for c in self.distillers.values())

    def forward(self, images: Tensor, targets: Tensor, index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.outputs(images, targets, index)
        return out.logits_s, self.terms(out)

    def terms(self, out: StepOutputs, ce: bool = True) -> dict[str, Tensor]:
        """The weighted terms of one forward pass: the cross-entropy (``ce``) and every component's."""
        targets = out.targets
        terms: dict[str, Tensor] = {}
        if ce and self.ce_weight:
            ce = self.task.loss(out.logits_s, targets, label_smoothing=self.label_smoothing)
            terms["ce"] = self.ce_weight * ce
        for comp in self.distillers.values():
            for k, v in comp.terms(out).items():
                if k in terms:
                    raise RuntimeError(f"loss term {k!r} is produced twice")
                terms[k] = v
        return terms

    def needs_index(self) -> bool:
        """Whether a component addresses per-sample state by each sample's dataset index (PS-KD, CRD)."""
        return any("index" in comp.needs for comp in self.distillers.values())

    # ----------------------------------------------------------------- engine interface
    # Everything the engine needs from a method is asked here; the engine never looks inside ``distillers``.
    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters owned by the method (not the student's), whichever stage trains them."""
        return [p for p in self.distillers.parameters() if p.requires_grad]

    def trainable_parameters(self, stage: str = "main") -> list[nn.Parameter]:
        """The parameters an optimizer for ``stage`` updates: ``"main"`` -- the student's and the components'
        except those a component declares :meth:`~.base.Distiller.frozen_in_main`; a pre-stage's name (see
        :meth:`pre_stages`) -- the trainable parameters of that stage's modules."""
        if stage == "main":
            frozen = {id(p) for p in self._frozen_in_main_params()}
            return list(self.student.parameters()) + [p for p in self.extra_parameters() if id(p) not in frozen]
        for s in self.pre_stages():
            if s.name == stage:
                return [p for m in s.modules for p in m.parameters() if p.requires_grad]
        raise KeyError(f"no training stage {stage!r}; stages: main, {', '.join(s.name for s in self.pre_stages())}")

    def _frozen_in_main_params(self) -> list[nn.Parameter]:
        return [p for comp in self.distillers.values() for m in comp.frozen_in_main() for p in m.parameters()]

    def frozen_in_main(self) -> list[str]:
        """Names (as in ``named_parameters()``) of the parameters the main stage keeps frozen."""
        ids = {id(p) for p in self._frozen_in_main_params()}
        return [n for n, p in self.named_parameters() if id(p) in ids]

    def on_epoch_start(self, epoch: int) -> None:
        """Before each main-stage epoch: freeze what the main stage does not train (idempotent), then the
        components' schedules."""
        for p in self._frozen_in_main_params():
            p.requires_grad_(False)
        for comp in self.distillers.values():
            comp.on_epoch_start(epoch)

    def self_synced_buffers(self) -> list[str]:
        """Names (as in ``named_buffers()``) of buffers that components keep identical across data-parallel ranks
        themselves, by applying the all-gathered global-batch update on every rank (CRD's memory bank): a DDP
        wrapper must broadcast them once and then leave them alone (an ImageNet bank is over a GB)."""
        return [f"distillers.{c}.{b}" for c, comp in self.distillers.items() if comp.needs_gather
                for b, _ in comp.named_buffers()]

    def ddp_ignored(self) -> list[str]:
        """Parameter and buffer names a DDP wrapper must ignore: :meth:`self_synced_buffers` and the parameters
        frozen in the main stage (DDP cannot follow a parameter whose ``requires_grad`` changes after wrapping)."""
        return self.self_synced_buffers() + self.frozen_in_main()

    def set_gather(self, fn: Callable[[Tensor], Tensor] | None) -> None:
        """Give components that need it (``needs_gather``) the all-gather over data-parallel ranks: ``fn``
        concatenates a tensor's rows over the ranks in rank order (None: one process)."""
        for comp in self.distillers.values():
            if comp.needs_gather:
                comp.gather = fn

    def component_state_dict(self) -> dict[str, Any]:
        """The components' state (parameters and persistent buffers), checkpointed beside the student's."""
        return self.distillers.state_dict()

    def load_component_state_dict(self, state: dict[str, Any]) -> None:
        self.distillers.load_state_dict(state)

    def pre_stages(self) -> list[PreStage]:
        return [s for comp in self.distillers.values() for s in comp.pre_stages()]

    def describe_taps(self) -> list[str]:
        """Per feature tap in use: one line (module names and (C, H, W) shapes), then its plan (module, map,
        stride, the rule that chose it and, where a component distils TFD's pairs, the TFD terms it feeds), for the
        run header."""
        lines = []
        tfd = any(getattr(comp, "tfd_plan", False) for comp in self.distillers.values())
        for who, tap in (("student", self.student_tap), ("teacher", self.teacher_tap)):
            if tap is None:
                continue
            lines.append(f"feature taps ({who}): {tap.describe()}")
            plan = tap.plan()
            if plan is not None and plan.taps:
                lines += plan.lines(tfd=tfd and who == "student")
        return lines

    def describe(self) -> dict[str, Any]:
        return {
            "components": list(self.distillers.keys()),
            # training-only modules (regressors, embeddings, auxiliary branches/heads): not in the deployed student
            "aux_params": sum(p.numel() for p in self.distillers.parameters()),
            "student_taps": self.student_tap.names if self.student_tap else [],
            "teacher_taps": self.teacher_tap.names if self.teacher_tap else [],
            **{name: info for name, comp in self.distillers.items() if (info := comp.describe())},
        }


def logits_of(output: Any) -> Tensor:
    """A classifier's logits from what its forward returned: the tensor itself, a model output's ``logits`` (Hugging
    Face ``ImageClassifierOutput``) or the first element of a tuple."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ConfigError(f"the model returned {type(output).__name__}, not logits: a method needs a classifier whose "
                      "forward returns logits (a tensor, an output with .logits, or a tuple starting with them)")


@dataclass
class Captured:
    """What :meth:`Method.capture` recorded: the student's tapped maps (shallow to deep) and its embedding."""

    features: list[Tensor] = field(default_factory=list)
    embedding: Tensor | None = None
    error: str | None = None
    """Why nothing was recorded (the tap's one line), raised by :meth:`Method.terms_from` if features are needed."""


# ----------------------------------------------------------------- the one adapter to FeatureTap's capture API
@contextmanager
def _tap_capture(tap: FeatureTap, cap: Captured) -> Iterator[None]:
    """Fill ``cap`` with the maps ``tap`` records during the block (``tap.capture()``, ``tap.features``)."""
    with tap.capture():
        yield
    try:
        cap.features, cap.embedding = list(tap.features), tap.embedding
    except ConfigError as exc:  # nothing recorded (e.g. compiled code that predates the tap): said when needed
        cap.error = str(exc)


def _bind_tap(tap: FeatureTap, wrapped: Callable[..., Any]) -> None:
    tap.bind(wrapped)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _feature_info(tap: FeatureTap, example: Tensor) -> FeatureInfo:
    model = tap.model
    tap.discover(example)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, feats = tap(example)
    finally:
        model.train(was)
    emb = tap.embedding
    return FeatureInfo(tap.names, [tuple(f.shape[1:]) for f in feats], int(emb.shape[1]) if emb is not None else 0)


def plain_section(section: Any, schema: type | None = None) -> Any:
    """A config section as plain Python: an OmegaConf node becomes its schema's dataclass instance (nested
    sections their dataclasses, lists lists; ``OmegaConf.to_object``), anything else is returned as it is.

    An untyped node (``OmegaConf.create({...})``) is first merged into ``schema``, which fills in the defaults and
    checks the keys. The method layer converts ``cfg.method`` once, here at its boundary (:func:`build_method`), so no
    module of a built :class:`Method` holds an OmegaConf container: ``torch.compile`` (dynamo) cannot trace
    OmegaConf's attribute access, while a dataclass's fields are constants to it."""
    if isinstance(section, ListConfig):
        return OmegaConf.to_container(section, resolve=True)
    if not isinstance(section, DictConfig):
        return section
    try:
        if schema is not None and _untyped(section):
            section = OmegaConf.merge(OmegaConf.structured(schema), section)
        return OmegaConf.to_object(section)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad method config: {str(exc).strip().splitlines()[0]}") from None


def _untyped(section: Any) -> bool:
    return isinstance(section, DictConfig) and OmegaConf.get_type(section) is dict


def build_method(
    student: nn.Module,
    params: Any,
    *,
    example: Tensor,
    num_classes: int,
    num_train: int,
    epochs: int,
    teacher: nn.Module | None = None,
    student_taps: str | Sequence[str] = "auto",
    teacher_taps: str | Sequence[str] = "auto",
    student_name: str | None = None,
    teacher_name: str | None = None,
    seed: int = 0,
    task: Task | None = None,
) -> Method:
    """Assemble the method named ``params.name`` for ``student`` (and ``teacher``).

    ``params`` is the method's config section: its schema's dataclass (:func:`~.registry.method_schema`) or an
    OmegaConf node of it (``cfg.method``), converted once by :func:`plain_section`; the Method and its components
    hold plain objects only.

    ``example`` is one input batch on the right device; it is used (in eval mode, without gradients) to discover
    feature taps and the shapes components size their modules by. ``seed``: the run's seed, for components that draw
    random numbers while training (:attr:`~.base.BuildContext.seed`).

    ``task`` (default: classification): what the labels are; the ``ce`` term is its loss, and a component that does
    not apply to it (:attr:`~.base.Distiller.dense` for a dense task) is refused in one line naming why.
    """
    task = task if task is not None else get_task("classification")
    # cfg.method -> its dataclass, once (an untyped node gets the schema's defaults first)
    params = plain_section(params, method_schema(str(params.name)) if _untyped(params) else None)
    preset = resolve_preset(params.name)
    for c in preset.components:
        comp = DISTILLERS.get(c)
        if task.dense and not comp.dense:
            raise ConfigError(f"method {params.name!r} does not apply to {task.name}: {comp.dense_refusal} "
                              f"(methods for {task.name}: {', '.join(dense_methods())})")
    uses = method_uses(params.name)
    if uses.teacher and teacher is None:
        raise ConfigError(f"method {params.name!r} needs a teacher: set teacher.model and teacher.checkpoint")
    if teacher is not None and not uses.teacher:
        raise ConfigError(f"method {params.name!r} uses no teacher, but teacher.model is set; remove it "
                          f"or choose a teacher-based method (e.g. kd, tfd+kd)")
    s_tap = t_tap = None
    s_info = t_info = None
    if uses.student_feats or uses.embedding:
        s_tap = FeatureTap(student, student_taps, embedding=uses.embedding, model_name=student_name,
                           min_maps=2 if uses.student_feats else 0)
        s_info = _feature_info(s_tap, example)
    if teacher is not None and (uses.teacher_feats or uses.embedding):
        freeze(teacher)
        t_tap = FeatureTap(teacher, teacher_taps, embedding=uses.embedding, model_name=teacher_name,
                           min_maps=2 if uses.teacher_feats else 0)
        t_info = _feature_info(t_tap, example)
    ctx = BuildContext(num_classes=num_classes, num_train=num_train, epochs=epochs, student=s_info,
                       teacher=t_info, device=example.device, student_model=student, teacher_model=teacher,
                       example=example, seed=int(seed))
    comps = {c: DISTILLERS.get(c)(plain_section(getattr(params, c), DISTILLERS.get(c).Params), ctx)
             for c in preset.components}  # (sections of a params object that is not itself a config node)
    for c in comps.values():
        c.to(example.device)
    return Method(student, params, comps, uses=uses, teacher=teacher, student_tap=s_tap, teacher_tap=t_tap,
                  task=task)


def dense_methods() -> list[str]:
    """The registered methods whose components all apply to dense (per-pixel) prediction."""
    from .registry import PRESETS

    return sorted(n for n in PRESETS.names() if all(DISTILLERS.get(c).dense for c in resolve_preset(n).components))
