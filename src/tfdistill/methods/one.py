"""ONE as a method: the student's last stage and head become branch 0 of an on-the-fly native ensemble
(see :mod:`..losses.one`).

Branches. ONE shares the lower stages and gives every branch its own copy of the last stage and the classifier.
Here branch 0 *is* the student's own last stage and head, so the deployed student is exactly the network trained
(same ``state_dict``, same inference cost); branches ``1..B-1`` are copies of the last tapped stage and of every
module that runs after it (e.g. WRN's final BN/ReLU, MobileNetV2's 1x1 head convolution, pooling, the
classifier), re-initialised (convolutions Kaiming-normal fan-out, BatchNorm 1/0, others their default), as the
authors' ``ONE_ResNet`` builds independent branches. They and the gate are method modules: trained with the
student, checkpointed with the method state, counted in ``summary.json`` (``method_info.aux_params``), never
exported.

Genericity. The last stage is the last of the student's tapped stages; its input (the shared features the
branches and the gate read) is captured by a forward pre-hook while the student trains. What follows it is
found by watching one forward pass; the copy is verified at build time to reproduce the student's own logits
from the last stage's output. A model whose forward does work after its last stage that is not a module (a
functional op other than flattening, or global average pooling and flattening, before the classifier) cannot be
branched this way: one ConfigError says so.

Loss (the authors' ``cifar_one.py``): ``CE(branch 0)`` (the method's ``ce`` term) ``+ sum_{b>=1} CE(branch b) +
CE(ensemble)`` (``one_ce``) ``+ w(epoch) * sum_b T^2 KL(ensemble || branch b)`` (``one_kl``, T = 3, ``w`` the
sigmoid ramp over ``rampup_epochs`` = 80 epochs of the code's 300), 3 branches.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.one import Gate, gated_ensemble, one_kl_loss, sigmoid_rampup
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class ONEParams:
    branches: int = 3
    """Number of branches including the student's own (authors: 3)."""
    T: float = 3.0
    """Temperature of the KL term (authors' KLLoss: 3)."""
    kl_weight: float = 1.0
    """Weight of the KL term at the end of the ramp (paper and code: 1)."""
    ce_weight: float = 1.0
    """Weight of the cross-entropy of the extra branches and of the ensemble (code: 1)."""
    rampup_epochs: float = 80.0
    """Sigmoid ramp-up of the KL term over this many epochs (code: 80 of 300); 0 = no ramp."""


class _Tail(nn.Module):
    """Runs ``modules`` in order, flattening before a Linear layer that receives a map (``torch.flatten``), and,
    with ``pool_at = i``, global-average-pooling a map before module ``i`` (a functional ``adaptive_avg_pool2d``
    + ``flatten`` before the classifier, as torchvision's MobileNetV2 has)."""

    def __init__(self, modules: list[nn.Module], pool_at: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(modules)
        self.pool_at = pool_at

    def forward(self, x: Tensor) -> Tensor:
        for i, m in enumerate(self.layers):
            if i == self.pool_at and x.dim() > 2:
                x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            if isinstance(m, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = m(x)
        return x


def _reproduces(tail: _Tail, x: Tensor, logits: Any) -> bool:
    """Whether ``tail(x)`` gives the model's own ``logits`` (eval mode, no gradients)."""
    try:
        with torch.no_grad():
            tail.eval()
            again = tail(x)
        return isinstance(logits, Tensor) and again.shape == logits.shape and torch.allclose(
            again, logits, rtol=1e-4, atol=1e-5)
    except (RuntimeError, ValueError, TypeError):  # e.g. a shape mismatch where functional work was skipped
        return False


def _reinit(module: nn.Module) -> None:
    """Fresh weights for a branch copy (identical branches would get identical gradients and never differ):
    convolutions Kaiming-normal fan-out with zero bias, BatchNorm weight 1 / bias 0 / fresh statistics, other
    layers (the classifier) their PyTorch default."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif not any(True for _ in m.children()) and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _after(model: nn.Module, stage: str, example: Tensor) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """Names of the outermost modules that run after ``stage`` (in order), the stage's input and output, and the
    model's output, from one eval-mode, no-grad forward pass."""
    modules = dict(model.named_modules())
    order: dict[str, int] = {}  # name -> when it (last) finished
    seen: dict[str, Any] = {}
    handles = []

    def finish(name: str):
        def hook(m: nn.Module, inputs: Any, output: Any) -> None:
            seen["clock"] = seen.get("clock", 0) + 1
            order[name] = seen["clock"]

        return hook

    def capture(m: nn.Module, inputs: Any, output: Any) -> None:
        seen["in"], seen["out"] = inputs[0], output

    for name, m in modules.items():
        if name:
            handles.append(m.register_forward_hook(finish(name)))
    handles.append(modules[stage].register_forward_hook(capture))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(example)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    later = [n for n in order if order[n] > order[stage] and not stage.startswith(n + ".")]
    outer = [n for n in later if not any(n.startswith(a + ".") for a in later if a != n)]
    return sorted(outer, key=order.__getitem__), seen["in"], seen["out"], logits


@register_distiller("one")
class ONE(Distiller):
    """On-the-fly native ensemble: extra branches of the last stage + head, a gate, KL from the ensemble."""
    coupling = "per-sample"

    Params = ONEParams
    uses = Uses(student_feats=True)

    def __init__(self, params: ONEParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.branches < 2:
            raise ConfigError(f"method.one.branches must be >= 2 (the student's own branch and at least one more), "
                              f"got {params.branches}")
        if params.T <= 0 or params.kl_weight < 0 or params.ce_weight < 0 or params.rampup_epochs < 0:
            raise ConfigError(f"method.one needs T > 0 and kl_weight, ce_weight, rampup_epochs >= 0, got T {params.T}, "
                              f"kl_weight {params.kl_weight}, ce_weight {params.ce_weight}, "
                              f"rampup_epochs {params.rampup_epochs}")
        model, info, example = ctx.student_model, ctx.student, ctx.example
        if model is None or info is None or example is None or not info.names:
            raise ConfigError("method 'one' needs the student model, its tapped stages and an example batch")
        stage = info.names[-1]
        name = type(model).__name__
        tail_names, x_in, x_out, logits = _after(model, stage, example)
        if not isinstance(x_in, Tensor) or x_in.dim() != 4:
            raise ConfigError(f"one: the input of {name}'s last stage {stage!r} is not a feature map")
        mods = dict(model.named_modules())
        layers = [copy.deepcopy(mods[n]) for n in tail_names]
        tail = next((t for t in (_Tail(layers, at) for at in [None, *range(len(layers))])
                     if _reproduces(t, x_out, logits)), None)
        if tail is None:
            raise ConfigError(
                f"one cannot branch {name}: the work after its last stage {stage!r} is not a chain of modules "
                f"(found {tail_names or 'none'}; its forward uses other functional operations there), so the "
                f"branches' heads cannot be copied. Set model.taps so that the last tap is followed only by "
                f"modules, or use another method")
        self.stage_name = stage
        self.branch = nn.ModuleList()
        for _ in range(params.branches - 1):
            b = nn.Sequential(copy.deepcopy(mods[stage]), copy.deepcopy(tail))
            _reinit(b)
            self.branch.append(b)
        self.gate = Gate(int(x_in.shape[1]), params.branches)
        self.register_buffer("ramp", torch.ones(()), persistent=False)
        self._x: Tensor | None = None
        ref = weakref.ref(self)  # the student must not keep a discarded component (and its branches) alive

        def capture(module: nn.Module, inputs: Any) -> None:
            comp = ref()
            if comp is not None and module.training and comp.training:
                comp._x = inputs[0]

        self.__dict__["_hook"] = mods[stage].register_forward_pre_hook(capture)

    def on_epoch_start(self, epoch: int) -> None:
        self.ramp.fill_(sigmoid_rampup(epoch, self.params.rampup_epochs))

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError(f"one: the student's last stage {self.stage_name!r} did not run in training mode "
                               f"in this step")
        p = self.params
        logits = [out.logits_s] + [b(x) for b in self.branch]
        ens = gated_ensemble(logits, self.gate(x))
        y = out.targets
        ce = torch.stack([F.cross_entropy(z.float(), y) for z in logits[1:]] + [F.cross_entropy(ens, y)]).sum()
        kl = torch.stack([one_kl_loss(z, ens, p.T) for z in logits]).sum()
        terms = {}
        if p.ce_weight:
            terms["one_ce"] = p.ce_weight * ce
        if p.kl_weight:
            terms["one_kl"] = (p.kl_weight * self.ramp) * kl
        return terms


register_preset("one", ["one"], family="self-distillation",
                summary="ONE, on-the-fly native ensemble (Lan et al. 2018), "
                "3 branches, T 3, KL ramp 80 epochs as the authors' code",
                paper='Lan, Zhu & Gong: Knowledge Distillation by On-the-Fly Native Ensemble (NeurIPS 2018)',
                reference='Lan1991Xu/ONE_NeurIPS2018 (tests/test_selfdistill_aux.py; '
                          'tests/golden/selfdistill_authors.py)')
