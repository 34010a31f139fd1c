"""Model zoo: the CIFAR networks of the CRD benchmark plus any torchvision or timm classifier.

>>> from tfdistill.models import create_model
>>> net = create_model("resnet8x4", num_classes=100)          # zoo model
>>> tv = create_model("torchvision.resnet18", num_classes=10)  # torchvision, random init
>>> vit = create_model("timm.vit_tiny_patch16_224", num_classes=10, img_size=32)  # timm (pip install 'tfdistill[timm]')

Three sources, one factory (:func:`create_model`):

* a zoo name (``resnet20``): the models of this package (they declare ``stage_names``);
* ``torchvision.<name>``: any torchvision classification model, ``weights=None`` (GoogLeNet and Inception v3 are
  built with ``aux_logits=False`` unless asked: the harness expects logits, not a tuple);
* ``timm.<name>``: any timm model, ``pretrained=False`` by default. ``pretrained=True`` loads weights from the local
  Hugging Face / torch hub cache only (offline) and fails with one clear line when they are not there; downloading
  at run time needs ``allow_download=True`` (``model.kwargs.allow_download=true``) on top.

Conventions shared by every zoo model (so features can be read with forward hooks):

* ``forward(x)`` returns the logits only; no module returns a tuple.
* ``model.stage_names`` (a class attribute) lists, in forward order, the dotted module paths
  of the stage containers whose outputs are the usual distillation taps; resolve them with
  ``model.get_submodule(name)`` or :func:`get_stages`. Their outputs are 4D ``[N, C, H, W]``
  with non-increasing spatial size. Stage outputs are post-activation, except for the
  pre-activation WRNs, whose stages output the pre-BN sum as in CRD.
* The network ends in ``avgpool -> flatten -> dropout -> fc``: a forward hook on ``flatten``
  gives the pooled embedding, a forward pre-hook on the single ``nn.Linear`` ``fc`` gives the
  classifier input. ``dropout`` is ``nn.Identity`` unless built with ``dropout=p > 0``.
* No in-place activations or in-place residual adds, so a hook on any module sees that
  module's own output (not one overwritten later).

Architectures and parameter counts match HobbitLong/RepDistiller's ``models/`` exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..registry import closest
from ._zoo import MODELS, register_model
# Importing the family modules registers their models.
from . import (  # noqa: F401
    mobilenetv2,
    resnet,
    resnet_imagenet_style,
    segmentation,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)

__all__ = [
    "MODELS", "TIMM_PREFIX", "TORCHVISION_PREFIX", "convert_repdistiller_state_dict", "create_model",
    "get_stages", "list_models", "list_torchvision_models", "register_model",
]

TORCHVISION_PREFIX = "torchvision."
TIMM_PREFIX = "timm."


def list_torchvision_models() -> list[str]:
    """Names (without prefix) of torchvision's image classification models."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_models(include_torchvision: bool = False) -> list[str]:
    """Sorted zoo model names (aliases included); with ``include_torchvision=True`` also every
    ``"torchvision.<name>"`` classification model accepted by :func:`create_model`."""
    names = MODELS.names()
    if include_torchvision:
        names += [TORCHVISION_PREFIX + n for n in list_torchvision_models()]
    return names


def _plain(value: Any) -> Any:
    """A config node (OmegaConf's ``DictConfig`` / ``ListConfig``, e.g. a list under ``model.kwargs``) as plain
    dicts and lists, so that a model never holds one; any other value as it is."""
    if type(value).__module__.split(".")[0] == "omegaconf":
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def create_model(name: str, num_classes: int = 100, **kwargs: Any) -> nn.Module:
    """Build a randomly initialised model.

    ``name`` is a zoo name (see :func:`list_models`), ``"torchvision.<name>"`` for any
    torchvision classification model (built with ``weights=None``) or ``"timm.<name>"`` for any
    timm model (``pretrained=False`` unless given; see the module docs for the offline rule).
    Extra keyword arguments go to the model's constructor; zoo models accept ``dropout: float = 0.0``.

    Raises :class:`~tfdistill.errors.UnknownNameError` for an unknown name (the message lists
    the valid ones) and :class:`~tfdistill.errors.ConfigError` for invalid arguments.
    """
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    kwargs = {k: _plain(v) for k, v in kwargs.items()}  # e.g. dict(cfg.model.kwargs): no config nodes in a model
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX):], num_classes, kwargs)
    if "pretrained" in kwargs:
        if kwargs.pop("pretrained"):
            raise ConfigError(f"model {name!r}: pretrained weights are built in for timm.<name> models only; "
                              "for a zoo or torchvision model start from a file with model.init_checkpoint")
    if name.startswith(segmentation.SMP_PREFIX):
        return segmentation.create_smp(name[len(segmentation.SMP_PREFIX):], num_classes, kwargs)
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX):], num_classes, kwargs)

    if name not in MODELS:
        raise UnknownNameError(
            MODELS.unknown_message(name)
            + f"; or any torchvision classification model as '{TORCHVISION_PREFIX}<name>'"
            f" (e.g. {TORCHVISION_PREFIX}resnet18; list_models(include_torchvision=True)"
            f" lists them); or any timm model as '{TIMM_PREFIX}<name>' (e.g. {TIMM_PREFIX}convnext_atto)"
        )
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(set(params) - {"num_classes"})
        raise ConfigError(f"model {name!r} got unexpected argument(s) {unknown}; "
                          f"accepted: {allowed}")
    return factory(num_classes=num_classes, **kwargs)


def _create_torchvision(tv_name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision.models as tvm

    valid = list_torchvision_models()
    if tv_name not in valid:
        hint = closest(tv_name, valid)
        did = f" (did you mean '{TORCHVISION_PREFIX}{hint[0]}'?)" if hint else ""
        raise UnknownNameError(
            f"unknown torchvision model {TORCHVISION_PREFIX + tv_name!r}{did}; valid: "
            + ", ".join(TORCHVISION_PREFIX + n for n in valid)
        )
    if "weights" in kwargs:
        raise ConfigError("torchvision models are built without pretrained weights; "
                          "load a checkpoint instead of passing 'weights'")
    if tv_name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": True, **kwargs}
    try:
        return tvm.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an unexpected keyword argument
        raise ConfigError(f"cannot build {TORCHVISION_PREFIX}{tv_name} with {kwargs}: {e}") from e


def _create_timm(timm_name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model {TIMM_PREFIX}{timm_name} needs timm: pip install 'tfdistill[timm]'") from None
    kwargs = dict(kwargs)
    pretrained = kwargs.pop("pretrained", False)
    allow_download = kwargs.pop("allow_download", False)
    if not isinstance(pretrained, bool) or not isinstance(allow_download, bool):
        raise ConfigError(f"{TIMM_PREFIX}{timm_name}: pretrained and allow_download must be true or false, got "
                          f"{pretrained!r}, {allow_download!r}")
    if not timm.is_model(timm_name):
        hint = closest(timm_name, timm.list_models(), n=3)
        did = f" (did you mean {', '.join(TIMM_PREFIX + h for h in hint)}?)" if hint else ""
        raise UnknownNameError(f"unknown timm model {TIMM_PREFIX + timm_name!r}{did}; timm.list_models() lists "
                               f"the valid names")
    if pretrained and not allow_download:
        return _timm_offline(timm, timm_name, num_classes, kwargs)
    try:
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an unexpected keyword argument
        raise ConfigError(f"cannot build {TIMM_PREFIX}{timm_name} with {kwargs}: {e}") from e


def _timm_offline(timm: Any, timm_name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """timm with pretrained weights from the local cache only: Hugging Face Hub offline mode for the call."""
    import os

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        try:  # huggingface_hub reads the variable at import; set its constant too where it exists
            import huggingface_hub.constants as hfc

            old_const = getattr(hfc, "HF_HUB_OFFLINE", None)
            hfc.HF_HUB_OFFLINE = True
        except ImportError:
            hfc, old_const = None, None
        try:
            return timm.create_model(timm_name, pretrained=True, num_classes=num_classes, **kwargs)
        except TypeError as e:
            raise ConfigError(f"cannot build {TIMM_PREFIX}{timm_name} with {kwargs}: {e}") from e
        except Exception as e:  # noqa: BLE001 -- what a missing cache entry raises differs by hub version
            raise ConfigError(f"no cached pretrained weights for {TIMM_PREFIX}{timm_name} ({type(e).__name__}); "
                              "tfdistill does not download at run time: download them once (e.g. "
                              f"python -c \"import timm; timm.create_model('{timm_name}', pretrained=True)\"), "
                              "or pass model.kwargs.allow_download=true, or use pretrained=false") from None
        finally:
            if hfc is not None:
                hfc.HF_HUB_OFFLINE = old_const
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def get_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for each entry of ``model.stage_names``, in forward order."""
    names = getattr(model, "stage_names", None)
    if not names:
        raise ConfigError(f"{type(model).__name__} does not declare stage_names; "
                          "name the modules to tap explicitly")
    return [(n, model.get_submodule(n)) for n in names]


# RepDistiller names the classifier ``classifier`` (VGG), ``classifier.0`` (MobileNetV2) or
# ``linear`` (ShuffleNets, ResNet50); every other parameter/buffer name is the same here.
_REPDISTILLER_RENAMES = (("classifier.0.", "fc."), ("classifier.", "fc."), ("linear.", "fc."))


def convert_repdistiller_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the classifier keys of a RepDistiller (CRD) model ``state_dict`` so it loads
    into the zoo model of the same name with ``load_state_dict(..., strict=True)``.
    A leading ``module.`` (from ``DataParallel``) is stripped as well."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        for old, new in _REPDISTILLER_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out
