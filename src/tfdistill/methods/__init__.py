"""Methods: registered presets built from distiller components, and the :class:`Method` the engine trains.

The registry (:mod:`.registry`) holds:

* :data:`DISTILLERS` -- component name -> :class:`Distiller` subclass (``tfd``, ``kd``, ``fitnet``, ...).
* :data:`PRESETS` -- method name -> components + default weights (``ce``, ``ls``, ``tfd``, ``tfd_ls``, ...).
  A name ``a+b`` that is not itself registered composes the presets ``a`` and ``b``.

A method's config section is typed: ``method.name``, ``method.ce_weight``, ``method.label_smoothing`` and one
sub-section per component with that component's ``Params`` (``method.tfd.alpha``, ``method.kd.T``, ...).
"""

from __future__ import annotations

from .base import BuildContext, Distiller, FeatureInfo, PreStage, StepOutputs, Uses
from .create import create_method, method_needs
from .method import Captured, Method, build_method, logits_of
from .registry import (DISTILLERS, FAMILIES, PRESETS, MethodParams, Preset, list_methods, merge_defaults,
                       method_schema, method_uses, preset_family, register_distiller, register_preset, resolve_preset)

__all__ = [
    "DISTILLERS", "PRESETS", "Preset", "MethodParams", "Method", "build_method", "create_method", "method_needs",
    "Captured", "logits_of", "register_distiller",
    "register_preset", "resolve_preset", "preset_family", "FAMILIES", "method_schema", "method_uses",
    "list_methods", "merge_defaults", "Distiller",
    "BuildContext", "FeatureInfo", "PreStage", "StepOutputs", "Uses",
]
