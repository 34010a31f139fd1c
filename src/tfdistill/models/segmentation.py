"""Segmentation models by name: they map ``(N, 3, H, W)`` images to ``(N, classes, H, W)`` logits (a tensor, not
torchvision's ``{"out": ...}`` dict), randomly initialised (no pretrained backbone can be fetched here).

* torchvision's ``deeplabv3_resnet50``, ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``,
  ``fcn_resnet50``, ``fcn_resnet101``, ``lraspp_mobilenet_v3_large`` (``weights=None, weights_backbone=None``, no
  auxiliary head);
* ``deeplabv3_resnet18``: torchvision's DeepLabV3 (ASPP head) on a ResNet-18 dilated to output stride 8 (``layer3``
  dilation 2, ``layer4`` dilation 4, their strides 1) -- the setting of the official TFD README's segmentation
  results (DeepLabV3-ResNet18 as in the CIRKD codebase; its ResNet-18 has a three-convolution "deep stem", this one
  torchvision's single 7x7 stem: a stated difference). ``output_stride=16`` dilates ``layer4`` only;
* ``smp.<Arch>`` (``smp.Unet``, ``smp.FPN``, ``smp.DeepLabV3Plus``, ...): segmentation-models-pytorch
  (``pip install 'tfdistill[seg]'``), ``encoder_name`` (default ``resnet18``) in the kwargs, ``encoder_weights=None``.

``bn_momentum`` (torchvision models and ``deeplabv3_resnet18``; None: as built): every BatchNorm's running-statistics
momentum. torchvision's MobileNetV3 builds its BatchNorms with momentum 0.01, set for ImageNet-length training; in a
run of a few hundred steps from scratch its evaluation-mode statistics lag far behind the weights (the CIFAR-10 proxy
evaluated as all background after 185 steps while training accuracy rose), so short CPU recipes set 0.1, PyTorch's
default.

Taps: the encoder's stages, declared in :mod:`tfdistill.features.segmentation_table` (never the head).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from ._zoo import register_model

SMP_PREFIX = "smp."
TORCHVISION_SEGMENTATION = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                            "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large")

_TENSOR_OUT: dict[type, type] = {}


def _tensor_out(model: nn.Module) -> nn.Module:
    """``model`` (a torchvision segmentation model) returning its ``"out"`` logits as a tensor: its class becomes a
    subclass whose ``forward`` unpacks the dict (same modules, same state_dict keys, same class name in the tap
    table's MRO lookup)."""
    cls = type(model)
    if cls not in _TENSOR_OUT:
        def forward(self: nn.Module, x: Tensor) -> Tensor:
            return cls.forward(self, x)["out"]

        _TENSOR_OUT[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                       "__doc__": f"{cls.__name__} returning its logits tensor"})
    model.__class__ = _TENSOR_OUT[cls]
    return model


def _bn_momentum(model: nn.Module, momentum: float | None) -> nn.Module:
    if momentum is None:
        return model
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 < float(momentum) <= 1:
        raise ConfigError(f"bn_momentum must be a number in (0, 1], got {momentum!r}")
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = float(momentum)
    return model


def _dilate(layer: nn.Module, dilation: int) -> None:
    """A ResNet stage at stride 1 with dilated 3x3 convolutions (as torchvision's ``replace_stride_with_dilation``
    does for bottleneck ResNets; its BasicBlock refuses dilation, so it is set here)."""
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride == (2, 2):
                m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation, m.padding = (dilation, dilation), (dilation, dilation)


@register_model("deeplabv3_resnet18")
def deeplabv3_resnet18(num_classes: int = 21, output_stride: int = 8, bn_momentum: float | None = None) -> nn.Module:
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    if output_stride not in (8, 16):
        raise ConfigError(f"deeplabv3_resnet18: output_stride must be 8 or 16, got {output_stride!r}")
    backbone = resnet18(weights=None)
    if output_stride == 8:
        _dilate(backbone.layer3, 2)
    _dilate(backbone.layer4, 2 if output_stride == 16 else 4)
    body = IntermediateLayerGetter(backbone, return_layers={"layer4": "out"})
    return _bn_momentum(_tensor_out(DeepLabV3(body, DeepLabHead(512, num_classes))), bn_momentum)


def _torchvision_segmentation(name: str):
    def factory(num_classes: int = 21, bn_momentum: float | None = None, **kwargs: Any) -> nn.Module:
        import torchvision.models as tvm

        if "weights" in kwargs or "weights_backbone" in kwargs:
            raise ConfigError(f"{name} is built without pretrained weights; load a checkpoint instead")
        extra = {} if name.startswith("lraspp") else {"aux_loss": False}
        try:
            model = tvm.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes,
                                  **extra, **kwargs)
        except TypeError as e:
            raise ConfigError(f"cannot build {name} with {kwargs}: {e}") from None
        return _bn_momentum(_tensor_out(model), bn_momentum)

    factory.__name__ = name
    factory.__doc__ = f"torchvision's {name} (random init, no auxiliary head), returning its logits tensor."
    return factory


for _name in TORCHVISION_SEGMENTATION:
    register_model(_name)(_torchvision_segmentation(_name))


def create_smp(arch: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """segmentation-models-pytorch's ``arch`` (e.g. ``Unet``) with ``encoder_name`` (default resnet18), random init."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ConfigError(f"model {SMP_PREFIX}{arch} needs segmentation-models-pytorch: "
                          f"pip install 'tfdistill[seg]'") from None
    archs = sorted(n for n in dir(smp) if isinstance(getattr(smp, n), type) and issubclass(getattr(smp, n), nn.Module)
                   and n[0].isupper())
    if arch not in archs:
        raise ConfigError(f"unknown segmentation-models-pytorch architecture {SMP_PREFIX + arch!r}; valid: "
                          + ", ".join(SMP_PREFIX + a for a in archs))
    kwargs = {"encoder_name": "resnet18", **kwargs}
    if kwargs.get("encoder_weights") not in (None, "none"):
        raise ConfigError(f"{SMP_PREFIX}{arch}: pretrained encoders cannot be fetched here; leave encoder_weights "
                          "unset (random init) and load a checkpoint with model.init_checkpoint")
    kwargs["encoder_weights"] = None
    try:
        return getattr(smp, arch)(classes=num_classes, **kwargs)
    except (TypeError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot build {SMP_PREFIX}{arch} with {kwargs}: {str(e).splitlines()[0][:200]}") from None
