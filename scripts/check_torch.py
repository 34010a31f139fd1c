"""scripts/install's checks, run by the interpreter being installed into (standard library only).

    check_torch.py [--quiet]   torch and torchvision import and belong together: one line each; exit 1 naming the
                               problem (a torchvision built for another torch version, or a CPU build beside a CUDA one)
    check_torch.py --probe URL the wheel index URL answers (exit 0) or not (exit 1), within 15 s
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import urllib.request
from pathlib import Path


def say(line: str) -> None:
    if "--quiet" not in sys.argv:
        print(f"scripts/install: {line}", flush=True)


def fail(line: str) -> None:
    print(f"scripts/install: error: {line}", file=sys.stderr, flush=True)
    sys.exit(1)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def probe(url: str) -> int:
    page = url.rstrip("/") + "/torch/"
    if page.startswith("file:"):  # a local index (a folder per project), as pip reads it
        return 0 if Path(urllib.request.url2pathname(page[len("file:"):])).is_dir() else 1
    try:
        urllib.request.urlopen(page, timeout=15).close()
    except Exception:  # unreachable, refused, TLS, 404: pip could not use it either
        return 1
    return 0


def torchvision_pin() -> str | None:
    """The torch version torchvision's metadata requires (``torch==2.11.0``), if it names one."""
    try:
        reqs = md.requires("torchvision") or []
    except md.PackageNotFoundError:
        return None
    for req in reqs:
        m = re.match(r"torch\s*\(?\s*==\s*([0-9][^,;)\s]*)", req)
        if m:
            return m.group(1)
    return None


def check() -> int:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install's OSError/RuntimeError
        fail(f"torch does not import: {first_line(exc)}")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    say(f"torch {torch.__version__}: imports ({build} build)")
    try:
        import torchvision
    except Exception as exc:
        fail(f"torchvision does not import beside torch {torch.__version__} ({build} build): {first_line(exc)}; "
             f"torch and torchvision come from different builds: reinstall both from one index")
    base = torch.__version__.split("+")[0]
    pin = torchvision_pin()
    if pin is not None and pin.split("+")[0] != base:
        fail(f"torchvision {torchvision.__version__} is built for torch {pin}, but torch {torch.__version__} is "
             f"installed: a mismatched pair; reinstall both from one index")
    tv_cuda = bool(getattr(getattr(torchvision, "version", None), "cuda", None))  # its CUDA code (13000), or none
    if tv_cuda != bool(torch.version.cuda):
        fail(f"torchvision {torchvision.__version__} is a {'CUDA' if tv_cuda else 'CPU'} build but torch "
             f"{torch.__version__} a {build} build: a mismatched pair; reinstall both from one index")
    say(f"torchvision {torchvision.__version__}: imports, built for torch {pin or base} ({build} build)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        sys.exit(probe(sys.argv[2]))
    sys.exit(check())
