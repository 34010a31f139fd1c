"""The run-directory rules live in one module (tfdistill.rundir) that engine, sweep and report share."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tfdistill.rundir as rundir
from tfdistill.rundir import RESUME_FREE_KEYS, RunDir, config_diff, flat_keys, write_text_atomic

SRC = Path(rundir.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Absolute or package-relative module names a source file imports (relative ones resolved against tfdistill)."""
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_flat_keys_and_config_diff_by_hand():
    assert flat_keys({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    a = {"name": "x", "optim": {"lr": 0.1, "momentum": 0.9}, "engine": {"device": "cpu"}}
    b = {"name": "y", "optim": {"lr": 0.2, "momentum": 0.9}, "engine": {"device": "cuda"}, "extra": 1}
    # name and engine.device may differ on resume; lr and a key only one side has may not
    assert config_diff(a, b) == ["extra", "optim.lr"]
    assert config_diff(a, b, ignore=set()) == ["engine.device", "extra", "name", "optim.lr"]
    assert {"name", "out_dir", "engine.device"} <= RESUME_FREE_KEYS
    assert rundir.NON_EXPERIMENT_KEYS == RESUME_FREE_KEYS | {"seed", "seeds"}


def test_finished_means_summary_exists(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    assert not rd.finished() and not rundir.is_finished(rd.path) and not rundir.is_resumable(rd.path)
    (rd.path / "last.pt").write_bytes(b"x")
    assert rundir.is_resumable(rd.path) and not rd.finished()
    (rd.path / "summary.json").write_text("{}")
    assert rd.finished() and rundir.is_finished(rd.path)


def test_write_text_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.json"
    write_text_atomic(p, "old")
    write_text_atomic(p, "new")
    assert p.read_text() == "new" and [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_layers_share_the_one_rundir_module():
    """rundir imports no higher layer; engine, sweep and report import it and no longer define their own copies."""
    mine = _imports(SRC / "rundir.py")
    assert not any(m.startswith(("tfdistill.engine", "tfdistill.sweep", "tfdistill.report", "tfdistill.methods"))
                   for m in mine), mine
    for f in ("engine/run.py", "sweep/runner.py", "sweep/spec.py", "report/collect.py"):
        assert any(m == "tfdistill.rundir" or m.startswith("tfdistill.rundir.") for m in _imports(SRC / f)), f
    for f in SRC.rglob("*.py"):
        if f.name == "rundir.py":
            continue
        tree = ast.parse(f.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name) and isinstance(n.value, (ast.Set, ast.Dict, ast.Call))}
        dup = defined & {"flat_keys", "config_diff", "RESUME_FREE_KEYS", "RunDir", "save_atomic"}
        assert not dup, f"{f.relative_to(SRC)} defines {dup} (belongs in tfdistill/rundir.py)"


def test_the_commit_is_read_once_per_process(monkeypatch):
    """A run's summary names the commit its process started from: later commits to the tree (while a long run
    trains) do not change what git_commit() returns."""
    import subprocess

    from tfdistill import rundir

    rundir.git_commit.cache_clear()
    first = rundir.git_commit()
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError))
    assert rundir.git_commit() == first and calls == []
    rundir.git_commit.cache_clear()
    assert rundir.git_commit() == "unknown" and calls  # read again only after the cache is cleared
    rundir.git_commit.cache_clear()


def test_dirty_means_the_package_source_changed(tmp_path, monkeypatch):
    """'+dirty' names modified tracked files of the package only: a sweep rewriting its tracked sweep.yaml under
    results/ while it trains does not make its runs' code 'dirty'."""
    import shutil
    import subprocess

    from tfdistill import rundir

    repo = tmp_path / "repo"
    pkg = repo / "src" / "tfdistill"
    pkg.mkdir(parents=True)
    (repo / "results").mkdir()
    shutil.copy(rundir.__file__, pkg / "rundir.py")
    (repo / "results" / "sweep.yaml").write_text("a: 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    monkeypatch.setattr(rundir, "__file__", str(pkg / "rundir.py"))
    rundir.git_commit.cache_clear()
    try:
        (repo / "results" / "sweep.yaml").write_text("a: 2\n")
        clean = rundir.git_commit()
        assert len(clean) == 40 and "+dirty" not in clean, clean
        rundir.git_commit.cache_clear()
        (pkg / "rundir.py").write_text((pkg / "rundir.py").read_text() + "\n# changed\n")
        assert rundir.git_commit() == clean + "+dirty"
    finally:
        rundir.git_commit.cache_clear()
