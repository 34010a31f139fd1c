"""MkDocs hooks of the tfdistill site (``mkdocs.yml``: ``hooks:``). Nothing here imports mkdocs: the renderers are
plain functions that ``tests/test_docs.py`` calls too.

* ``<!-- methods: FAMILY -->`` on a line of its own becomes one section per registered method of that family,
  generated from the registry (summary, paper, components, teacher, coupling, defaults, what its tests check it
  against): a method registered with ``register_preset(..., family=..., paper=..., reference=...)`` appears
  without a docs edit.
* ``<!-- integrations -->`` becomes a list of the pages under ``docs/integrations/`` (each page's first heading),
  and those pages are added to the nav under "In other frameworks" when they exist.
* A relative link that leaves ``docs/`` (``../results/demo/``, ``../benchmarks/README.md``) is checked to exist in
  the checkout (a missing target is a warning: ``mkdocs build --strict`` fails) and points at the file in the
  repository (``repo_url``/blob/main/...) when ``repo_url`` is set, else is shown as the path.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.tfdistill_docs")
ROOT = Path(__file__).resolve().parents[2]
METHODS_MARK = re.compile(r"^<!-- methods: ([\w-]+) -->[ \t]*$", re.M)
INTEGRATIONS_MARK = "<!-- integrations -->"
LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
FRAMEWORKS_PAGE = "frameworks.md"


# ------------------------------------------------------------------------------------------------- methods
def _plain(doc: str) -> str:
    """The first paragraph of a docstring, reST roles turned into Markdown code."""
    first = (doc or "").strip().split("\n\n")[0]
    first = re.sub(r":\w+:`~?\.?([^`]+)`", r"`\1`", " ".join(first.split()))
    return first.replace("``", "`")


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if k == "name":
            continue
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, v))
    return out


def method_facts(name: str) -> dict:
    """What the docs say about method ``name``, all of it read from the registry."""
    from tfdistill.methods.registry import (DISTILLERS, method_coupling, method_schema, method_uses, preset_family,
                                            resolve_preset)

    preset = resolve_preset(name)
    return {
        "name": name,
        "family": preset_family(name),
        "summary": preset.summary,
        "paper": preset.paper or "not given",
        "reference": preset.reference or "not given",
        "components": [(c, _plain(DISTILLERS.get(c).__doc__ or "")) for c in preset.components],
        "teacher": bool(method_uses(name).teacher),
        "coupling": method_coupling(name),
        "defaults": _flat(dataclasses.asdict(method_schema(name)())),
    }


def methods_markdown(family: str) -> str:
    """One section per registered method of ``family``."""
    from tfdistill.methods.registry import FAMILIES, list_methods, preset_family

    if family not in FAMILIES:
        raise ValueError(f"<!-- methods: {family} -->: unknown family; valid: {', '.join(FAMILIES)}")
    names = [m for m in list_methods() if preset_family(m) == family]
    out = [f"{len(names)} method(s) in this family (generated from the registry when the site is built; "
           "`tfdistill methods` lists them too).", ""]
    for name in names:
        f = method_facts(name)
        comps = "; ".join(f"`{c}`: {doc}" for c, doc in f["components"]) or "none (cross-entropy only)"
        coupling = ("per-sample: every term is a mean of per-sample terms, so gradient accumulation gives the full "
                    "batch's update (BatchNorm aside)" if f["coupling"] == "per-sample" else
                    "batch-coupled: a term ranks, normalises or relates samples across the batch, so it depends on "
                    "how a batch is split (gradient accumulation is not exact)")
        ref = re.sub(r"^([\w.-]+/[\w.-]+)", r"[\1](https://github.com/\1)", f["reference"])
        defaults = ", ".join(f"`{k}={v!r}`" for k, v in f["defaults"])
        out += [f"### `{name}`", "", (f["summary"][:1].upper() + f["summary"][1:]) if f["summary"] else "", "",
                "| | |", "|---|---|",
                f"| paper | {f['paper']} |",
                f"| components | {comps} |",
                f"| needs a teacher | {'yes' if f['teacher'] else 'no'} |",
                f"| terms | {coupling} |",
                f"| defaults | {defaults} |",
                f"| checked against | {ref} |",
                "", f"`tfdistill train RECIPE method.name={name}`", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- integrations
def integration_pages(docs_dir: Path) -> list[tuple[str, str]]:
    """(title, path relative to docs/) of each page under docs/integrations/, by file name."""
    pages = []
    for p in sorted((Path(docs_dir) / "integrations").glob("*.md")):
        m = re.search(r"^#\s+(.+)$", p.read_text(), re.M)
        pages.append((m.group(1).strip() if m else p.stem, p.relative_to(docs_dir).as_posix()))
    return pages


def integrations_markdown(docs_dir: Path, here: str = FRAMEWORKS_PAGE) -> str:
    pages = integration_pages(docs_dir)
    if not pages:
        return "*No integration page yet.*"
    base = Path(here).parent
    return "\n".join(f"- [{title}]({Path(path).relative_to(base).as_posix() if base != Path('.') else path})"
                     for title, path in pages)


# ------------------------------------------------------------------------------------------------- links
def outside_link(target: str, page_src: str, docs_dir: Path, repo_url: str | None) -> str | None:
    """The replacement of a relative link leaving docs/ (None: not such a link). Raises FileNotFoundError."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^/|^#", target):
        return None
    path, _, anchor = target.partition("#")
    resolved = (Path(docs_dir) / Path(page_src).parent / path).resolve()
    try:
        resolved.relative_to(Path(docs_dir).resolve())
        return None
    except ValueError:
        pass
    rel = resolved.relative_to(ROOT).as_posix() + ("/" if path.endswith("/") else "")
    if not resolved.exists():
        raise FileNotFoundError(rel)
    if not repo_url:
        return ""
    kind = "tree" if resolved.is_dir() else "blob"
    return f"{repo_url.rstrip('/')}/{kind}/main/{rel}" + (f"#{anchor}" if anchor else "")


def rewrite_links(markdown: str, page_src: str, docs_dir: Path, repo_url: str | None) -> str:
    def sub(m: re.Match) -> str:
        text, target = m.groups()
        try:
            new = outside_link(target, page_src, docs_dir, repo_url)
        except FileNotFoundError as e:
            log.warning(f"{page_src}: link to {e} (outside docs/), which does not exist in the checkout")
            return m.group(0)
        if new is None:
            return m.group(0)
        rel = (Path(docs_dir) / Path(page_src).parent / target.partition("#")[0]).resolve().relative_to(ROOT)
        return f"[{text}]({new})" if new else (text if text.strip("`") == rel.as_posix().rstrip("/")
                                              or text.startswith("`") else f"{text} (`{rel.as_posix()}`)")

    # fenced code is left alone
    parts = re.split(r"(^(?:```|~~~)[^\n]*\n.*?^(?:```|~~~)[ \t]*$)", markdown, flags=re.M | re.S)
    return "".join(p if i % 2 else LINK.sub(sub, p) for i, p in enumerate(parts))


# ------------------------------------------------------------------------------------------------- mkdocs events
def on_config(config, **kwargs):
    pages = integration_pages(Path(config["docs_dir"]))
    nav = config.get("nav") or []
    for entry in nav:
        if isinstance(entry, dict) and "In other frameworks" in entry:
            value = entry["In other frameworks"]
            items = value if isinstance(value, list) else [{"Overview": value}]
            entry["In other frameworks"] = items + [{title: path} for title, path in pages]
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    docs_dir = Path(config["docs_dir"])

    def methods(m: re.Match) -> str:
        try:
            return methods_markdown(m.group(1))
        except ValueError as e:
            log.warning(f"{page.file.src_uri}: {e}")
            return m.group(0)

    markdown = METHODS_MARK.sub(methods, markdown)
    if INTEGRATIONS_MARK in markdown:
        markdown = markdown.replace(INTEGRATIONS_MARK, integrations_markdown(docs_dir, page.file.src_uri))
    return rewrite_links(markdown, page.file.src_uri, docs_dir, config.get("repo_url"))
