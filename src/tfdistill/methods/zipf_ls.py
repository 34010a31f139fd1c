"""Zipf's label smoothing as a method (see :mod:`..losses.zipf_ls`): cross-entropy plus ``lambda`` times the KL
from a Zipf distribution over the non-target classes, ranked by the student's own dense (per-position) votes.

The dense votes apply the student's own classifier (the last ``nn.Linear`` that runs; found by watching one forward
pass) to every position of the last tapped stage. That is the authors' construction only when the classifier reads
the global average of that map; the component checks it at build time on the example batch (the classifier's input
must equal the spatial mean of the last tapped map) and otherwise refuses with one line (e.g. a network with a
final BatchNorm/ReLU or a 1x1 convolution after its last stage: tap the module whose output is pooled,
``model.taps``). The classifier stays the student's (no new parameters).

Presets (the authors' README): ``zipf_ls`` -- CIFAR (``--loss_lambda 0.1 --dense --upsample bilinear``);
``zipf_ls_imagenet`` -- ImageNet (``--loss_lambda 0.1 --dense``, no upsampling; their TinyImageNet and iNat runs use
``lambda = 1``: ``method.zipf_ls.weight=1``). Their ``--deeplayer`` (votes and CE of auxiliary heads on earlier
stages) defaults to 1 (the final layer only) in every command of the README and is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import find_classifier
from ..losses.zipf_ls import UPSAMPLE_MODES, zipf_ls_loss
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses

PAPER = ("Liang, Li, Zhang, Luo & Zhou, Efficient One Pass Self-distillation with Zipf's Label Smoothing, "
         "ECCV 2022")


@dataclass
class ZipfLSParams:
    weight: float = 0.1
    """lambda, the weight of the Zipf KL term (authors: 0.1 on CIFAR-100 and ImageNet, 1 on TinyImageNet/iNat)."""
    power: float = 1.0
    """Exponent of the Zipf distribution, ``rank ** -power`` (authors: 1)."""
    upsample: str = "bilinear"
    """x2 upsampling of the last feature map before the dense votes: bilinear (authors' CIFAR) | bicubic | none
    (authors' ImageNet)."""


@register_distiller("zipf_ls")
class ZipfLS(Distiller):
    """KL to a Zipf distribution over the non-target classes ranked by the student's dense votes."""
    coupling = "per-sample"

    Params = ZipfLSParams
    uses = Uses(student_feats=True)

    def __init__(self, params: ZipfLSParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.weight < 0 or params.power <= 0:
            raise ConfigError(f"method.zipf_ls needs weight >= 0 and power > 0, got weight={params.weight}, "
                              f"power={params.power}")
        if params.upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"bad value for config key 'method.zipf_ls.upsample': {params.upsample!r}; "
                              f"valid: {', '.join(UPSAMPLE_MODES)}")
        if ctx.num_classes < 2:
            raise ConfigError(f"zipf_ls needs at least 2 classes, got {ctx.num_classes}")
        model, info = ctx.student_model, ctx.student
        if model is None or info is None or not info.names or ctx.example is None:
            raise ConfigError("zipf_ls needs the student, its tapped stages and an example batch")
        name = find_classifier(model, ctx.example)
        if name is None:
            raise ConfigError(f"zipf_ls needs a linear classifier (nn.Linear) in {type(model).__name__}; it has none")
        head = dict(model.named_modules())[name]
        _check_pooled(model, info.names[-1], head, name, ctx.example)
        self.__dict__["head"] = head  # the student's own classifier: not a submodule (the Method owns the student)
        self.head_name = name

    def describe(self) -> dict:
        return {"classifier": self.head_name}

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        head: nn.Linear = self.head
        loss = zipf_ls_loss(out.logits_s, out.feats_s[-1], head.weight, head.bias, out.targets, p.power, p.upsample)
        return {"zipf_ls": p.weight * loss}


def _check_pooled(model: nn.Module, last: str, head: nn.Module, head_name: str, example: Tensor) -> None:
    """Refuse unless ``head``'s input is the global average of the output of module ``last`` (eval, no grad)."""
    seen: dict[str, Tensor] = {}
    mods = dict(model.named_modules())
    hooks = [mods[last].register_forward_hook(lambda m, i, o: seen.__setitem__("map", o)),
             head.register_forward_pre_hook(lambda m, i: seen.__setitem__("emb", i[0]))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    fmap, emb = seen.get("map"), seen.get("emb")
    ok = (isinstance(fmap, Tensor) and isinstance(emb, Tensor) and fmap.dim() == 4 and emb.dim() == 2
          and emb.shape == fmap.shape[:2]
          and torch.allclose(fmap.float().mean((2, 3)), emb.float(), rtol=1e-4, atol=1e-5))
    if not ok:
        raise ConfigError(f"zipf_ls applies the classifier {head_name!r} at every position of the last tapped stage "
                          f"{last!r}, but {type(model).__name__}'s classifier does not read the global average of "
                          f"that map; set model.taps so that the last tap is the map the pooling reads")


register_preset("zipf_ls", ["zipf_ls"], {"zipf_ls": {"weight": 0.1, "power": 1.0, "upsample": "bilinear"}},
                summary="Zipf's label smoothing (Liang 2022): KL to a Zipf prior ranked by the dense votes, "
                "lambda 0.1, x2 bilinear upsampling (authors' CIFAR)",
                family="self-distillation", paper=PAPER, reference="megvii-research/zipfls")
register_preset("zipf_ls_imagenet", ["zipf_ls"], {"zipf_ls": {"weight": 0.1, "power": 1.0, "upsample": "none"}},
                summary="Zipf's label smoothing, the authors' ImageNet setting (lambda 0.1, no upsampling)",
                family="self-distillation", paper=PAPER, reference="megvii-research/zipfls")
