"""Recompute the authors'-code values that ``tests/test_selfdistill_aux.py`` checks against (not a test; not part of
the package; the authors' code is read from their checkouts, never copied here).

    git clone https://github.com/Lan1991Xu/ONE_NeurIPS2018 one
    git clone https://github.com/ArchipLab-LinfengZhang/pytorch-self-distillation-final byot
    git clone https://github.com/MingiJi/FRSKD frskd
    python tests/golden/selfdistill_authors.py one byot frskd

Prints the values as JSON. The inputs are rebuilt exactly as in the test (``det`` and seeded generators).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def det(shape, k=0.0, scale=3.0):
    n = math.prod(shape)
    return (torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + k) * scale).view(*shape).float()


def load(path: Path, name: str, patch=lambda s: s):
    """Import a file of the authors' code as module ``name`` (optionally patched, e.g. to drop ``.cuda()``)."""
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod
    exec(compile(patch(path.read_text()), str(path), "exec"), mod.__dict__)
    return mod


def main(one: Path, byot: Path, frskd: Path) -> dict:
    out: dict = {}
    S, E = det((4, 5), 0.0), det((4, 5), 1.0)
    kl = load(one / "loss" / "kl_loss.py", "one_kl", lambda s: s.replace("target_data.data.cuda()", "target_data.data"))
    out["one_kl"] = float(kl.KLLoss()(S, E))

    src = (byot / "train.py").read_text()  # CrossEntropy reads the global args.temperature
    fn = re.search(r"def CrossEntropy\(outputs, targets\):\n(    .*\n)+", src).group(0)
    ns = {"F": F, "args": types.SimpleNamespace(temperature=3.0)}
    exec(fn, ns)
    out["byot_softce"] = float(ns["CrossEntropy"](S, E))
    out["byot_dist"] = float(torch.dist(det((4, 6), 2.0), det((4, 6), 3.0)))  # train.py's feature term
    res = load(byot / "resnet.py", "byot_resnet")
    net = res.ResNet(res.BasicBlock, [2, 2, 2, 2], num_classes=100)
    aux = [net.scala1, net.scala2, net.scala3, net.attention1, net.attention2, net.attention3, net.fc1, net.fc2,
           net.fc3]
    out["byot_aux_params_resnet18"] = sum(p.numel() for m in aux for p in m.parameters()) + 3 * (512 * 512 + 512)

    cls = frskd / "classification"
    sys.modules["frskd_dl"] = types.ModuleType("frskd_dl")
    sys.modules["frskd_dl"].__path__ = [str(cls / "distill_loss")]
    sys.modules["frskd_m"] = types.ModuleType("frskd_m")
    sys.modules["frskd_m"].__path__ = [str(cls / "models")]
    at = importlib.import_module("frskd_dl.AT")
    g_s = [det((4, 3, 8, 8), 0.5), det((4, 6, 4, 4), 1.5)]
    g_t = [det((4, 6, 8, 8), 2.5), det((4, 12, 4, 4), 3.5)]
    out["frskd_att_total"] = float(at.Attention(types.SimpleNamespace(alpha=2.0, beta=100.0, temperature=4.0))(
        S, E, g_s, g_t))
    bif = importlib.import_module("frskd_m.bifpnc")
    net = bif.BiFPNc([16, 32, 64], 10, types.SimpleNamespace(repeat=1, depth=[2, 2, 2], width=2,
                                                              num_features=3)).eval()
    out["bifpnc_params"] = sum(p.numel() for p in net.parameters())
    L = net.layers[0]
    groups = [L.lat_conv, L.lat_conv2, L.up_conv, L.up_weight, L.down_conv, L.down_weight, L.down_sample,
              L.up_sample, net.fc]
    params = [p for g in groups for p in g.parameters()]
    assert len(params) == len(list(net.parameters()))
    fusion = {id(p) for g in (L.up_weight, L.down_weight) for p in g.parameters()}
    with torch.no_grad():
        for k, p in enumerate(params):
            g = torch.Generator().manual_seed(1000 + k)
            p.copy_(torch.rand(tuple(p.shape), generator=g) + 0.1 if id(p) in fusion
                    else torch.randn(tuple(p.shape), generator=g) * 0.3)
        feats = [torch.randn(s, generator=torch.Generator().manual_seed(i))
                 for i, s in enumerate([(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)])]
        refined, logits = net(feats)
    out["bifpnc_logits"] = [round(float(v), 6) for v in logits.flatten()]
    out["bifpnc_refined_sums"] = [round(float(r[i].double().sum()), 4) for r in refined for i in range(2)]
    return out


if __name__ == "__main__":
    print(json.dumps(main(*(Path(a) for a in sys.argv[1:4])), indent=1))
