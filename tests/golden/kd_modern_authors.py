"""Recompute the golden files ``tests/golden/{dkd,dist,logit_stand,reviewkd}.json`` from the authors' code (not a
test; not part of the package; the authors' code is read from their checkouts and run as it is, never copied here).

    git clone https://github.com/megvii-research/mdistiller mdistiller                  # a08d46f (DKD)
    git clone https://github.com/hunto/image_classification_sota dist                  # d9662f7, DIST_KD's submodule
    git clone https://github.com/sunshangquan/logit-standardization-KD logit_stand     # f6e5aa5
    git clone https://github.com/dvlab-research/ReviewKD reviewkd                      # cede6ea
    python tests/golden/kd_modern_authors.py mdistiller dist logit_stand reviewkd tests/golden

Files run (and the only patches applied, also recorded in each JSON's ``provenance``):

* DKD: ``mdistiller/distillers/DKD.py`` ``dkd_loss`` -- unpatched.
* DIST: ``lib/models/losses/dist_kd.py`` ``DIST(beta, gamma, tau)`` -- unpatched.
* logit standardization: ``mdistiller/distillers/KD.py`` ``kd_loss(..., logit_stand=True)`` and
  ``mdistiller/distillers/DKD.py`` ``dkd_loss(..., logit_stand=True)`` -- unpatched.
* ReviewKD: ``CIFAR-100/model/reviewkd.py`` ``ReviewKD`` (its ABF fusion modules and their forward pass) and ``hcl``
  -- one device patch: ``self.to('cuda')`` in ``ReviewKD.__init__`` is removed (CPU run).

Inputs are seeded ``torch.randn`` draws rounded to 3 decimals (so the JSON holds them exactly); everything is
computed in float64; gradients are of the returned loss.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
from torch import nn


def commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # an exported tree: the commit is given on the command line instead
        return "unknown"


def package(name: str, path: Path) -> None:
    """A namespace for a folder of the authors' code, so its relative imports work without its ``__init__``."""
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    sys.modules[name] = mod


def load(pkg: str, path: Path, name: str, patch=lambda s: s):
    """Import ``path`` as ``pkg.name`` (optionally patched)."""
    full = f"{pkg}.{name}"
    mod = types.ModuleType(full)
    mod.__file__, mod.__package__ = str(path), pkg
    sys.modules[full] = mod
    exec(compile(patch(path.read_text()), str(path), "exec"), mod.__dict__)
    return mod


def randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale * 1000).round().double() / 1000


def lst(t: torch.Tensor):
    """Nested lists of 13 significant digits (inputs are exact at 3 decimals; outputs are checked to ~1e-10)."""
    return json.loads(json.dumps(t.detach().double().tolist()), parse_float=lambda x: float(f"{float(x):.13g}"))


def logits_case(n, k, seed, scale_s=2.0, scale_t=3.0):
    zs = randn(n, k, seed=seed, scale=scale_s).requires_grad_(True)
    zt = randn(n, k, seed=seed + 1, scale=scale_t)
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 2))
    return zs, zt, y


def dkd_cases(md: Path, ls: Path) -> dict:
    package("md", md / "mdistiller" / "distillers")
    dkd = importlib.import_module("md.DKD")
    package("lsd", ls / "mdistiller" / "distillers")
    dkd_ls = importlib.import_module("lsd.DKD")
    cases = []
    settings = [(4, 5, 1.0, 8.0, 4.0, False), (8, 10, 1.0, 2.0, 4.0, False), (6, 100, 1.0, 0.5, 1.0, False),
                (3, 7, 2.0, 6.0, 2.0, False), (5, 12, 9.0, 72.0, 2.0, True)]
    for i, (n, k, alpha, beta, T, stand) in enumerate(settings):
        zs, zt, y = logits_case(n, k, 100 + 10 * i)
        if stand:
            loss = dkd_ls.dkd_loss(zs, zt, y, alpha, beta, T, True)
        else:
            loss = dkd.dkd_loss(zs, zt, y, alpha, beta, T)
        loss.backward()
        cases.append({"alpha": alpha, "beta": beta, "T": T, "logit_stand": stand, "logits_s": lst(zs),
                      "logits_t": lst(zt), "targets": y.tolist(), "value": float(loss), "grad_s": lst(zs.grad)})
    return {"provenance": {
        "repos": {"megvii-research/mdistiller": commit(md), "sunshangquan/logit-standardization-KD": commit(ls)},
        "run": "mdistiller/distillers/DKD.py dkd_loss(logits_s, logits_t, targets, alpha, beta, T); the "
               "logit_stand case: logit-standardization-KD mdistiller/distillers/DKD.py dkd_loss(..., True)",
        "patches": "none", "dtype": "float64", "script": "tests/golden/kd_modern_authors.py"}, "cases": cases}


def dist_cases(dist: Path) -> dict:
    package("dist", dist / "lib" / "models" / "losses")
    mod = load("dist", dist / "lib" / "models" / "losses" / "dist_kd.py", "dist_kd")
    cases = []
    settings = [(4, 5, 1.0, 1.0, 1.0), (8, 10, 1.0, 1.0, 4.0), (16, 100, 1.0, 1.0, 1.0), (5, 7, 2.0, 0.5, 2.0),
                (2, 3, 1.0, 1.0, 4.0)]
    for i, (n, k, beta, gamma, tau) in enumerate(settings):
        zs, zt, _ = logits_case(n, k, 200 + 10 * i)
        loss = mod.DIST(beta=beta, gamma=gamma, tau=tau)(zs, zt)
        loss.backward()
        cases.append({"beta": beta, "gamma": gamma, "tau": tau, "logits_s": lst(zs), "logits_t": lst(zt),
                      "value": float(loss), "grad_s": lst(zs.grad)})
    return {"provenance": {
        "repos": {"hunto/image_classification_sota": commit(dist)},
        "note": "hunto/DIST_KD links the classification code as the git submodule 'classification' at "
                "hunto/image_classification_sota d9662f7df68fe46b973c4580b7c9b896cedcd301",
        "run": "lib/models/losses/dist_kd.py DIST(beta, gamma, tau)(logits_s, logits_t)",
        "patches": "none", "dtype": "float64", "script": "tests/golden/kd_modern_authors.py"}, "cases": cases}


def logit_stand_cases(ls: Path) -> dict:
    package("lsk", ls / "mdistiller" / "distillers")
    kd = importlib.import_module("lsk.KD")
    cases = []
    for i, (n, k, T) in enumerate([(4, 5, 2.0), (8, 10, 3.0), (16, 100, 2.0), (3, 7, 1.0), (6, 2, 2.0)]):
        zs, zt, _ = logits_case(n, k, 300 + 10 * i)
        loss = kd.kd_loss(zs, zt, T, True)
        loss.backward()
        cases.append({"T": T, "logits_s": lst(zs), "logits_t": lst(zt), "value": float(loss),
                      "grad_s": lst(zs.grad)})
    return {"provenance": {
        "repos": {"sunshangquan/logit-standardization-KD": commit(ls)},
        "run": "mdistiller/distillers/KD.py kd_loss(logits_s, logits_t, T, logit_stand=True) (unweighted: the "
               "KD weight multiplies it outside)",
        "patches": "none", "dtype": "float64", "script": "tests/golden/kd_modern_authors.py"}, "cases": cases}


class _Student(nn.Module):
    """Stands in for the student backbone: returns the given stage features (and a dummy logit), as the authors'
    backbones do with ``is_feat=True``."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, x, is_feat=True):
        return self.feats, torch.zeros(1)


ABF_KEYS = ["conv1.0.weight", "conv1.1.weight", "conv1.1.bias", "conv2.0.weight", "conv2.1.weight", "conv2.1.bias",
            "att_conv.0.weight", "att_conv.0.bias"]


def reviewkd_cases(rk: Path) -> dict:
    package("rk", rk / "CIFAR-100" / "model")
    mod = load("rk", rk / "CIFAR-100" / "model" / "reviewkd.py", "reviewkd",
               lambda s: s.replace("self.to('cuda')", "pass  # patched: CPU run"))
    cases = []
    # (N, student (C, H) per stage, teacher (C, H) per stage); the pooled embedding (C of the last stage, 1x1)
    # is the deepest level of both, as in the authors' code
    settings = [(2, [(4, 8), (6, 4), (8, 2)], [(4, 8), (6, 4), (8, 2)]),
                (3, [(4, 8), (6, 4), (8, 2)], [(3, 16), (5, 8), (7, 4)]),
                (2, [(3, 8), (4, 4), (4, 2), (6, 1)], [(5, 8), (4, 4), (6, 2), (8, 1)])]
    for i, (n, s_st, t_st) in enumerate(settings):
        seed = 400 + 100 * i
        fs = [randn(n, c, h, h, seed=seed + j) for j, (c, h) in enumerate(s_st)]
        fs.append(randn(n, s_st[-1][0], 1, 1, seed=seed + 10))
        ft = [randn(n, c, h, h, seed=seed + 20 + j) for j, (c, h) in enumerate(t_st)]
        ft.append(randn(n, t_st[-1][0], 1, 1, seed=seed + 30))
        for f in fs:
            f.requires_grad_(True)
        in_ch = [c for c, _ in s_st] + [s_st[-1][0]]
        out_ch = [c for c, _ in t_st] + [t_st[-1][0]]
        shapes = [1] + [h for _, h in s_st][::-1]
        out_shapes = [1] + [h for _, h in t_st][::-1]
        model = mod.ReviewKD(_Student(fs), in_ch, out_ch, shapes, out_shapes).double()
        levels = list(model.abfs)[::-1]  # shallow to deep, as in_channels
        params = {}
        with torch.no_grad():
            for lvl, abf in enumerate(levels):
                sd = dict(abf.named_parameters())
                for kk, key in enumerate(ABF_KEYS):
                    if key not in sd:
                        continue
                    p = sd[key]
                    v = randn(*p.shape, seed=seed + 50 + 10 * lvl + kk, scale=0.5)
                    if key.endswith("1.weight") and "conv" in key and p.dim() == 1:
                        v = 1.0 + v.abs().clamp(max=1.0) * 0.5  # BatchNorm weights near 1
                    p.copy_(v)
                    params[f"{lvl}.{key}"] = lst(v)
        model.train()
        results, _ = model(torch.zeros(1))
        loss = mod.hcl(results, ft)
        loss.backward()
        cases.append({
            "student_stages": s_st, "teacher_stages": t_st, "feats_s": [lst(f) for f in fs[:-1]],
            "emb_s": lst(fs[-1].flatten(1)), "feats_t": [lst(f) for f in ft[:-1]], "emb_t": lst(ft[-1].flatten(1)),
            "params": params, "value": float(loss), "results_sum": [float(r.double().sum()) for r in results],
            "grad_feats_s": [lst(f.grad) for f in fs[:-1]], "grad_emb_s": lst(fs[-1].grad.flatten(1)),
            "grad_params": {f"{lvl}.{k}": lst(p.grad) for lvl, abf in enumerate(levels)
                            for k, p in abf.named_parameters() if i == 0}})
    # the hierarchical context loss alone, on maps of several sizes (pyramid levels 4, 2, 1 below the map size)
    hcl_cases = []
    for j, (n, c, h) in enumerate([(2, 3, 8), (3, 2, 4), (2, 4, 2), (2, 5, 1), (1, 2, 6)]):
        a = randn(n, c, h, h, seed=900 + j).requires_grad_(True)
        b = randn(n, c, h, h, seed=950 + j)
        loss = mod.hcl([a], [b])
        loss.backward()
        hcl_cases.append({"fs": lst(a), "ft": lst(b), "value": float(loss), "grad": lst(a.grad)})
    return {"provenance": {
        "repos": {"dvlab-research/ReviewKD": commit(rk)},
        "run": "CIFAR-100/model/reviewkd.py: ReviewKD(student, in_channels, out_channels, shapes, out_shapes) "
               "(its ABF modules, parameters set from 'params', BatchNorm in training mode) on the given student "
               "stage features + pooled embedding (1x1), then hcl(results, teacher stage features + embedding); "
               "hcl alone on single maps",
        "patches": "CIFAR-100/model/reviewkd.py: self.to('cuda') in ReviewKD.__init__ removed (CPU run)",
        "dtype": "float64", "params": "keys '<level>.<ABF parameter>', levels shallow to deep (the authors' "
        "in_channels order; their abfs list is the reverse)", "script": "tests/golden/kd_modern_authors.py"},
        "cases": cases, "hcl_cases": hcl_cases}


def main(md: Path, dist: Path, ls: Path, rk: Path, out: Path) -> None:
    torch.set_num_threads(1)
    for name, data in [("dkd", dkd_cases(md, ls)), ("dist", dist_cases(dist)),
                       ("logit_stand", logit_stand_cases(ls)), ("reviewkd", reviewkd_cases(rk))]:
        data["provenance"]["torch"] = torch.__version__
        (out / f"{name}.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(name, [round(c["value"], 6) for c in data["cases"]])


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:6]))
