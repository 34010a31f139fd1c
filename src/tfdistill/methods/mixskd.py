"""MixSKD as a method (see :mod:`..losses.mixskd` for the loss and the authors' code's departures from the paper).

What the component adds to the student (all method modules: trained with it unless frozen below, checkpointed with
the method state, counted in ``summary.json``'s ``method_info.aux_params``, never exported):

* an auxiliary branch on every tapped stage but the last: fresh copies of the student's *later* stages (PyTorch's
  default initialisation, as the authors' ``Auxiliary_Classifier`` builds new ones), global average pooling and a
  linear classifier. The copies are checked at build time: with the student's own weights they must reproduce its
  last stage from stage ``i`` on the example batch (the stages are chained module to module), else one ConfigError;
* the feature-ensemble self-teacher (:class:`~tfdistill.losses.mixskd.SelfTeacher`) on the ``S`` final-stage maps;
* one discriminator per stage (:class:`~tfdistill.losses.mixskd.Discriminator`).

Mixing (``Uses(mixed_pairs=True)``): every training step draws ``lam ~ Beta(alpha, alpha)`` and a permutation of the
batch (:meth:`MixSKD.draw_mix`) from a generator re-seeded at every epoch from the run's seed and the epoch (the way
the data layer seeds its streams), so a run resumed from ``last.pt`` or packed with others draws exactly what it would
alone; the :class:`~tfdistill.methods.Method` runs the student once on ``[x; x_mix]``. The draws happen on the host
each step, so the step is never captured in a CUDA graph (``Distiller.host_draws``).

Presets: ``mixskd`` -- the authors' CIFAR script (``main_mixskd_cifar.py``: mixup alpha 0.4, T 3, the mixup
cross-entropy *not* added, the discriminators and -- in consequence -- the self-teacher never trained: they are frozen
here, which is what their optimizer does to parameters without gradient); ``mixskd_imagenet`` -- their ImageNet
script (``scripts/main_mixskd_imagenet.sh``: alpha 0.2, T 3, mixup cross-entropy added, the self-teacher trained).
``method.mixskd.mixup_ce=true`` gives the paper's loss on CIFAR; ``train_discriminators=true`` trains the
discriminators on the same loss. Their recipes (SGD with Nesterov, 5 warm-up epochs, lr 0.1, 205 epochs on CIFAR-100)
are the recipe's business, not the method's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.base import mix_seed
from ..errors import ConfigError
from ..losses.mixskd import Discriminator, SelfTeacher, interpolate, mixskd_terms
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses

PAPER = ("Yang, Zhou, Wang, An & Xu, MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition, "
         "ECCV 2022")
TAG_MIX = 0x313D
"""The stream tag of the mixing draws (``mix_seed(seed, epoch, TAG_MIX)``), apart from the data layer's tags."""


@dataclass
class MixSKDParams:
    alpha: float = 0.4
    """Mixup's Beta(alpha, alpha) (authors' CIFAR script: 0.4; ImageNet: 0.2)."""
    T: float = 3.0
    """Temperature of the KL terms (authors: 3)."""
    mixup_ce: bool = False
    """Add the mixup cross-entropy of every classifier and of the self-teacher (paper, authors' ImageNet script);
    false: the authors' CIFAR script, which computes it but never adds it."""
    train_discriminators: bool = False
    """Train the discriminators on the same loss; false: the authors' code (a plain list: never trained)."""


@register_distiller("mixskd")
class MixSKD(Distiller):
    """Self-KD from mixup: auxiliary branches, a feature-ensemble self-teacher and discriminators on mixed pairs."""
    coupling = "batch-coupled"  # a row's terms depend on its partner in the batch
    host_draws = True

    Params = MixSKDParams
    uses = Uses(student_feats=True, mixed_pairs=True)

    def __init__(self, params: MixSKDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.alpha <= 0 or params.T <= 0:
            raise ConfigError(f"method.mixskd needs alpha > 0 and T > 0, got alpha={params.alpha}, T={params.T}")
        info, model = ctx.student, ctx.student_model
        if info is None or model is None or len(info.names) < 2 or ctx.example is None:
            got = info.names if info is not None else []
            raise ConfigError(f"mixskd needs at least two tapped stages, got {got}; set model.taps to a list of at "
                              "least two module names")
        mods = dict(model.named_modules())
        stages = [mods[n] for n in info.names]
        c_last = int(info.shapes[-1][0])
        self.branches = nn.ModuleList([_branch(model, stages, i, info.names, ctx.example)
                                       for i in range(len(stages) - 1)])
        self.heads = nn.ModuleList([nn.Linear(c_last, ctx.num_classes) for _ in range(len(stages) - 1)])
        self.teacher = SelfTeacher(c_last, len(stages), ctx.num_classes)
        self.discriminators = nn.ModuleList([Discriminator(c_last) for _ in stages])
        self.seed = int(ctx.seed)
        self._gen = torch.Generator()
        self.on_epoch_start(0)

    def frozen_in_main(self) -> list[nn.Module]:
        frozen: list[nn.Module] = []
        if not self.params.train_discriminators:
            frozen.append(self.discriminators)
        if not self.params.mixup_ce:  # its logits are only detached KD targets then: no gradient ever reaches it
            frozen.append(self.teacher)
        return frozen

    def on_epoch_start(self, epoch: int) -> None:
        self._gen.manual_seed(mix_seed(self.seed, int(epoch), TAG_MIX))

    def draw_mix(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        a = torch.full((2,), float(self.params.alpha), dtype=torch.float64)
        g = torch._standard_gamma(a, generator=self._gen)
        lam = (g[0] / g.sum()).to(torch.float32)
        perm = torch.randperm(n, generator=self._gen)
        return lam.to(device), perm.to(device)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        if out.logits_mix is None or out.mix_perm is None or out.mix_lam is None:
            if self.training:
                raise RuntimeError("mixskd needs the mixed half of the batch (StepOutputs.logits_mix): the Method "
                                   "draws it for Uses(mixed_pairs=True) in training")
            return {}
        p = self.params
        n = out.targets.shape[0]
        both = [torch.cat([a, m]) for a, m in zip(out.feats_s, out.feats_mix)]
        feats = [b(f) for b, f in zip(self.branches, both)] + [both[-1]]
        logits = [h(F.adaptive_avg_pool2d(f, 1).flatten(1)) for h, f in zip(self.heads, feats)]
        logits.append(torch.cat([out.logits_s, out.logits_mix]))
        lam, perm = out.mix_lam, out.mix_perm
        ens = self.teacher([interpolate(f[:n], lam.to(f.dtype), perm) for f in feats])
        ens_mix = self.teacher([f[n:] for f in feats])
        t = mixskd_terms(logits, feats, ens, ens_mix, out.targets, perm, lam, list(self.discriminators), p.T,
                         p.mixup_ce)
        return {f"mixskd_{k}": v for k, v in t.items()}


def _branch(model: nn.Module, stages: list[nn.Module], i: int, names: list[str], example: Tensor) -> nn.Sequential:
    """Fresh copies of stages ``i+1 ..``, checked (with the student's weights) to take stage ``i``'s output to the
    last stage's, then re-initialised."""
    branch = nn.Sequential(*[copy.deepcopy(s) for s in stages[i + 1:]])
    seen: dict[int, Tensor] = {}
    hooks = [s.register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(k, o)) for k, s in enumerate(stages)]
    was = model.training
    model.eval()
    branch.eval()
    try:
        with torch.no_grad():
            model(example)
            ok = (isinstance(seen.get(i), Tensor) and isinstance(seen.get(len(stages) - 1), Tensor)
                  and _close(branch(seen[i]), seen[len(stages) - 1]))
    except Exception:  # a stage that does not take the previous one's output as its only input
        ok = False
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if not ok:
        raise ConfigError(f"mixskd builds an auxiliary branch on {names[i]!r} from copies of the later stages "
                          f"({', '.join(names[i + 1:])}), but in {type(model).__name__} they do not run one after the "
                          "other; set model.taps to stages that feed each other directly")
    for m in branch.modules():
        if hasattr(m, "reset_parameters") and m is not branch:
            m.reset_parameters()
    branch.train(was)
    return branch


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


register_preset("mixskd", ["mixskd"], {"mixskd": {"alpha": 0.4, "T": 3.0, "mixup_ce": False}},
                summary="MixSKD (Yang 2022): mixup pairs, auxiliary branches, feature-ensemble self-teacher, "
                "discriminators; alpha 0.4, T 3, as the authors' CIFAR script (mixup CE not added)",
                family="self-distillation", paper=PAPER, reference="winycg/Self-KD-Lib")
register_preset("mixskd_imagenet", ["mixskd"], {"mixskd": {"alpha": 0.2, "T": 3.0, "mixup_ce": True}},
                summary="MixSKD, the authors' ImageNet script (alpha 0.2, T 3, mixup CE added)",
                family="self-distillation", paper=PAPER, reference="winycg/Self-KD-Lib")
