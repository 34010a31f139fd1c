"""The package's layers only import downwards (DESIGN.md): losses -> features -> methods/models/data -> config ->
engine -> sweep -> report -> cli. Checked on the source with ``ast``: every ``tfdistill`` import, at module level or
inside a function (not in a ``__main__`` entry block), names a module of the same or a lower layer.

And no module imports itself through others: the graph of module imports, counting imports inside functions (a
lazy import closes a circle as surely as one at the top), has no cycle except the ones :data:`ALLOWED_CYCLES`
lists."""

from __future__ import annotations

import ast
from pathlib import Path

import tfdistill

SRC = Path(tfdistill.__file__).resolve().parent  # the checkout's src/tfdistill, or an installed wheel's package

LAYERS = [
    {"errors", "registry", "compiling", "precision", "_version"},     # shared leaves
    {"interrupts"},
    {"losses"},
    {"features", "regularizers", "tasks"},
    {"methods", "models", "data"},
    {"config", "recipes", "rundir", "runs", "fingerprint"},
    {"engine", "evaluate"},
    {"sweep"},
    {"report"},
    {"cli", "cam", "demo", "__main__", "__init__", "configs"},
    {"integrations"},  # on top of everything: thin modules over the public API (issue #28)
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(module: str) -> str:
    """``tfdistill.engine.run`` -> ``engine``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, root: Path = SRC, package: str = "tfdistill", names: bool = False) -> list[tuple[int, str]]:
    """``(line, dotted target)`` of every import of ``package`` in ``path``, relative imports resolved; ``from pkg
    import name`` gives ``pkg`` (``names``: ``pkg.name``, which may be a module or a name in ``pkg``)."""
    pkg = package + "." + ".".join(path.relative_to(root).with_suffix("").parts)
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
            elif node.module and (node.module == package or node.module.startswith(package + ".")):
                target = node.module
            else:
                continue
            if names or not node.module:  # `from pkg import name`: pkg.name may be a module (pkg.name) or not (pkg)
                out += [(node.lineno, target if a.name == "*" else f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names
                    if a.name == package or a.name.startswith(package + ".")]
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


# ------------------------------------------------------------------------------------------------ import cycles
ALLOWED_CYCLES: list[set[str]] = []
"""Known import cycles, each the exact set of modules it joins; any other cycle fails the test."""


def import_graph(root: Path = SRC, package: str = "tfdistill") -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line" of the first such import}, imports inside functions included.

    A module is its dotted name (a package is its ``__init__.py``); ``from pkg import name`` imports the module
    ``pkg.name`` when there is one, else ``pkg``."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join((package,) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    graph: dict[str, dict[str, str]] = {m: {} for m in modules}
    for mod, path in modules.items():
        for line, target in _imports(path, root, package, names=True):
            if target.endswith(".__init__"):
                target = target[: -len(".__init__")]
            while target not in modules and "." in target:  # pkg.name -> pkg when name is not a module
                target = target.rsplit(".", 1)[0]
            if target in modules and target != mod:
                graph[mod].setdefault(target, f"{path.relative_to(root.parent)}:{line}")
    return graph


def find_cycles(graph: dict[str, dict[str, str]]) -> list[set[str]]:
    """The import cycles: each strongly connected set of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    scc.add(m)
                    if m == node:
                        break
                if len(scc) > 1:
                    out.append(scc)
    return out


def describe_cycle(graph: dict[str, dict[str, str]], scc: set[str]) -> str:
    """The shortest closed path through the cycle's first module, each step with the import that makes it:
    ``a -> b (file:line) -> a (file:line)``."""
    start = min(scc)
    came: dict[str, str] = {}
    frontier = [start]
    while start not in came:  # breadth first inside the set; a strongly connected set leads back to start
        nxt = []
        for a in frontier:
            for b in sorted(graph[a]):
                if b in scc and b not in came:
                    came[b] = a  # reached b from a
                    nxt.append(b)
        frontier = nxt
    path = [start]
    while len(path) == 1 or path[-1] != start:
        path.append(came[path[-1]])
    path.reverse()
    return start + "".join(f" -> {b} ({graph[a][b]})" for a, b in zip(path, path[1:]))


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    unexpected = [describe_cycle(graph, c) for c in cycles if c not in ALLOWED_CYCLES]
    assert not unexpected, "import cycle(s), counting imports inside functions:\n" + "\n".join(unexpected)
    stale = [sorted(c) for c in ALLOWED_CYCLES if c not in cycles]
    assert not stale, f"ALLOWED_CYCLES lists cycles that no longer exist (remove them): {stale}"


def test_cycle_finder_counts_imports_inside_functions(tmp_path):
    """A cycle closed only by a function-level (lazy) import is found and named; without it there is none."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    return b.g()\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f  # lazy: closes the circle\n    return f\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b": "pkg/a.py:1"} and graph["pkg.sub.b"] == {"pkg.a": "pkg/sub/b.py:2"}
    assert find_cycles(graph) == [{"pkg.a", "pkg.sub.b"}]
    assert describe_cycle(graph, {"pkg.a", "pkg.sub.b"}) == "pkg.a -> pkg.sub.b (pkg/a.py:1) -> pkg.a (pkg/sub/b.py:2)"
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycles(import_graph(pkg, "pkg")) == []
    # synthetic graphs: a three-module ring beside an acyclic part, and a self-import, which is not a cycle here
    ring = {"x": {"y": "1"}, "y": {"z": "2"}, "z": {"x": "3", "w": "4"}, "w": {}, "v": {"v": "5", "x": "6"}}
    assert find_cycles(ring) == [{"x", "y", "z"}]
    assert describe_cycle(ring, {"x", "y", "z"}) == "x -> y (1) -> z (2) -> x (3)"


def test_engine_and_sweep_files_are_small_and_say_their_job():
    """#22's shape: no file of ``engine/`` or ``sweep/`` over ~400 lines, and each opens with a docstring whose first
    line says its job (what DESIGN.md's file tables repeat)."""
    problems = []
    for path in sorted([*SRC.glob("engine/*.py"), *SRC.glob("sweep/*.py")]):
        text = path.read_text()
        lines = text.count("\n")
        if lines > 410:
            problems.append(f"{path.relative_to(SRC)}: {lines} lines (split it by role)")
        doc = ast.get_docstring(ast.parse(text))
        first = doc.strip().splitlines()[0] if doc else ""
        if len(first.split()) < 4:
            problems.append(f"{path.relative_to(SRC)}: its docstring's first line does not say its job: {first!r}")
    assert not problems, "\n".join(problems)
