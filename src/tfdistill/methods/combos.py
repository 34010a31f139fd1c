"""Registered combinations of existing components (no new losses here).

Any ``a+b`` of registered presets composes automatically (components in order, defaults merged left to right,
so ``kd+ls`` is KD with label smoothing 0.1). The combinations below are registered explicitly because their
weights are *not* the automatic merge, or to document the paper's settings:

* ``tfd+kd`` -- TFD with KD under "the same teacher-based settings" as KD: CE 0.1, KD 0.9 (T = 4), TFD's
  alpha/beta unchanged.
* ``tfd+kd_released`` -- TFD + KD as the released script trains it: CE 1, KD 1 (T = 4), and its 20-epoch linear
  warm-up ramp applied to the KD term as well as to TFD's (``kd.ramp_epochs = tfd.ramp_epochs = 20``).
* ``tfd+crd`` -- TFD with CRD: CE 1, CRD 0.8.
* ``crd+kd`` -- the CRD benchmark's CRD+KD: CE 1, KD 1, CRD 0.8 (the automatic merge would take KD's CE 0.1 /
  KD 0.9).

* ``tfd+dkd`` -- TFD with DKD under DKD's CIFAR-100 settings (CE 1, alpha 1, beta 8, T 4, 20-epoch warm-up of the
  DKD term), TFD's alpha/beta unchanged (#31).
* ``tfd+dist`` -- TFD with DIST under DIST's CIFAR-100 settings (CE 1, DIST weight 2, beta = gamma = 1, tau 4),
  TFD's alpha/beta unchanged (#31).

* ``at+kd`` -- our reading of the paper's "ATKD" column (ImageNet table), which the paper never defines:
  attention transfer (Zagoruyko & Komodakis; the ``at`` component, weight 1000 as the CRD benchmark) plus KD with
  KD's settings (CE 0.1, KD 0.9, T 4) -- an interpretation, not the paper's definition.

Label smoothing works with every method through ``method.label_smoothing`` (e.g. ``method.name=crd+kd
method.label_smoothing=0.1``), or by appending ``+ls``.
"""

from __future__ import annotations

from . import at, crd, dist, dkd, kd, tfd  # noqa: F401  (components first)
from .registry import merge_defaults, register_preset, resolve_preset


def register_combination(name: str, overrides: dict, summary: str, *, paper: str = "", reference: str = "") -> None:
    """Register ``name`` (``a+b+...``) as the composition of its registered parts with ``overrides`` applied."""
    base = resolve_preset(name)  # not registered yet: composes the parts' components and defaults
    register_preset(name, base.components, merge_defaults(base.defaults, overrides), summary, paper=paper,
                    reference=reference)


register_combination("tfd+kd", {"ce_weight": 0.1, "kd": {"weight": 0.9, "T": 4.0}},
                     "TFD + KD with KD's settings (CE 0.1, KD 0.9, T 4)",
                     paper='Li: Self-Regulated Feature Learning via Teacher-free Feature Distillation (ECCV '
                           '2022), TFD + KD',
                     reference="none: its components' tests")
register_preset("tfd+kd_released", resolve_preset("tfd+kd").components,
                merge_defaults(resolve_preset("tfd+kd").defaults,
                               {"ce_weight": 1.0, "kd": {"weight": 1.0, "T": 4.0, "ramp_epochs": 20},
                                "tfd": {"ramp_epochs": 20}}),
                "TFD + KD as the released script (CE 1, KD 1, T 4, both ramped in over 20 epochs)",
                paper='Li: Self-Regulated Feature Learning via Teacher-free Feature Distillation (ECCV '
                      '2022), its released script',
                reference="none: its components' tests; the weights and ramps are the released script's "
                          '(tests/test_selfkd.py)')
register_combination("tfd+crd", {"ce_weight": 1.0, "crd": {"weight": 0.8}},
                     "TFD + CRD (CE 1, CRD 0.8)",
                     paper='Li: Self-Regulated Feature Learning via Teacher-free Feature Distillation (ECCV '
                           '2022), TFD + CRD',
                     reference="none: its components' tests")
register_combination("crd+kd", {"ce_weight": 1.0, "kd": {"weight": 1.0, "T": 4.0}, "crd": {"weight": 0.8}},
                     "CRD + KD as the CRD benchmark (CE 1, KD 1, CRD 0.8)",
                     paper='Tian, Krishnan & Isola: Contrastive Representation Distillation (ICLR 2020), CRD + KD',
                     reference="none: its components' tests")
register_combination("at+kd", {"ce_weight": 0.1, "kd": {"weight": 0.9, "T": 4.0}, "at": {"weight": 1000.0}},
                     "ATKD as we read it: attention transfer + KD (CE 0.1, KD 0.9, T 4, AT 1000); the TFD paper "
                     "never defines ATKD",
                     paper='none: the TFD paper\'s "ATKD" column, never defined there (our reading: AT + KD)',
                     reference="none: its components' tests")
register_combination("tfd+dkd", {"ce_weight": 1.0, "dkd": {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20}},
                     "TFD + DKD with DKD's CIFAR-100 settings (CE 1, alpha 1, beta 8, T 4, 20-epoch warm-up)",
                     paper="TFD (Li, ECCV 2022) + DKD (Zhao et al., CVPR 2022): a combination of ours",
                     reference="none: its components' tests")
register_combination("tfd+dist", {"ce_weight": 1.0, "dist": {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 4.0}},
                     "TFD + DIST with DIST's CIFAR-100 settings (CE 1, DIST weight 2, beta = gamma = 1, tau 4)",
                     paper="TFD (Li, ECCV 2022) + DIST (Huang et al., NeurIPS 2022): a combination of ours",
                     reference="none: its components' tests")
