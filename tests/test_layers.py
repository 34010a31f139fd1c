"""The package's layers only import downwards (DESIGN.md): losses -> features -> methods/models/data -> config ->
engine -> sweep -> report -> cli. Checked on the source with ``ast``: every ``tfdistill`` import, at module level or
inside a function (not in a ``__main__`` entry block), names a module of the same or a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tfdistill"

LAYERS = [
    {"errors", "registry", "compiling"},     # shared leaves
    {"interrupts"},
    {"losses"},
    {"features", "regularizers"},
    {"methods", "models", "data"},
    {"config", "recipes", "rundir"},
    {"engine", "evaluate"},
    {"sweep"},
    {"report"},
    {"cli", "cam", "demo", "__main__", "__init__", "configs"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(module: str) -> str:
    """``tfdistill.engine.loop`` -> ``engine``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    pkg = "tfdistill." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.name == "__init__.py":
        pkg = pkg.rsplit(".", 1)[0] + ".__init__"
    tree = ast.parse(path.read_text())
    # a module's `if __name__ == "__main__":` block is a program's entry point, not part of its layer
    entry = {id(n) for top in tree.body if isinstance(top, ast.If) and "__main__" in ast.unparse(top.test)
             for n in ast.walk(top)}
    out = []
    for node in ast.walk(tree):
        if id(node) in entry:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: -node.level]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif node.module and node.module.startswith("tfdistill"):
                names = [node.module]
            else:
                continue
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("tfdistill")]
    return out


def test_every_module_belongs_to_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert tops - {"__pycache__"} <= set(LEVEL), tops - set(LEVEL)


def test_layers_only_import_downwards():
    bad = []
    for path in SRC.rglob("*.py"):
        own = _top("tfdistill." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        for line, target in _imports(path):
            other = _top(target)
            if other in LEVEL and LEVEL[other] > LEVEL[own]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {target} ({other})")
    assert not bad, "\n".join(bad)
