"""The docs example runner: every example in README.md and docs/**/*.md runs, or says why it cannot.

The convention (also in docs/development.md, "The docs"):

* A fenced ```python block is executed. The python blocks of one page run in order, in one namespace, in a fresh
  working folder where ``configs/``, ``results/`` and ``benchmarks/`` of the checkout are visible.
* In a fenced ```bash block, every line that starts with ``tfdistill `` is run (``tfdistill.cli.main`` in the
  test's process -- the CLI's parsing, errors and exit codes without a torch import per line --, the same working
  folder, exit code 0 expected), with the flag that keeps it tiny added when it is missing
  (:data:`TINY_FLAGS`: ``train`` -> ``--print-config``, ``sweep`` -> ``--dry-run``, ``demo`` -> ``--epochs 1``,
  ``results`` -> ``--check``); other lines (``pip ...``, ``OMP_NUM_THREADS=2 tfdistill ...``) are shown, not run.
* The line ``<!-- docs-test: skip "reason" -->`` right before a fence skips that block; the reason is required and
  is reported as the skip reason of its own test item (``-ra`` lists them). ``<!-- docs-test: as-is -->`` runs a
  bash block's lines exactly as written (the author vouches that they are tiny, e.g. ``tfdistill train demo
  epochs=1`` to make a run that the next lines evaluate).
* ``<!-- docs-test: requires lightning, transformers -->`` before a block: where one of these modules cannot be
  imported (an optional extra not installed, e.g. on an older torch leg of CI), the whole page is skipped with that
  reason; where they are installed it runs.
* A line with a placeholder (``runs/<run>``) cannot run: the block must be skipped with a reason.

A command repeated on one page (a generated results block names `tfdistill results` once per result) runs once.
Each page with runnable blocks is one test; each skipped block is one skipped test; ``test_docs_summary`` prints
how many blocks were run and skipped, with the reasons. README's old sections are checked to live on in docs/
(:data:`MOVED`), and README's size stays that of a landing page.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINKED = ("configs", "results", "benchmarks", "docs", "README.md")
"""What the working folder of a page shows of the checkout (as symlinks): relative paths in examples resolve."""

TINY_FLAGS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "train": (("--print-config", "--dry-run"), ["--print-config"]),
    "sweep": (("--dry-run", "--status"), ["--dry-run"]),
    "demo": (("--epochs",), ["--epochs", "1"]),
    "results": (("--check",), ["--check"]),
}
"""subcommand -> (flags that already keep it tiny, the flags added when none of them is given)."""

DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>]*>")
SHELL_SYNTAX = re.compile(r"[|<>`$]|(?<!&)&(?!&)")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None = None
    as_is: bool = False
    requires: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def parse(page: Path) -> list[Block]:
    """The fenced code blocks of ``page`` with their directives. A malformed directive raises ValueError."""
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    pending: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        d = DIRECTIVE.match(line)
        if d:
            pending = (i + 1, d.group(1))
            i += 1
            continue
        f = FENCE.match(line)
        if f:
            indent, fence, lang = f.groups()
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            block = Block(page, i - len(body), lang.lower(), "\n".join(body) + "\n")
            if pending is not None:
                block.skip, block.as_is, block.requires = _directive(page, *pending)
                pending = None
            blocks.append(block)
        elif line.strip() and pending is not None:
            raise ValueError(f"{page.relative_to(REPO)}:{pending[0]}: a docs-test directive must come right "
                             "before a fenced code block")
        i += 1
    if pending is not None:
        raise ValueError(f"{page.relative_to(REPO)}:{pending[0]}: a docs-test directive with no code block after it")
    return blocks


def _directive(page: Path, line: int, text: str) -> tuple[str | None, bool, tuple[str, ...]]:
    m = re.fullmatch(r'skip\s+"([^"]*)"', text)
    if m:
        if not m.group(1).strip():
            raise ValueError(f"{page.relative_to(REPO)}:{line}: docs-test: skip needs a reason: skip \"why\"")
        return m.group(1).strip(), False, ()
    if text == "as-is":
        return None, True, ()
    m = re.fullmatch(r"requires\s+([\w.]+(?:\s*,\s*[\w.]+)*)", text)
    if m:
        return None, False, tuple(x.strip() for x in m.group(1).split(","))
    raise ValueError(f"{page.relative_to(REPO)}:{line}: unknown docs-test directive {text!r}; valid: "
                     "skip \"reason\", as-is, requires MODULE[, MODULE]")


def runnable(block: Block) -> bool:
    """Whether the block has something to run (python code, or bash lines that start with ``tfdistill``)."""
    if block.lang == "python":
        return bool(block.code.strip())
    return block.lang in ("bash", "sh", "shell", "console") and bool(cli_lines(block))


def cli_lines(block: Block) -> list[str]:
    """The block's ``tfdistill`` command lines, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block.code)
    return [ln.strip() for ln in joined.splitlines() if ln.strip().startswith("tfdistill ")]


def commands(line: str, as_is: bool, where: str) -> list[list[str]]:
    """The argument lists to run for one bash line: split at ``;`` and ``&&``, comments dropped, tiny flags added."""
    if PLACEHOLDER.search(line.split(" #")[0]):
        raise AssertionError(f"{where}: `{line}` has a placeholder: skip the block with "
                             "<!-- docs-test: skip \"reason\" -->")
    code = line.split(" #", 1)[0]
    if SHELL_SYNTAX.search(code):
        raise AssertionError(f"{where}: `{line}` uses pipes, redirections or substitutions, which the docs runner "
                             "does not run: split it, or skip the block with a reason")
    out = []
    for part in re.split(r"\s*(?:;|&&)\s*", code):
        args = shlex.split(part)
        if not args:
            continue
        if args[0] != "tfdistill":
            raise AssertionError(f"{where}: `{part}` does not start with tfdistill (only tfdistill commands run)")
        args = args[1:]
        sub = next((a for a in args if not a.startswith("-")), "")
        if not as_is and sub in TINY_FLAGS:
            present, added = TINY_FLAGS[sub]
            if not any(a == p or a.startswith(p + "=") for a in args for p in present):
                args = [*args, *added]
        out.append(args)
    return out


def _collect() -> tuple[dict[Path, list[Block]], list[Block], list[str]]:
    per_page: dict[Path, list[Block]] = {}
    skipped: list[Block] = []
    errors: list[str] = []
    for page in PAGES:
        try:
            blocks = parse(page)
        except ValueError as e:
            errors.append(str(e))
            continue
        run = [b for b in blocks if b.skip is None and runnable(b)]
        if run:
            per_page[page] = run
        skipped += [b for b in blocks if b.skip is not None]
    return per_page, skipped, errors


RUN, SKIPPED, ERRORS = _collect()


def _workdir(tmp_path: Path) -> Path:
    for name in LINKED:
        if (REPO / name).exists():
            (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def _run_cli(args: list[str]) -> tuple[int, str]:
    """``tfdistill ARGS`` in this process (the CLI's own ``main``: its parsing, error handling and exit codes; no
    torch import per line), in the current folder; returns the exit code and what it printed."""
    import contextlib
    import io

    from tfdistill.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
    return int(code or 0), buf.getvalue()


def test_docs_directives_are_well_formed():
    """Every docs-test directive is known, has a reason when it skips, and stands right before a code block."""
    assert not ERRORS, "\n".join(ERRORS)


@pytest.mark.slow  # trains two 1-epoch demos and a run, builds timm models, rebuilds the results: > 30 s in all
@pytest.mark.parametrize("page", list(RUN), ids=lambda p: str(p.relative_to(REPO)))
def test_docs_page_examples_run(page: Path, tmp_path: Path, monkeypatch, capsys):
    """The page's python blocks in order in one namespace, and its tfdistill lines with tiny flags, all succeed."""
    import importlib.util

    missing = sorted({m for b in RUN[page] for m in b.requires if importlib.util.find_spec(m) is None})
    if missing:  # an optional extra that this environment lacks: the page is skipped whole (its blocks share names)
        pytest.skip(f"{page.relative_to(REPO)} needs {', '.join(missing)}, not installed here")
    work = _workdir(tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    namespace: dict = {"__name__": "__docs__"}
    n_py = n_cli = 0
    done: set[tuple[str, ...]] = set()
    for block in RUN[page]:
        if block.lang == "python":
            try:
                exec(compile(block.code, f"{block.where} (python block)", "exec"), namespace)
            except Exception as e:  # noqa: BLE001 -- name the block, keep the traceback
                raise AssertionError(f"{block.where}: the python block failed: {type(e).__name__}: {e}") from e
            n_py += 1
            continue
        for line in cli_lines(block):
            for args in commands(line, block.as_is, block.where):
                if tuple(args) in done:
                    continue
                done.add(tuple(args))
                code, out = _run_cli(args)
                assert code == 0, f"{block.where}: `tfdistill {shlex.join(args)}` exited {code}:\n{out[-4000:]}"
                n_cli += 1
    with capsys.disabled():
        print(f"\n[docs] {page.relative_to(REPO)}: {n_py} python block(s) and {n_cli} tfdistill command(s) ran")


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: b.where)
def test_docs_block_skipped(block: Block):
    """A block that cannot run here: skipped with its stated reason (listed by -ra)."""
    pytest.skip(f"{block.where}: {block.skip}")


def test_docs_summary(capsys):
    """How many example blocks run and how many are skipped, with the reasons (printed; -s or -rA shows it)."""
    n_run = sum(len(v) for v in RUN.values())
    lines = [f"[docs] {n_run} example block(s) on {len(RUN)} page(s) run; {len(SKIPPED)} skipped:"]
    lines += [f"[docs]   {b.where}: {b.skip}" for b in SKIPPED]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert n_run > 0


# ------------------------------------------------------------------------------------------ the runner itself
def test_runner_adds_the_tiny_flags_and_refuses_what_it_cannot_run(tmp_path):
    assert commands("tfdistill train cifar100/paper seed=1   # comment", False, "x") == \
        [["train", "cifar100/paper", "seed=1", "--print-config"]]
    assert commands("tfdistill train demo --dry-run", False, "x") == [["train", "demo", "--dry-run"]]
    assert commands("tfdistill sweep reproduce/table1 --jobs 2", False, "x") == \
        [["sweep", "reproduce/table1", "--jobs", "2", "--dry-run"]]
    assert commands("tfdistill demo", False, "x") == [["demo", "--epochs", "1"]]
    assert commands("tfdistill models; tfdistill methods && tfdistill recipes", False, "x") == \
        [["models"], ["methods"], ["recipes"]]
    assert commands("tfdistill train demo epochs=1", True, "x") == [["train", "demo", "epochs=1"]]
    with pytest.raises(AssertionError, match="placeholder"):
        commands("tfdistill train --resume runs/<run>", False, "x")
    with pytest.raises(AssertionError, match="pipes"):
        commands("tfdistill methods | head", False, "x")

    page = tmp_path / "p.md"
    page.write_text('text\n\n<!-- docs-test: skip "needs CIFAR-100" -->\n```bash\ntfdistill train x\n```\n\n'
                    "```python\nx = 1\n```\n\n```bash\npip install foo\n```\n")
    global REPO
    old, REPO = REPO, tmp_path
    try:
        blocks = parse(page)
        assert [(b.lang, b.skip, runnable(b)) for b in blocks] == \
            [("bash", "needs CIFAR-100", True), ("python", None, True), ("bash", None, False)]
        page.write_text("<!-- docs-test: requires torch, no_such_module_x -->\n```python\nimport torch\n```\n")
        assert parse(page)[0].requires == ("torch", "no_such_module_x")
        for bad, msg in [('<!-- docs-test: skip "" -->\n```bash\nx\n```\n', "needs a reason"),
                         ("<!-- docs-test: skipp -->\n```bash\nx\n```\n", "unknown docs-test directive"),
                         ('<!-- docs-test: skip "r" -->\ntext\n```bash\nx\n```\n', "right before"),
                         ('<!-- docs-test: skip "r" -->\n', "no code block")]:
            page.write_text(bad)
            with pytest.raises(ValueError, match=msg):
                parse(page)
    finally:
        REPO = old


# ------------------------------------------------------------------------------------------ README -> docs
MOVED: dict[str, tuple[str, str, str]] = {
    # a section of the README up to f5677f2 -> (the page that holds it now, a heading there, a phrase of it)
    "Install notes": ("docs/get-started.md", "## Install notes", "`TFDISTILL_INSTALL_DRY_RUN=1` prints the commands"),
    "(TFD in brief)": ("docs/index.md", "# tfdistill", "averaged over the pairs, weight α = 0.005"),
    "Use it in your own training loop": ("docs/own-loop.md", "# TFD in your own loop",
                                         "A module that runs twice in one forward gives its last output"),
    "Where the paper, its README snippet and the released script differ": (
        "docs/own-loop.md", "## Where the paper, its README snippet and the released script differ",
        "| width-wise target | frozen top half (intent) | not detached |"),
    "Use it as a harness": ("docs/harness.md", "## Train", "the released script's recipe"),
    "Resume and extend": ("docs/harness.md", "## Resume and extend", "kept as `summary.e<old>.json`"),
    "Seeds, sweeps, reports": ("docs/sweeps.md", "## Seeds and packed groups", "Welch 95 %"),
    "Scale out, look inside": ("docs/harness.md", "## Scale out, look inside", "CRD's memory bank stays identical"),
    "On a Slurm cluster": ("docs/sweeps.md", "## On a Slurm cluster", "submitit requeues it (up to 50 times)"),
    "Speed (engine)": ("docs/harness.md", "## Speed", "`engine.compile=true` compiles the step as well"),
    "The run directory": ("docs/harness.md", "## The run directory", "it exists exactly when the run finished"),
    "Configs": ("docs/harness.md", "## Configs", "so a typo is an error, never silently ignored"),
    "Methods": ("docs/methods/index.md", "# Methods", "`method.label_smoothing=0.1` works with any method"),
    "Self-distillation with auxiliary modules": ("docs/methods/self-distillation.md", "## Auxiliary modules",
                                                 "720,433 / 3,440,273"),
    "Teacher-free and self-distillation family": ("docs/methods/self-distillation.md",
                                                  "## Without auxiliary modules", "*paired batches*"),
    "TFD's mimicking loss": ("docs/methods/teacher-free.md", "## TFD's options",
                             "`method.tfd.distance=l2|sp|at|nst|ab`"),
    "Model zoo": ("docs/models.md", "## Model zoo", "identical parameter counts"),
    "Any model: three sources, declared taps": ("docs/models.md", "## Any model: three sources, declared taps",
                                                "3-D tensors never read as maps"),
    "Data": ("docs/harness.md", "## Data", "read from the headers of"),
    "Results": ("docs/results.md", "# Results", "Earlier and shorter"),
    "Demo": ("docs/results.md", "## The demo", "1 min 43 s"),
    "Speed (results)": ("docs/results.md", "## Speed", "0.99–1.04×"),
    "Dependencies and why": ("docs/get-started.md", "## Dependencies and why", "Student's t quantiles"),
    "Layout": ("docs/design.md", "## Layout", "the run-directory contract"),
    "Tests": ("docs/development.md", "## Tests", "hides the GPU from them"),
    "The image cache": ("docs/get-started.md", "## Install notes", "`rm -r ~/.cache/tfdistill` is safe"),
}


@pytest.mark.parametrize("section", list(MOVED))
def test_every_old_readme_section_lives_on_in_the_docs(section):
    page, heading, phrase = MOVED[section]
    text = (REPO / page).read_text()
    assert heading in text.splitlines(), f"{page} lost its heading {heading!r} (README's {section!r} moved there)"
    assert phrase in " ".join(text.split()), f"{page} lost {phrase!r} (README's {section!r})"


def test_readme_is_a_landing_page():
    from tfdistill.report.results import BEGIN, END

    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# tfdistill" and lines[2].startswith("tfdistill is "), "the first line says what it is"
    intro = lines[2:lines.index("", 2)]
    assert len(intro) <= 5, "what tfdistill is: at most five lines"
    assert len(text.encode()) <= 12 * 1024, f"README is {len(text.encode())} bytes: a landing page stays <= 12 KB"
    for must in ("scripts/install && tfdistill demo", "scripts/install test && python -m pytest -q -n 2",
                 "mkdocs serve", BEGIN, END, "best of 3 runs", "copied from CRD", "0.0005", "segmentation",
                 "FeatureTap", "TFDLoss"):
        assert must in text, must
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / target).is_file(), f"README links to {target}, which does not exist"


def test_results_page_holds_the_generated_block():
    from tfdistill.report.results import BEGIN, END

    text = (REPO / "docs" / "results.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and text.index(BEGIN) < text.index(END)


# ------------------------------------------------------------------------------------------ the site's hooks
def _hooks():
    import importlib.util

    path = REPO / "docs" / "_hooks" / "tfdistill_docs.py"
    spec = importlib.util.spec_from_file_location("tfdistill_docs_hooks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_registered_method_is_on_its_family_page():
    """The family pages are generated from the registry: every method appears once, with its paper, coupling and
    what it is checked against; a new method needs no docs edit."""
    from tfdistill.methods.registry import FAMILIES, list_methods, method_coupling, resolve_preset

    hooks = _hooks()
    seen: list[str] = []
    for family in FAMILIES:
        page = REPO / "docs" / "methods" / f"{family}.md"
        assert f"<!-- methods: {family} -->" in page.read_text(), f"{page.name} lacks its generated section"
        md = hooks.methods_markdown(family)
        seen += re.findall(r"^### `([^`]+)`$", md, re.M)
    assert sorted(seen) == sorted(list_methods())
    md = hooks.methods_markdown("teacher-free")
    tfd = md[md.index("### `tfd`"):]
    assert resolve_preset("tfd").paper in tfd and "batch-coupled" in tfd and "`tfd.alpha=0.005`" in tfd
    assert method_coupling("tfd") == "batch-coupled"
    assert resolve_preset("one").reference.split()[0] in hooks.methods_markdown("self-distillation")
    with pytest.raises(ValueError, match="unknown family"):
        hooks.methods_markdown("nonsense")


def test_every_preset_names_its_paper_and_reference():
    from tfdistill.methods.registry import list_methods, resolve_preset

    missing = [m for m in list_methods() if not resolve_preset(m).paper or not resolve_preset(m).reference]
    assert not missing, f"presets without paper= or reference= (say 'none' where there is none): {missing}"


def test_integration_pages_join_the_nav_only_when_they_exist(tmp_path):
    hooks = _hooks()
    nav = [{"Home": "index.md"}, {"In other frameworks": "frameworks.md"}]
    cfg = {"docs_dir": str(tmp_path), "nav": [dict(e) for e in nav]}
    assert hooks.on_config(cfg)["nav"][1] == {"In other frameworks": [{"Overview": "frameworks.md"}]}
    assert hooks.integrations_markdown(tmp_path) == "*No integration page yet.*"
    (tmp_path / "integrations").mkdir()
    (tmp_path / "integrations" / "timm.md").write_text("# TFD with timm\n")
    cfg = {"docs_dir": str(tmp_path), "nav": [dict(e) for e in nav]}
    assert hooks.on_config(cfg)["nav"][1] == {"In other frameworks": [{"Overview": "frameworks.md"},
                                                                       {"TFD with timm": "integrations/timm.md"}]}
    assert hooks.integrations_markdown(tmp_path) == "- [TFD with timm](integrations/timm.md)"


def test_links_out_of_docs_are_checked_and_pointed_at_the_repository():
    hooks = _hooks()
    docs = REPO / "docs"
    md = "[`results/demo/`](../results/demo/) and [x](../benchmarks/README.md#gpu) and [y](faults.md)"
    assert hooks.rewrite_links(md, "get-started.md", docs, "https://example.org/r") == (
        "[`results/demo/`](https://example.org/r/tree/main/results/demo/) and "
        "[x](https://example.org/r/blob/main/benchmarks/README.md#gpu) and [y](faults.md)")
    assert hooks.rewrite_links(md, "get-started.md", docs, None) == \
        "`results/demo/` and x (`benchmarks/README.md`) and [y](faults.md)"
    with pytest.raises(FileNotFoundError):
        hooks.outside_link("../no/such/file.md", "index.md", docs, None)
