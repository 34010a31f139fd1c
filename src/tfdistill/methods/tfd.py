"""TFD as a method: depth-wise + width-wise self-distillation on the student's own stage features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ..errors import ConfigError
from ..losses.tfd import DIRECTIONS
from ..losses.tfd_distance import DISTANCES
from ..losses.tfd_fused import FUSE_MODES
from ..losses.tfd_loss import TFDLoss
from .registry import register_distiller, register_preset
from .base import BuildContext, Distiller, StepOutputs, Uses


@dataclass
class TFDParams:
    alpha: float = 5e-3
    """Weight of the depth-wise loss (paper: 0.005)."""
    beta: float = 4e-4
    """Weight of the width-wise loss (paper: 0.0004)."""
    direction: str = "top_down"
    """top_down (paper) | bottom_up | bidirectional."""
    detach_top: bool = True
    """Freeze the width-wise target channels (paper's intent); false reproduces the released script."""
    ramp_epochs: int = 0
    """Ramp alpha and beta in linearly over this many epochs (released script: 20; paper: 0 = no ramp).
    In epoch e (0-based) the weights are scaled by min(1, (e + 1) / ramp_epochs)."""
    width_stages: Optional[list[int]] = None
    """Indices of the tapped stages the width-wise loss uses (default: all)."""
    distance: str = "l2"
    """Feature-mimicking loss: l2 (paper: mean squared error) | sp | at | nst | ab (the paper's ablation figure;
    applied to the same aligned depth pairs and width halves, see :mod:`tfdistill.losses.tfd_distance`)."""
    fuse: str = "auto"
    """auto | true | false: compute both l2 losses in one torch.compile region (a few fused kernels instead of
    ~125 small ones per ResNet step; values equal up to float32 rounding, see :mod:`tfdistill.losses.tfd_fused`). auto:
    on CUDA with Triton, unless engine.deterministic=true; the run's summary.json records what was used
    (method_info.tfd.fuse, fuse_reason, fuse_compile_s)."""


@register_distiller("tfd")
class TFD(Distiller):
    """Teacher-free Feature Distillation on the student's tapped stages (see :mod:`tfdistill.losses.tfd`)."""
    coupling = "batch-coupled"  # TFD's width term ranks channels over the whole batch
    dense = True  # on the tapped feature maps, whatever the head predicts
    tfd_plan = True

    Params = TFDParams
    uses = Uses(student_feats=True)

    def __init__(self, params: TFDParams, ctx: BuildContext) -> None:
        super().__init__(params, ctx)
        if params.direction not in DIRECTIONS:
            raise ConfigError(f"bad value for config key 'method.tfd.direction': {params.direction!r}; "
                              f"valid: {', '.join(DIRECTIONS)}")
        if params.distance not in DISTANCES:
            raise ConfigError(f"bad value for config key 'method.tfd.distance': {params.distance!r}; "
                              f"valid: {', '.join(DISTANCES)}")
        if params.distance != "l2" and not params.detach_top:
            raise ConfigError(f"method.tfd.detach_top=false needs method.tfd.distance=l2 (the {params.distance} "
                              "loss treats its target as a constant)")
        fuse_mode = str(params.fuse).strip().lower()  # a YAML true/false arrives as the string "True"/"False"
        if fuse_mode not in FUSE_MODES:
            raise ConfigError(f"bad value for config key 'method.tfd.fuse': {params.fuse!r}; "
                              f"valid: {', '.join(FUSE_MODES)}")
        if params.alpha < 0 or params.beta < 0 or params.ramp_epochs < 0:
            raise ConfigError("method.tfd.alpha, beta and ramp_epochs must be >= 0")
        info = ctx.student
        assert info is not None
        if params.alpha > 0 and len(info.names) < 2:
            raise ConfigError(
                f"TFD needs at least two tappable stages, the model has {len(info.names)} ({info.names}); "
                "set model.taps to a list of at least two module names")
        n = len(info.names)
        stages = params.width_stages
        if stages is not None and any(not -n <= i < n for i in stages):
            raise ConfigError(f"method.tfd.width_stages {list(stages)} out of range for {n} tapped stages")
        self.width_stages = None if stages is None else [int(i) for i in stages]
        # the one front door to the TFD losses; it holds the one weights tensor [alpha, beta] * ramp, which the
        # (compiled) losses multiply by and on_epoch_start rescales in place
        self.losses = TFDLoss(params.alpha, params.beta, params.direction, params.detach_top, self.width_stages,
                              fuse={"true": True, "false": False}.get(fuse_mode, fuse_mode),
                              distance=params.distance, device=ctx.device)

    @property
    def weights(self) -> Tensor:
        """``[alpha, beta] * ramp`` (float32), the TFD losses' weights (:attr:`TFDLoss.weights`)."""
        return self.losses.weights

    def describe(self) -> dict:
        f = self.losses
        return {"fuse": f.mode if f.mode != "pending" else "pending (compiles at the first step)",
                **({"fuse_reason": f.reason} if f.reason else {}),
                **({"fuse_compile_s": round(f.compile_s, 1)} if f.mode == "compiled" else {})}

    def on_epoch_start(self, epoch: int) -> None:
        r = self.params.ramp_epochs
        self.losses.scale_(min(1.0, (epoch + 1) / r) if r > 0 else 1.0)

    def terms(self, out: StepOutputs) -> dict[str, Tensor]:
        p = self.params
        depth, width = self.losses.pair(out.feats_s)
        terms = {}
        if p.alpha > 0:
            terms["tfd_depth"] = depth
        if p.beta > 0:
            terms["tfd_width"] = width
        return terms


register_preset("tfd", ["tfd"], summary="Teacher-free Feature Distillation (depth-wise + width-wise)",
                paper='Li: Self-Regulated Feature Learning via Teacher-free Feature Distillation (ECCV 2022)',
                reference='none: independent pure-Python formulas (tests/test_tfd_losses.py)')
register_preset("tfd_ls", ["tfd"], {"label_smoothing": 0.1}, summary="TFD-dagger: TFD + label smoothing 0.1",
                paper='Li: Self-Regulated Feature Learning via Teacher-free Feature Distillation (ECCV 2022)',
                reference='none: independent pure-Python formulas (tests/test_tfd_losses.py)')
