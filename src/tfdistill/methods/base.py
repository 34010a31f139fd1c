"""The method interface: what the engine trains with.

The engine knows exactly one thing about methods: a :class:`Method` maps a batch to ``(logits, terms)``, where
``terms`` is a dict of named, already weighted loss terms that the engine sums, logs and backpropagates. A Method
is assembled from a *preset* (registered name) out of zero or more :class:`Distiller` components -- the plug-in
units (TFD, KD, FitNets, CRD, ...). Combinations such as ``tfd+kd`` are just several components sharing one
forward pass of the student (and teacher); no component knows about another.

Writing a new method:

>>> @register_distiller("mine")
... class Mine(Distiller):
...     @dataclass
...     class Params:
...         weight: float = 1.0
...     uses = Uses(student_feats=True)
...     coupling = "per-sample"
...     def terms(self, out: StepOutputs) -> dict[str, Tensor]:
...         return {"mine": self.params.weight * my_loss(out.feats_s)}
>>> register_preset("mine", ["mine"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Uses:
    """What a component needs from the forward pass."""

    teacher: bool = False
    student_feats: bool = False
    teacher_feats: bool = False
    embedding: bool = False
    """Penultimate (pooled) features of the student and, with a teacher, of the teacher."""
    paired_batches: bool = False
    """Training batches in which every sample comes with a partner of the same class (CS-KD): the engine asks the
    data layer for them, and :class:`Method` runs the student on the partners too, without gradient
    (``StepOutputs.logits_pair``); everything else in the step sees only the first half."""
    mixed_pairs: bool = False
    """In training, every sample also comes mixed with a partner of the same batch, ``lam x + (1 - lam) x[perm]``
    (MixSKD): the component draws ``lam`` and ``perm`` (:meth:`Distiller.draw_mix`, from a stream seeded by the
    run's seed and the epoch), :class:`Method` runs the student once on ``[x; x_mix]`` (BatchNorm sees both halves,
    as MixSKD's code) and hands the second half's outputs and the draws to the components (``StepOutputs.logits_mix``,
    ``feats_mix``, ``mix_lam``, ``mix_perm``); everything else in the step sees only the first half."""

    def __or__(self, other: "Uses") -> "Uses":
        return Uses(*(a or b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[bool, ...]:
        return (self.teacher, self.student_feats, self.teacher_feats, self.embedding, self.paired_batches,
                self.mixed_pairs)


@dataclass
class FeatureInfo:
    """Shapes seen on an example batch, so components can size their modules at construction time."""

    names: list[str]
    shapes: list[tuple[int, int, int]]
    """(C, H, W) of each tapped feature map, shallow to deep."""
    embedding_dim: int = 0


@dataclass
class BuildContext:
    """Everything a component may need to construct itself."""

    num_classes: int
    num_train: int
    epochs: int
    student: FeatureInfo | None = None
    teacher: FeatureInfo | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    student_model: nn.Module | None = None
    """The student network itself (e.g. for a pre-stage that trains part of it). Do not register it as a
    submodule of a component: the Method owns it."""
    teacher_model: nn.Module | None = None
    """The frozen teacher network (e.g. to check its architecture). Never a submodule of a component either."""
    example: Optional[Tensor] = None
    """One input batch on the device (for components that watch a forward pass of the student while they build
    themselves, e.g. ONE's branches; run it in eval mode without gradients)."""
    seed: int = 0
    """The run's seed (``cfg.seed``): components that draw random numbers during training seed their streams from it
    and the epoch (:meth:`Distiller.on_epoch_start`), so a resumed or packed run draws what it would alone."""


@dataclass
class StepOutputs:
    """One forward pass, as the components see it."""

    images: Tensor
    targets: Tensor
    index: Optional[Tensor]
    logits_s: Tensor
    feats_s: list[Tensor] = field(default_factory=list)
    emb_s: Optional[Tensor] = None
    logits_t: Optional[Tensor] = None
    feats_t: list[Tensor] = field(default_factory=list)
    emb_t: Optional[Tensor] = None
    logits_pair: Optional[Tensor] = None
    """With ``Uses.paired_batches`` in training: the student's logits (no gradient) on each sample's same-class
    partner, row for row."""
    logits_mix: Optional[Tensor] = None
    """With ``Uses.mixed_pairs`` in training: the student's logits on the mixed images (with gradient), row for
    row; ``feats_mix`` / ``emb_mix`` likewise."""
    feats_mix: list[Tensor] = field(default_factory=list)
    emb_mix: Optional[Tensor] = None
    mix_lam: Optional[Tensor] = None
    """The mixing coefficient of this batch (a 0-d float32 tensor on the device)."""
    mix_perm: Optional[Tensor] = None
    """Row ``i`` of the mixed half is ``lam x[i] + (1 - lam) x[mix_perm[i]]`` (int64, on the device)."""


@dataclass
class PreStage:
    """A training stage that runs before the main one (FitNets hint training, AB initialisation, FT paraphraser).

    The engine trains ``modules`` (their parameters only) for ``epochs`` epochs with the run's optimizer settings,
    minimising the sum of ``loss(out)`` terms; ``out`` comes from the same forward pass as the main stage.
    """

    name: str
    epochs: int
    modules: Sequence[nn.Module]
    loss: Callable[[StepOutputs], dict[str, Tensor]]
    lr: Optional[float] = None
    """Learning rate (None: the run's optim.lr)."""


class Distiller(nn.Module):
    """A plug-in loss component. Subclasses define ``Params`` (a dataclass), ``uses`` and :meth:`terms`.

    Parameters/buffers of a component (regressors, embeddings, memory banks) are trained and checkpointed by
    the engine along with the student.
    """

    Params: ClassVar[type] = object
    uses: ClassVar[Uses] = Uses()
    tfd_plan: ClassVar[bool] = False
    """The component distils TFD's pairs of the tap plan (depth pairs, width halves): the run header's tap plan then
    shows which TFD terms each map feeds (other feature methods use the maps without that plan)."""
    coupling: ClassVar[str] = ""
    """``"per-sample"``: every term is a mean over per-sample terms, so under gradient accumulation the sub-batches'
    update equals the full batch's (BatchNorm aside); ``"batch-coupled"``: a term ranks, normalises or relates
    samples across the batch (TFD's width term ranks channels over the whole batch; RKD, SP, CC relate samples),
    so it depends on how the batch is split. Every component declares it (a test checks); :func:`.registry.method_coupling`
    combines them for a method."""
    dense: ClassVar[bool] = False
    """Its terms are defined per position, so they apply to dense prediction (segmentation): on feature maps (TFD,
    FitNets) or on logits per pixel (KD). Components that are not (they use one prediction per image: CRD's
    embeddings, CS-KD's class partners, ...) say why in :attr:`dense_refusal`; ``build_method`` refuses them for a
    dense task in one line."""
    dense_refusal: ClassVar[str] = "its loss is defined on one prediction per image, not per pixel"
    needs: ClassVar[tuple[str, ...]] = ()
    """What the component needs beyond one batch of images and labels: ``"num_train"`` (the training set size, e.g. a
    memory row per sample), ``"epochs"`` (the run's length, e.g. a schedule over it), ``"index"`` (every sample's
    dataset index in each batch). :func:`tfdistill.create_method` asks for what is declared here."""
    needs_gather: ClassVar[bool] = False
    """True for components whose buffers must stay identical across data-parallel ranks (CRD's memory bank). The
    engine then sets :attr:`gather` and keeps those buffers out of DDP's per-step broadcast; the component applies
    the all-gathered (global-batch) update itself."""
    gather: Optional[Callable[[Tensor], Tensor]] = None
    """Set by a data-parallel engine when :attr:`needs_gather`: concatenates a tensor's rows over the ranks in rank
    order. None on a single process."""

    host_draws: ClassVar[bool] = False
    """True for components that draw random numbers on the host in every training step (MixSKD's mixing): a CUDA
    graph would replay the captured draws, so a method with such a component is never captured
    (:meth:`Method.capturable`)."""

    def __init__(self, params: Any, ctx: BuildContext) -> None:
        super().__init__()
        self.params = params

    def draw_mix(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """For ``Uses(mixed_pairs=True)``: this step's ``(lam, perm)`` for a batch of ``n`` (see :class:`Uses`)."""
        raise NotImplementedError(f"{type(self).__name__} declares Uses(mixed_pairs=True) but no draw_mix")

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each main-stage epoch (0-based); update schedules here, as tensors in place. Do not freeze
        modules here: declare them in :meth:`frozen_in_main`."""

    def frozen_in_main(self) -> list[nn.Module]:
        """Modules of this component that the main stage does not train (e.g. FT's paraphraser, trained by its
        pre-stage only). :class:`Method` freezes them (``requires_grad_(False)``) when the main stage starts and
        leaves them out of the main stage's trainable parameters; under DDP they are ignored by the wrapper, which
        cannot reduce parameters that have gradients in one stage and none in another."""
        return []

    def pre_stages(self) -> list[PreStage]:
        return []

    def describe(self) -> dict[str, Any]:
        """Settings this component resolved at run time (e.g. TFD's fused losses), for ``summary.json``."""
        return {}
