"""Feature taps: intermediate features of any ``nn.Module`` as (N, C, H, W) maps, through forward hooks.

>>> tap = FeatureTap(model, "auto")          # or FeatureTap(model, ["layer1", "layer2", "layer3"])
>>> logits, feats = tap(images)              # feats: list of stage outputs, shallow to deep
>>> print(tap)                               # the plan: module, map shape, stride, rule, TFD terms per tap

Where each rule lives:

* :mod:`.tap` -- :class:`FeatureTap` (hooks, calls, the plan it logs), :func:`plan_taps`, :func:`find_stages`.
* :mod:`.resolve` -- the order of the rules (named > declared > torchvision table > probe) and the selection.
* :mod:`.declared` -- what models declare: zoo ``stage_names``, timm ``feature_info``.
* :mod:`.torchvision_table` -- torchvision's classification families.
* :mod:`.probe` -- the fallback guess and its hard rules; the watched forward pass every rule measures shapes on.
* :mod:`.layouts` -- NCHW / NHWC / token outputs to (N, C, H, W).
* :mod:`.plan` -- the plan (:class:`TapPlan`) and what TFD does with the maps (also with maps of one size).
"""

from .layouts import Layout, TokenGrid, token_grid
from .plan import Tap, TapPlan
from .tap import FeatureTap, find_classifier, find_stages, is_compiled, plan_taps, unwrap

__all__ = ["FeatureTap", "find_stages", "find_classifier", "plan_taps", "Layout", "Tap", "TapPlan", "TokenGrid",
           "token_grid", "unwrap", "is_compiled"]
