"""The tap walk: every torchvision classifier, a broad timm set, Hugging Face families and segmentation models
(torchvision's and segmentation-models-pytorch's) through FeatureTap("auto").

Each model either yields >= 2 stage maps -- (N, C, H, W), non-increasing resolution, none inside an attention or
MLP sub-block, matching the model's declaration where it has one (timm ``feature_info`` channels and stride, zoo
``stage_names``, the torchvision table's modules; for a segmentation model: its encoder's stages from stride 4 on,
never the head) -- and trains one step with a finite TFD loss and finite gradients (per-pixel CE for segmentation),
or refuses with the clear error (naming the model and how to name taps). Random weights, small inputs.

    python benchmarks/tap_walk.py                 # writes docs/taps.md (torchvision, timm and HF walks)
    python benchmarks/tap_walk.py --only hf       # one source (torchvision, timm, hf, seg); --models a,b: a few
    python benchmarks/tap_walk.py --only hf --update       # rewrite only that section of docs/taps.md
    python benchmarks/tap_walk.py --models a,b --update    # rewrite only those rows

tests/test_tap_walk.py runs the same :func:`walk_one` (the full walks are ``slow``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tfdistill.errors import ConfigError  # noqa: E402
from tfdistill.features import FeatureTap  # noqa: E402
from tfdistill.features.declared import timm_declaration  # noqa: E402
from tfdistill.features.hf_table import hf_entry  # noqa: E402
from tfdistill.features.probe import inside_attention_or_mlp  # noqa: E402
from tfdistill.features.segmentation_table import segmentation_entry  # noqa: E402
from tfdistill.features.torchvision_table import torchvision_entry  # noqa: E402
from tfdistill.losses import TFDLoss  # noqa: E402
from tfdistill.models import create_model  # noqa: E402
from tfdistill.models.segmentation import SMP_PREFIX, TORCHVISION_SEGMENTATION  # noqa: E402

# torchvision: input side per model (default 64 px: the smallest at which their deepest stage keeps 2x2)
TV_SIZE = {"inception_v3": 160, "maxvit_t": 224}
TV_KWARGS = {  # torchvision ViTs are built for one input size: give them a small one
    "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64}, "vit_l_16": {"image_size": 64},
    "vit_l_32": {"image_size": 64}, "vit_h_14": {"image_size": 56},
}
TV_SIZE.update({"vit_h_14": 56})

# timm: tiny variants across families; (name, input side, extra kwargs)
TIMM_MODELS: list[tuple[str, int, dict]] = [
    # CNNs
    ("resnet10t", 64, {}), ("resnet18", 64, {}), ("resnetv2_18", 64, {}), ("resnext26ts", 64, {}),
    ("efficientnet_b0", 64, {}), ("tf_efficientnetv2_b0", 64, {}), ("mobilenetv2_050", 64, {}),
    ("mobilenetv3_small_050", 64, {}), ("mobilenetv4_conv_small", 64, {}), ("lcnet_050", 64, {}),
    ("mnasnet_small", 64, {}), ("tinynet_e", 64, {}), ("ghostnet_050", 64, {}), ("ghostnetv2_100", 64, {}),
    ("rexnet_100", 64, {}), ("regnetx_002", 64, {}), ("regnety_002", 64, {}), ("convnext_atto", 64, {}),
    ("convnextv2_atto", 64, {}), ("densenet121", 64, {}), ("dla46_c", 64, {}), ("hrnet_w18_small", 64, {}),
    ("repvit_m0_9", 64, {}), ("mobileone_s0", 64, {}), ("hgnetv2_b0", 64, {}), ("fbnetc_100", 64, {}),
    ("cspresnet50", 64, {}), ("res2net50_14w_8s", 64, {}), ("starnet_s050", 64, {}), ("vgg11", 64, {}),
    # ViTs and other isotropic token models
    ("vit_tiny_patch16_224", 64, {"img_size": 64}), ("vit_small_patch32_224", 64, {"img_size": 64}),
    ("deit_tiny_patch16_224", 64, {"img_size": 64}), ("deit_tiny_distilled_patch16_224", 64, {"img_size": 64}),
    ("vit_tiny_r_s16_p8_224", 64, {"img_size": 64}), ("eva02_tiny_patch14_224", 56, {"img_size": 56}),
    ("beit_base_patch16_224", 64, {"img_size": 64}), ("cait_xxs24_224", 64, {"img_size": 64}),
    ("xcit_nano_12_p16_224", 64, {"img_size": 64}), ("convit_tiny", 64, {"img_size": 64}),
    ("mixer_s16_224", 64, {"img_size": 64}), ("resmlp_12_224", 64, {"img_size": 64}),
    ("gmlp_ti16_224", 64, {"img_size": 64}), ("vit_small_patch14_reg4_dinov2", 56, {"img_size": 56}),
    # hierarchical transformers and hybrids
    ("swin_tiny_patch4_window7_224", 64, {"img_size": 64}), ("swinv2_cr_tiny_ns_224", 64, {"img_size": 64}),
    ("maxvit_rmlp_pico_rw_256", 64, {"img_size": 64}), ("coatnet_nano_rw_224", 64, {"img_size": 64}),
    ("levit_128s", 64, {"img_size": 64}), ("fastvit_t8", 64, {}), ("efficientformer_l1", 224, {}),
    ("efficientformerv2_s0", 64, {"img_size": 64}), ("poolformer_s12", 64, {}), ("poolformerv2_s12", 64, {}),
    ("edgenext_xx_small", 64, {}), ("mobilevit_xxs", 64, {}), ("mobilevitv2_050", 64, {}),
    ("efficientvit_b0", 64, {}), ("tiny_vit_5m_224", 224, {}), ("pvt_v2_b0", 64, {}),
    ("davit_tiny", 64, {}), ("focalnet_tiny_srf", 64, {}), ("hiera_tiny_224", 64, {"img_size": (64, 64)}),
    ("crossvit_tiny_240", 240, {}), ("visformer_tiny", 64, {"img_size": 64}),
]


# Hugging Face transformers: tiny configs (random weights, no download); (model_type, input side, config kwargs)
_VIT = dict(hidden_size=32, num_hidden_layers=8, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=8)
_SWIN = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], image_size=64, patch_size=4, window_size=2)
_STAGES = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])
HF_MODELS: list[tuple[str, int, dict]] = [
    ("vit", 64, _VIT), ("vit_msn", 64, _VIT), ("deit", 64, dict(_VIT, encoder_stride=8)), ("beit", 64, _VIT),
    ("data2vec-vision", 64, _VIT), ("dinov2", 64, _VIT),
    ("dinov2_with_registers", 64, dict(_VIT, num_register_tokens=4)),
    ("ijepa", 64, _VIT),
    ("swin", 64, _SWIN), ("swinv2", 64, _SWIN), ("donut-swin", 64, _SWIN),
    ("focalnet", 64, dict(embed_dim=16, depths=[1, 1, 2, 1], image_size=64, patch_size=4)),
    ("resnet", 64, dict(_STAGES, embedding_size=8)), ("convnext", 64, _STAGES), ("convnextv2", 64, _STAGES),
    ("regnet", 64, dict(_STAGES, embedding_size=8, groups_width=8)),
    ("bit", 64, dict(embedding_size=16, hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 1, 1], num_groups=4)),
    ("hgnet_v2", 64, {}), ("textnet", 64, {}),
    ("segformer", 64, dict(_STAGES, num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16)),
    ("mobilenet_v1", 64, dict(depth_multiplier=0.25, image_size=64)),
    ("mobilenet_v2", 64, dict(depth_multiplier=0.25, image_size=64)),
    ("efficientnet", 64, dict(width_coefficient=0.25, depth_coefficient=0.25, image_size=64, hidden_dim=320)),
    ("mobilevit", 64, dict(image_size=64, neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], hidden_sizes=[16, 24, 32])),
    ("mobilevitv2", 64, dict(image_size=64, width_multiplier=0.25)), ("swiftformer", 64, {}),
    ("pvt_v2", 64, dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1])),
    ("clip", 64, dict(vision_config=_VIT)), ("siglip", 64, dict(vision_config=_VIT)),
    ("hiera", 64, dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=[64, 64])),
]
# segmentation: torchvision's models (and the zoo's deeplabv3_resnet18), every segmentation-models-pytorch
# architecture on a ResNet18 encoder, and smp's Unet across encoder families; (name, input side, kwargs)
SEG_TORCHVISION = ["deeplabv3_resnet18", *TORCHVISION_SEGMENTATION]
SMP_ENCODERS = ["resnet34", "resnext50_32x4d", "se_resnet50", "mobilenet_v2", "efficientnet-b0", "vgg11",
                "inceptionv4", "tu-resnet18", "tu-convnext_atto", "tu-mobilenetv3_small_100", "timm-regnetx_002",
                "timm-efficientnet-b0", "mit_b0", "densenet121", "mobileone_s0"]
SMP_KWARGS = {"DPT": {"encoder_name": "tu-vit_tiny_patch16_224", "dynamic_img_size": True}}
SMP_SIZE = {"PAN": 128}  # PAN's pyramid pools its deepest map down by 8 more
HF_CLASS = {"deit": "DeiTForImageClassification"}  # the Auto class maps deit to two classes


def hf_model(model_type: str, num_classes: int = 10, **kwargs):
    """A Hugging Face image classifier built from a tiny config (random weights)."""
    import transformers
    from transformers import AutoConfig, AutoModelForImageClassification

    cfg = AutoConfig.for_model(model_type, num_labels=num_classes, **kwargs)
    if model_type in HF_CLASS:
        return getattr(transformers, HF_CLASS[model_type])(cfg)
    return AutoModelForImageClassification.from_config(cfg)


def timm_family(name: str) -> str:
    """The timm module (family) a ``timm.<name>`` model is defined in, e.g. ``vision_transformer``."""
    import timm.models._registry as registry

    return getattr(registry, "_model_to_module", {}).get(name.removeprefix("timm."), "?")


@dataclass
class Result:
    model: str
    size: int
    ok: bool
    rule: str = ""
    taps: list[str] = field(default_factory=list)
    refusal: str = ""
    loss: float = float("nan")
    seconds: float = 0.0

    def row(self) -> str:
        if self.ok:
            return (f"| `{self.model}` | {self.size} | {self.rule.split(';')[0]} | "
                    + ", ".join(f"`{t}`" for t in self.taps) + " |")
        return f"| `{self.model}` | {self.size} | **refused** | {self.refusal} |"


def _check_plan(model, name: str, plan, feats) -> None:
    """Every invariant of a tap plan (raises AssertionError with the reason)."""
    mods = dict(model.named_modules())
    assert len(feats) >= 2, f"{name}: {len(feats)} maps"
    for t, f in zip(plan.taps, feats):
        assert f.dim() == 4 and tuple(f.shape[1:]) == t.shape, (name, t.name, tuple(f.shape), t.shape)
        assert f.shape[2] * f.shape[3] > 1, (name, t.name)
        assert not inside_attention_or_mlp(t.name, mods), f"{name}: {t.name} lies inside attention/MLP"
    for a, b in zip(plan.taps, plan.taps[1:]):
        assert b.shape[1] <= a.shape[1] and b.shape[2] <= a.shape[2], f"{name}: resolution grows {a} -> {b}"
    if plan.rule.startswith("declared (timm"):
        info = {d["module"]: d for d in model.feature_info}
        for t in plan.taps:
            d = info[t.name]
            assert t.shape[0] == d["num_chs"], (name, t.name, t.shape, d)
            if t.stride.isdigit():
                assert int(t.stride) == d["reduction"], (name, t.name, t.stride, d)
    elif plan.rule.startswith("declared (stage_names"):
        assert set(plan.names) <= set(model.stage_names), (name, plan.names)
    elif plan.rule.startswith("table (Hugging Face"):
        entry = hf_entry(model)
        assert entry is not None and set(plan.names) <= {n for n, _ in entry[1]}, (name, plan.names)
        stem = ("embedder", "embeddings", "stem", "conv_stem")
        assert not any(part in stem for t in plan.names for part in t.split(".")), (name, plan.names)
        if entry[1] and entry[1][0][1].kind == "tokens":
            assert len(feats) >= 3, f"{name}: a token model gives {len(feats)} grid maps"
    elif segmentation_entry(model) is not None:
        entry = segmentation_entry(model)
        assert set(plan.names) <= {n for n, _ in entry[1]}, (name, plan.names)
        head = ("classifier", "aux_classifier", "decoder", "segmentation_head", "aux_head")
        assert not any(t.split(".")[0] in head for t in plan.names), f"{name}: a head is tapped: {plan.names}"
        assert all(not t.stride.isdigit() or int(t.stride) >= 4 for t in plan.taps), f"{name}: the stem is tapped"
        encoder = getattr(model, "encoder", None)
        if encoder is not None:  # segmentation-models-pytorch: the encoder's declared stage channels, in order
            chans, got = list(encoder.out_channels), [t.shape[0] for t in plan.taps]
            assert any(chans[k:k + len(got)] == got for k in range(len(chans))), (name, got, chans)
    elif plan.rule.startswith("table"):
        entry = torchvision_entry(model)
        assert entry is not None and set(plan.names) <= {n for n, _ in entry[1]}, (name, plan.names)
    else:
        assert timm_declaration(model, {}, None) is None and torchvision_entry(model) is None, \
            f"{name}: a model with a declaration fell back to the probe"


def _label(name: str, kwargs: dict | None) -> str:
    """The row's name: the model, with its segmentation-models-pytorch encoder where one is given."""
    return f"{name} ({kwargs['encoder_name']})" if kwargs and "encoder_name" in kwargs else name


def walk_one(name: str, size: int, kwargs: dict | None = None, *, batch: int = 2) -> Result:
    """Build ``name`` (random weights), plan its taps on a ``size`` px input and train one step (module docs)."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    label = _label(name, kwargs)
    dense = name.startswith(SMP_PREFIX) or name in SEG_TORCHVISION
    if name.startswith("hf."):
        model = hf_model(name.removeprefix("hf."), num_classes=10, **(kwargs or {}))
    else:
        model = create_model(name, num_classes=10, **(kwargs or {}))
    model.train()
    x = torch.randn(batch, 3, size, size)
    tap = FeatureTap(model, "auto", model_name=name)
    try:
        tap.discover(x)
    except ConfigError as exc:
        msg = str(exc)
        # the one clear error: the standard one naming the model, or a segmentation table's naming its encoder
        assert "name the taps" in msg and (name in msg or type(model).__name__ in msg), msg
        return Result(label, size, False, refusal=msg.split(" (got:")[0], seconds=time.perf_counter() - t0)
    logits, feats = tap(x)
    logits = getattr(logits, "logits", logits)  # a Hugging Face model returns an output object
    plan = tap.plan()
    _check_plan(model, name, plan, feats)
    tfd = TFDLoss(alpha=1.0, beta=1.0)(feats)
    target = torch.arange(batch) % 10
    if dense:  # per-pixel CE on (N, K, H, W) logits
        assert logits.dim() == 4 and logits.shape[-2:] == x.shape[-2:], (name, tuple(logits.shape))
        target = torch.randint(0, 10, (batch, size, size), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(logits.float(), target) + tfd["total"]
    assert torch.isfinite(tfd["depth"]) and torch.isfinite(tfd["width"]) and tfd["depth"] > 0, (name, tfd)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), f"{name}: no or non-finite gradients"
    # the TFD terms reach the tapped modules' parameters
    first = dict(model.named_modules())[plan.taps[0].name]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters()) or \
        not any(True for _ in first.parameters()), f"{name}: no gradient at {plan.taps[0].name}"
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    tap.remove()
    return Result(label, size, True, rule=plan.rule, taps=plan.names, loss=float(loss.detach()),
                  seconds=time.perf_counter() - t0)


def torchvision_models() -> list[tuple[str, int, dict]]:
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    return [(f"torchvision.{n}", TV_SIZE.get(n, 64), TV_KWARGS.get(n, {})) for n in names]


def timm_models() -> list[tuple[str, int, dict]]:
    return [(f"timm.{n}", s, kw) for n, s, kw in TIMM_MODELS]


def hf_models() -> list[tuple[str, int, dict]]:
    return [(f"hf.{n}", s, kw) for n, s, kw in HF_MODELS]


def seg_models() -> list[tuple[str, int, dict]]:
    """torchvision's segmentation models, then every segmentation-models-pytorch architecture (ResNet18 encoder),
    then smp's Unet across :data:`SMP_ENCODERS` (when segmentation-models-pytorch is installed)."""
    out: list[tuple[str, int, dict]] = [(n, 64, {}) for n in SEG_TORCHVISION]
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return out
    archs = sorted(n for n in dir(smp) if isinstance(getattr(smp, n), type)
                   and issubclass(getattr(smp, n), torch.nn.Module) and n[0].isupper())
    out += [(f"{SMP_PREFIX}{a}", SMP_SIZE.get(a, 64), SMP_KWARGS.get(a, {})) for a in archs]
    out += [(f"{SMP_PREFIX}Unet", 64, {"encoder_name": e}) for e in SMP_ENCODERS]
    return out


def _table(results: list[Result], title: str) -> list[str]:
    ok = sum(r.ok for r in results)
    out = [f"### {title}", "", f"{len(results)} models: {ok} tapped, {len(results) - ok} refused.", "",
           "| model | input px | rule | taps (shallow to deep) / refusal |", "|---|---|---|---|"]
    out += [r.row() for r in results]
    return out + [""]


WALKS = "## The walks"


def _versions() -> str:
    import torchvision

    versions = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    for mod in ("timm", "transformers", "segmentation_models_pytorch"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return ", ".join(versions) + "."


def _intro(path: Path) -> list[str]:
    """What docs/taps.md says above its walks (written by hand; the walk rewrites only what follows)."""
    text = path.read_text() if path.exists() else "# Feature taps\n"
    head = text.split(WALKS)[0].rstrip("\n")
    return head.split("\n") + [""]


def _update(text: str, sections: list[tuple[str, list[Result]]], whole: bool) -> str:
    """``text`` with the walked sections replaced (``whole``; a section not there yet is appended), or only the
    rows of the walked models (and each section's count line) replaced; the versions line is refreshed."""
    lines = text.split("\n")
    for k, ln in enumerate(lines):
        if ln.startswith("torch ") and ln.endswith("."):
            lines[k] = _versions()
            break
    text = "\n".join(lines)
    for title, results in sections:
        head = f"### {title}"
        if whole:
            block = "\n".join(_table(results, title))
            if head in text:
                start = text.index(head)
                nxt = text.find("\n### ", start + 1)
                text = text[:start] + block.rstrip("\n") + ("\n" + text[nxt:] if nxt >= 0 else "\n")
            else:
                text = text.rstrip("\n") + "\n\n" + block
            continue
        for r in results:
            lines = text.split("\n")
            lines = [r.row() if ln.startswith(f"| `{r.model}` |") else ln for ln in lines]
            text = "\n".join(lines)
        if head in text:  # recount the section from its rows
            start = text.index(head)
            nxt = text.find("\n### ", start + 1)
            body = text[start:nxt if nxt >= 0 else len(text)]
            rows = [ln for ln in body.split("\n") if ln.startswith("| `")]
            refused = sum("| **refused** |" in ln for ln in rows)
            count = [ln for ln in body.split("\n") if ln.endswith(" refused.") and " models: " in ln]
            if count:
                text = text.replace(count[0], f"{len(rows)} models: {len(rows) - refused} tapped, {refused} refused.",
                                    1)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("torchvision", "timm", "hf", "seg"), default=None)
    p.add_argument("--models", default=None, help="comma-separated names (with their prefix) to walk only those")
    p.add_argument("--update", action="store_true",
                   help="with --only or --models: rewrite only those sections or rows of the existing --out file")
    p.add_argument("--out", default=str(REPO / "docs" / "taps.md"))
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    groups = []
    if ns.only in (None, "torchvision"):
        groups.append(("torchvision (every classification model of torchvision.models.list_models)",
                       torchvision_models()))
    if ns.only in (None, "timm"):
        groups.append(("timm (a broad set: CNNs, ViTs, hybrids, MLPs; tiniest variants)", timm_models()))
    if ns.only in (None, "hf"):
        groups.append(("Hugging Face transformers (image classifiers from tiny configs, `hf.<model_type>`)",
                       hf_models()))
    if ns.only in (None, "seg"):
        groups.append(("Segmentation (torchvision and segmentation-models-pytorch: encoder stages, never the head)",
                       seg_models()))
    lines = _intro(Path(ns.out)) + [
        WALKS, "",
        "Written by `python benchmarks/tap_walk.py` (re-run it to refresh); checked by `tests/test_tap_walk.py`. "
        "Each model was built with random weights, its taps resolved by `FeatureTap(model, \"auto\")` on the "
        "input size shown, and trained one step with CE + TFD (per-pixel CE for segmentation; finite loss and "
        "gradients), or it refused with "
        "the error shown. Rules: see `src/tfdistill/features/resolve.py`.", ""]
    lines += [_versions(), ""]
    failed = []
    sections: list[tuple[str, list[Result]]] = []
    for title, models in groups:
        if ns.models:
            wanted = set(ns.models.split(","))
            models = [m for m in models if m[0] in wanted]
        results = []
        for name, size, kw in models:
            try:
                r = walk_one(name, size, kw)
            except Exception as exc:  # noqa: BLE001 -- a walk failure is reported, the table still written
                failed.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                r = Result(_label(name, kw), size, False, refusal=f"WALK FAILURE {failed[-1]}")
            print(f"{r.seconds:6.1f}s {r.row()}", flush=True)
            results.append(r)
        lines += _table(results, title)
        sections.append((title, results))
    out = Path(ns.out)
    if ns.update and out.exists():
        out.write_text(_update(out.read_text(), sections, whole=not ns.models))
        print(f"updated {ns.out}")
    elif not ns.models:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines))
        print(f"wrote {ns.out}")
    for f in failed:
        print("FAILED", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
