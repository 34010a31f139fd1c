"""Recompute ``tests/golden/modern_selfkd.npz``, the authors'-code values that ``tests/test_modern_selfkd.py`` checks
USKD, Zipf's label smoothing and MixSKD against (not a test; not part of the package; the authors' code is read from
their checkouts and run here, outside the project -- tfdistill is not imported -- never copied into it).

    git clone https://github.com/yzd-v/cls_KD cls_KD                      # at 1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66
    git clone https://github.com/megvii-research/zipfls zipfls            # at 108e27aaf81aee0dc6dcd965ed6389f2ea06ba10
    git clone https://github.com/winycg/Self-KD-Lib selfkdlib             # at ede3062d1193626da2bc8a1ceba535d84fb0a08c
    python tests/golden/modern_selfkd_authors.py cls_KD zipfls selfkdlib  # writes tests/golden/modern_selfkd.npz

(winycg/MixSKD, the paper's link, could not be fetched here; winycg/Self-KD-Lib is the same first author's library
that ships MixSKD, ``main_mixskd_cifar.py``; the results record which.)

Patches to the authors' code, all of them (device and registry only):
* every file: ``.cuda()`` removed (CPU);
* cls_KD ``uskd.py``: ``mmcls.registry.MODELS`` is a stub whose ``register_module()`` returns the class unchanged;
* zipfls: ``losses.py`` imports ``zipf_utils`` from its own folder (put on ``sys.path``). The dense votes come from
  their ``CIFAR_ResNet.forward`` (``cifar_models/resnet.py``) called on an object whose stem and stages are
  identities, so that the given feature map reaches their vote code as ``layer4``'s output; their ``linear`` and
  ``gap`` are a ``nn.Linear`` with the case's weights and a global average pool.
* Self-KD-Lib: ``mixup_data``, ``mixup_criterion`` and ``train`` are taken from ``main_mixskd_cifar.py`` and
  (nested there, dedented) ``main_mixskd_imagenet.py`` and their ``train`` runs one batch, unchanged but for
  ``.cuda(...)``, among stand-ins for the harness around the loss: ``net`` returns the case's classifier logits,
  final-stage maps and self-teacher logits as leaf tensors; ``AverageMeter`` records each meter's value;
  ``adjust_lr``, ``correct_num``, the optimizer's ``zero_grad``/``step`` and ``print`` do nothing. ``DistillKL`` is
  their ``utils.py``'s class, ``discriminatorLoss`` their ``methods/adversarial.py``. The value is the sum of the four
  meters their backpropagated loss is made of (``loss_cls + loss_div + loss_fea + loss_gan``), the gradients what
  that ``loss.backward()`` left on the leaves; the CIFAR script's unused ``loss_mixcls`` is kept too.

Inputs come from seeded generators (the seed of every case is stored with it); values and gradients are float32
from the authors' code on the CPU.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = Path(__file__).with_name("modern_selfkd.npz")


def no_cuda(src: str) -> str:
    return src.replace(".cuda()", "")


def load(path: Path, name: str, patch=no_cuda) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod
    exec(compile(patch(path.read_text()), str(path), "exec"), mod.__dict__)
    return mod


# ----------------------------------------------------------------------------------------------------- USKD
USKD_CASES = [  # (seed, N, K, C_mid, alpha, beta, mu, logit scale)
    (0, 8, 10, 16, 0.1, 0.1, 0.1, 3.0),
    (1, 12, 100, 16, 1.0, 0.1, 0.005, 4.0),
    (2, 5, 7, 8, 0.5, 0.3, 0.2, 2.0),
    (3, 8, 120, 8, 1.0, 0.1, 0.005, 1.0),
    (4, 12, 3, 6, 0.1, 0.1, 0.1, 5.0),
]


def uskd_cases(cls_kd: Path) -> list[dict]:
    reg = types.ModuleType("mmcls.registry")
    reg.MODELS = types.SimpleNamespace(register_module=lambda *a, **k: (lambda c: c))
    sys.modules.setdefault("mmcls", types.ModuleType("mmcls"))
    sys.modules["mmcls.registry"] = reg
    mod = load(cls_kd / "mmcls" / "models" / "dis_losses" / "uskd.py", "authors_uskd")
    out = []
    for seed, n, k, c, alpha, beta, mu, scale in USKD_CASES:
        g = torch.Generator().manual_seed(1000 + seed)
        torch.manual_seed(seed)  # nn.Linear's initialisation inside USKDLoss
        loss = mod.USKDLoss("loss_uskd", True, channel=c, alpha=alpha, beta=beta, mu=mu, num_classes=k)
        logits = (torch.randn(n, k, generator=g) * scale).requires_grad_()
        fea = torch.randn(n, c, generator=g).requires_grad_()
        labels = torch.randint(0, k, (n,), generator=g)
        value = loss(fea, logits, labels)
        value.backward()
        out.append({"seed": seed, "alpha": alpha, "beta": beta, "mu": mu, "logits": logits.detach(),
                    "fea_mid": fea.detach(), "labels": labels, "weight": loss.fc.weight.detach().clone(),
                    "bias": loss.fc.bias.detach().clone(), "value": float(value),
                    "grad_logits": logits.grad, "grad_fea_mid": fea.grad, "grad_weight": loss.fc.weight.grad,
                    "grad_bias": loss.fc.bias.grad})
    return out


# ----------------------------------------------------------------------------------------------- Zipf's LS
ZIPF_CASES = [  # (seed, N, C, H, W, K, power, upsample)
    (0, 8, 16, 4, 4, 10, 1.0, "bilinear"),
    (1, 6, 8, 2, 2, 5, 1.0, "bilinear"),
    (2, 6, 8, 7, 7, 100, 1.0, None),
    (3, 8, 16, 4, 4, 20, 2.0, "bicubic"),
    (4, 12, 24, 3, 3, 50, 0.5, None),
]


class _Identity(nn.Module):
    def forward(self, x):
        return x


def zipf_cases(zipfls: Path) -> list[dict]:
    root = zipfls / "pytorch_zipfls"
    sys.path.insert(0, str(root))
    losses = load(root / "losses.py", "authors_zipf_losses")
    resnet = load(root / "cifar_models" / "resnet.py", "authors_zipf_resnet")
    out = []
    for seed, n, c, h, w, k, power, upsample in ZIPF_CASES:
        g = torch.Generator().manual_seed(2000 + seed)
        fmap = torch.randn(n, c, h, w, generator=g).relu()
        linear = nn.Linear(c, k)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(k, c, generator=g))
            linear.bias.copy_(torch.randn(k, generator=g) * 0.1)
        labels = torch.randint(0, k, (n,), generator=g)
        net = nn.Module()
        for name in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4"):
            setattr(net, name, _Identity())
        net.upsample = upsample
        net.linear, net.gap = linear, nn.AdaptiveAvgPool2d(1)
        net.linear2, net.gap2 = nn.Linear(c, k), nn.AdaptiveAvgPool2d(1)
        net.linear3, net.gap3 = nn.Linear(c, k), nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            logit_final, _feat, dense = resnet.CIFAR_ResNet.forward(net, fmap)[0]
        logits = logit_final.detach().clone().requires_grad_()
        value = losses.zipf_loss(None, logits, dense, labels, False, "rank_zipf", True, "hard", False, power,
                                 0.001, 1.0)
        value.backward()
        out.append({"seed": seed, "power": power, "upsample": upsample or "none", "feature_map": fmap,
                    "weight": linear.weight.detach().clone(), "bias": linear.bias.detach().clone(),
                    "labels": labels, "logits": logits.detach(), "dense_argmax": dense, "value": float(value),
                    "grad_logits": logits.grad})
    return out


# ---------------------------------------------------------------------------------------------------- MixSKD
MIXSKD_CASES = [  # (seed, script, S stages, B, K, C, h, T, mixup alpha)
    (0, "cifar", 4, 4, 10, 4, 2, 3.0, 0.4),
    (1, "cifar", 3, 6, 7, 4, 3, 3.0, 0.4),
    (2, "cifar", 2, 5, 20, 4, 1, 4.0, 0.4),
    (3, "imagenet", 4, 4, 10, 4, 2, 3.0, 0.2),
    (4, "imagenet", 3, 6, 12, 3, 2, 3.0, 0.2),
]


def _block(src: str, name: str) -> str:
    """The source of ``def name`` (top level or nested, dedented) up to the next ``def`` at its indentation."""
    import textwrap

    m = re.search(rf"^( *)def {name}\(.*?(?=^\1def |\Z)", src, flags=re.S | re.M)
    return textwrap.dedent(m.group(0))


class _Meter:
    """Stands in for their AverageMeter: records the last value of every named meter."""
    seen: dict = {}

    def __init__(self, name, fmt=":f"):
        self.name, self.avg = name, 0.0

    def update(self, val, n=1):
        self.avg = val
        _Meter.seen[self.name] = float(val)


def mixskd_cases(selfkdlib: Path) -> list[dict]:
    import numpy as np

    adv = load(selfkdlib / "methods" / "adversarial.py", "authors_mixskd_adv")
    utils_src = (selfkdlib / "utils.py").read_text()  # only their DistillKL (utils.py imports more)
    ns_utils: dict = {}
    exec("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
         + re.search(r"^class DistillKL\(.*?(?=^\S)", utils_src, flags=re.S | re.M).group(0), ns_utils)
    out = []
    for seed, script, S, B, K, C, h, T, alpha in MIXSKD_CASES:
        src = no_cuda((selfkdlib / f"main_mixskd_{script}.py").read_text())
        src = re.sub(r"\.cuda\([^)]*\)", "", src)
        g = torch.Generator().manual_seed(3000 + seed)
        logits = [(torch.randn(2 * B, K, generator=g) * 2).requires_grad_() for _ in range(S)]
        feats = [torch.randn(2 * B, C, h, h, generator=g).requires_grad_() for _ in range(S)]
        ens = (torch.randn(B, K, generator=g) * 2).requires_grad_()
        ens_mix = (torch.randn(B, K, generator=g) * 2).requires_grad_()
        targets = torch.randint(0, K, (B,), generator=g)

        class Net(nn.Module):
            def forward(self, x, lam, index):
                return logits, feats, ens, ens_mix

        torch.manual_seed(seed)
        np.random.seed(seed)
        crit_gan = adv.discriminatorLoss([C] * S)
        drawn: dict = {}
        glb = {"np": np, "torch": torch, "nn": nn, "F": F, "time": __import__("time"), "print": lambda *a, **k: None,
               "AverageMeter": _Meter, "num_stage": S, "net": Net(), "trainloader": [(torch.zeros(B, 1), targets)],
               "args": types.SimpleNamespace(warmup_epoch=0, mixup_alpha=alpha, rank=1, log_txt="/dev/null"),
               "adjust_lr": lambda *a, **k: 0.1, "log_txt": "/dev/null",
               "correct_num": lambda out, target, topk=(1,): [torch.zeros(()) for _ in topk]}
        exec(_block(src, "mixup_data") + "\n" + _block(src, "mixup_criterion") + "\n" + _block(src, "train"), glb)
        real_mix = glb["mixup_data"]

        def mixup_data(*a, **k):
            res = real_mix(*a, **k)
            drawn["lam"], drawn["index"] = res[3], res[4]
            return res

        glb["mixup_data"] = mixup_data
        _Meter.seen = {}
        opt = types.SimpleNamespace(zero_grad=lambda: None, step=lambda: None, param_groups=[{"lr": 0.1}])
        glb["train"](0, [nn.CrossEntropyLoss(), ns_utils["DistillKL"](T), crit_gan], opt)
        seen = _Meter.seen
        total = seen["train_loss_cls"] + seen["train_loss_div"] + seen["train_loss_fea"] + seen["train_loss_gan"]
        disc = [[p.detach().clone() for p in d.parameters()] for d in crit_gan.classifier]
        zeros = lambda t: torch.zeros_like(t) if t.grad is None else t.grad
        out.append({"seed": seed, "script": script, "mixup_ce": script == "imagenet", "T": T,
                    "lam": float(drawn["lam"]), "perm": drawn["index"], "targets": targets,
                    "logits": torch.stack([t.detach() for t in logits]),
                    "feats": torch.stack([t.detach() for t in feats]),
                    "ens": ens.detach(), "ens_mix": ens_mix.detach(),
                    **{f"disc_{k}": torch.stack([d[k] for d in disc]) for k in range(4)},
                    "value": total, "value_mixcls": seen.get("train_loss_mixcls", float("nan")),
                    "grad_logits": torch.stack([zeros(t) for t in logits]),
                    "grad_feats": torch.stack([zeros(t) for t in feats]),
                    "grad_ens": zeros(ens), "grad_ens_mix": zeros(ens_mix)})
    return out


def main(cls_kd: Path, zipfls: Path, selfkdlib: Path | None = None) -> dict:
    data = {"uskd": uskd_cases(cls_kd), "zipf_ls": zipf_cases(zipfls), "torch": str(torch.__version__),
            "commits": {"yzd-v/cls_KD": "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66",
                        "megvii-research/zipfls": "108e27aaf81aee0dc6dcd965ed6389f2ea06ba10",
                        "winycg/Self-KD-Lib": "ede3062d1193626da2bc8a1ceba535d84fb0a08c"}}
    if selfkdlib is not None:
        data["mixskd"] = mixskd_cases(selfkdlib)
    return data


def flatten(data: dict) -> dict:
    """``{"uskd": [case, ...], ...}`` -> flat ``{"uskd.0.logits": array, ...}`` for ``numpy.savez_compressed``
    (read back with ``allow_pickle=False``; ``tests/test_modern_selfkd.py`` rebuilds the nesting)."""
    import numpy as np

    flat = {}
    for key, val in data.items():
        if isinstance(val, list):
            for i, case in enumerate(val):
                for k, v in case.items():
                    flat[f"{key}.{i}.{k}"] = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        elif isinstance(val, dict):
            for k, v in val.items():
                flat[f"{key}.{k}"] = np.asarray(v)
        else:
            flat[key] = np.asarray(val)
    return flat


if __name__ == "__main__":
    import numpy as np

    args = [Path(a) for a in sys.argv[1:]]
    data = main(*args)
    np.savez_compressed(OUT, **flatten(data))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): " + ", ".join(f"{k}: {len(v)} cases" for k, v in data.items()
                                                                  if isinstance(v, list)))
