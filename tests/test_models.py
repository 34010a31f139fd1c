"""Model zoo: CRD-identical parameter counts, forward shapes, hook-friendly structure,
torchvision pass-through and name errors. CPU only, small batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tfdistill.errors import ConfigError, UnknownNameError
from tfdistill.models import (
    MODELS,
    convert_repdistiller_state_dict,
    create_model,
    get_stages,
    list_models,
    register_model,
)

# Parameter counts of HobbitLong/RepDistiller's models at 100 classes.
CRD_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "ResNet50": 23_705_252,
}
ZOO = list(CRD_PARAMS)
# One representative per family, for the more expensive checks.
FAMILIES = ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_names():
    assert set(ZOO) | {"mobilenetv2"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", ZOO)
def test_param_count_matches_crd(name):
    assert n_params(create_model(name, num_classes=100)) == CRD_PARAMS[name]


def test_mobilenetv2_alias():
    a, b = create_model("mobilenetv2"), create_model("MobileNetV2")
    assert type(a) is type(b) and n_params(a) == n_params(b)


@pytest.mark.parametrize("name", ZOO)
def test_structure_forward_and_stage_hooks(name):
    """num_classes 10 and 100 give the right logits; stages are 4D with non-increasing size;
    the only Linear is ``fc`` and its input is the pooled embedding; no module's output is
    overwritten in place later in the forward (so hooks anywhere are safe)."""
    model = create_model(name, num_classes=10).eval()
    assert model.fc.out_features == 10
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [model.fc]
    assert isinstance(model.dropout, nn.Identity)
    stages = get_stages(model)
    assert [n for n, _ in stages] == list(type(model).stage_names) and len(stages) >= 3

    seen: dict[str, torch.Tensor] = {}
    snapshots: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    handles = []
    for mod_name, module in model.named_modules():
        def hook(mod, inp, out, mod_name=mod_name):
            assert isinstance(out, torch.Tensor), f"{mod_name} returned {type(out)}"
            seen[mod_name] = out
            snapshots.append((mod_name, out, out.detach().clone()))
        handles.append(module.register_forward_hook(hook))
    pre = {}
    handles.append(model.fc.register_forward_pre_hook(lambda m, args: pre.setdefault("x", args[0])))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()

    assert logits.shape == (2, 10)
    assert torch.equal(seen[""], logits)  # root hook: forward returns the logits tensor only
    for mod_name, live, snap in snapshots:
        assert torch.equal(live, snap), f"output of {mod_name!r} was modified in place"
    sizes = []
    for stage_name, _ in stages:
        out = seen[stage_name]
        assert out.dim() == 4 and out.shape[0] == 2, (stage_name, out.shape)
        sizes.append(out.shape[-2:])
    assert all(b[0] <= a[0] and b[1] <= a[1] for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[-1][0] < sizes[0][0]
    assert pre["x"].shape == (2, model.fc.in_features)
    assert torch.equal(pre["x"], seen["flatten"])

    model100 = create_model(name, num_classes=100).eval()
    with torch.no_grad():
        assert model100(x[:1]).shape == (1, 100)


@pytest.mark.parametrize("name", FAMILIES)
def test_other_input_sizes(name):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 48)).shape == (1, 7)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_vgg_pools_once_more_for_64px_inputs():
    model = create_model("vgg8").eval()
    seen = {}
    model.block4.register_forward_hook(lambda m, i, o: seen.__setitem__("b4", o.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        assert seen["b4"] == 4  # CRD: no pool3 on 32x32
        model(torch.randn(1, 3, 64, 64))
        assert seen["b4"] == 4  # CRD: pool3 on 64x64 (Tiny-ImageNet)


@pytest.mark.parametrize("name", FAMILIES)
def test_dropout_kwarg(name):
    model = create_model(name, num_classes=10, dropout=0.5)
    assert n_params(model) == n_params(create_model(name, num_classes=10))
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    got = {}
    model.flatten.register_forward_hook(lambda m, i, o: got.__setitem__("emb", o))
    model.fc.register_forward_pre_hook(lambda m, args: got.__setitem__("fc_in", args[0]))
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    emb, fc_in = got["emb"], got["fc_in"]
    kept = fc_in != 0
    assert torch.allclose(fc_in[kept], 2 * emb[kept])
    assert ((fc_in == 0) & (emb != 0)).any()  # some units were dropped
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert torch.equal(got["fc_in"], got["emb"])


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="dropout"):
        create_model("resnet8", dropout=1.5)
    with pytest.raises(ConfigError, match="unexpected"):
        create_model("resnet8", widen=3)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet8", num_classes=0)
    with pytest.raises(ConfigError):
        create_model("torchvision.resnet18", not_an_argument=1)


def test_torchvision_passthrough():
    model = create_model("torchvision.resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    mnv2 = create_model("torchvision.mobilenet_v2", num_classes=5, dropout=0.1)
    assert mnv2.classifier[-1].out_features == 5
    names = list_models(include_torchvision=True)
    assert {"torchvision.resnet18", "torchvision.mobilenet_v2", "resnet8x4"} <= set(names)
    assert not any(n.startswith("torchvision.") for n in list_models())
    with pytest.raises(ConfigError, match="stage_names"):
        get_stages(model)


def test_unknown_zoo_name_lists_choices():
    with pytest.raises(UnknownNameError) as exc:
        create_model("resnet9")
    msg = str(exc.value)
    assert "resnet9" in msg and "did you mean" in msg
    for valid in ZOO:
        assert valid in msg
    assert "torchvision.<name>" in msg
    assert isinstance(exc.value, ValueError)


def test_unknown_torchvision_name_lists_choices():
    with pytest.raises(UnknownNameError) as exc:
        create_model("torchvision.resnet19")
    msg = str(exc.value)
    assert "torchvision.resnet19" in msg
    assert "torchvision.resnet18" in msg and "torchvision.mobilenet_v2" in msg
    # detection / segmentation models are not classification models
    with pytest.raises(UnknownNameError):
        create_model("torchvision.fasterrcnn_resnet50_fpn")


def test_register_model(monkeypatch):
    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))

    @register_model("tiny_test_net")
    def tiny(num_classes: int = 100, dropout: float = 0.0) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(12, num_classes))

    assert "tiny_test_net" in list_models()
    assert create_model("tiny_test_net", num_classes=3)(torch.randn(2, 3, 2, 2)).shape == (2, 3)


def test_config_nodes_in_kwargs_reach_the_model_as_plain_values(monkeypatch):
    """``model.kwargs`` arrive as OmegaConf nodes (``dict(cfg.model.kwargs)``); the factory gets dicts and lists, so
    no module holds a config node (torch.compile cannot trace one)."""
    from omegaconf import OmegaConf

    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))
    seen = {}

    @register_model("tiny_kwargs_net")
    def tiny(num_classes: int = 100, widths=(4,), extra=None) -> nn.Module:
        seen.update(widths=widths, extra=extra)
        return nn.Linear(widths[0], num_classes)

    kw = OmegaConf.create({"widths": [6, 8], "extra": {"a": [1], "b": "${widths}"}})
    create_model("tiny_kwargs_net", num_classes=3, **dict(kw))
    assert seen == {"widths": [6, 8], "extra": {"a": [1], "b": [6, 8]}}
    assert type(seen["widths"]) is list and type(seen["extra"]) is dict and type(seen["extra"]["a"]) is list


def test_convert_repdistiller_state_dict():
    model = create_model("vgg8", num_classes=10)
    crd_style = {
        ("module.classifier." + k[3:] if k.startswith("fc.") else "module." + k): v
        for k, v in model.state_dict().items()
    }
    fresh = create_model("vgg8", num_classes=10)
    fresh.load_state_dict(convert_repdistiller_state_dict(crd_style), strict=True)
    assert torch.equal(fresh.fc.weight, model.fc.weight)
    sd = convert_repdistiller_state_dict({"linear.weight": 1, "classifier.0.bias": 2, "layer1.x": 3})
    assert sd == {"fc.weight": 1, "fc.bias": 2, "layer1.x": 3}
