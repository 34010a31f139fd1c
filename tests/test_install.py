"""scripts/install picks the torch wheels for the machine: CPU wheels without an NVIDIA GPU, the default (CUDA) wheels
with one. Checked with its dry run and a stand-in nvidia-smi, so the result never depends on the host."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "install"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _run(tmp_path: Path, smi: str | None, **env) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi is not None:  # a stand-in nvidia-smi: its output (and exit status) as given
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"  # no other nvidia-smi
    e = {"PATH": path, "HOME": str(tmp_path), "TFDISTILL_INSTALL_DRY_RUN": "1", "PYTHON": "python3", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=e, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("smi", [None, "echo 'NVIDIA-SMI has failed because it could not communicate with the "
                                       "NVIDIA driver' >&2; exit 9", "exit 0"], ids=["no-smi", "no-driver", "no-gpu"])
def test_a_machine_without_an_nvidia_gpu_gets_the_cpu_wheels(tmp_path, smi):
    res = _run(tmp_path, smi)
    assert res.returncode == 0, res.stderr
    assert "torch wheels: cpu" in res.stdout and CPU_INDEX in res.stdout
    assert f"pip install -e {REPO}" in res.stdout


def test_a_machine_with_an_nvidia_gpu_gets_the_default_wheels(tmp_path):
    res = _run(tmp_path, "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'")
    assert res.returncode == 0, res.stderr
    assert "torch wheels: cuda" in res.stdout and "--index-url" not in res.stdout
    assert "pip install torch torchvision" in res.stdout


def test_the_choice_can_be_forced_and_extras_passed(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "test"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TFDISTILL_INSTALL_DRY_RUN": "1", "TFDISTILL_TORCH": "cuda"})
    assert "torch wheels: cuda (TFDISTILL_TORCH=cuda)" in res.stdout and f"-e {REPO}[test]" in res.stdout
    bad = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TFDISTILL_INSTALL_DRY_RUN": "1", "TFDISTILL_TORCH": "rocm"})
    assert bad.returncode == 2 and bad.stderr.strip() == "scripts/install: error: TFDISTILL_TORCH=rocm; valid: cpu, cuda"


# ------------------------------------------------------------------ a real (non-dry) run with stand-ins
# A stand-in `python` whose `-m pip` records its arguments and "installs" small stand-in torch / torchvision /
# tfdistill modules into a folder; every other call runs the real interpreter on that folder alone (-S: the host's
# own torch is invisible), so scripts/check_torch.py checks exactly what the stand-in pip installed.
STUB_PIP = r'''
import os, sys
from pathlib import Path
site, args = Path(os.environ["STUB_SITE"]), sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write("pip " + " ".join(args) + "\n")
index = args[args.index("--index-url") + 1] if "--index-url" in args else None
if index is not None and not index.startswith("file:"):
    sys.exit("stand-in pip: index " + index + " unreachable")
if "-e" in args:
    (site / "tfdistill").mkdir(parents=True, exist_ok=True)
    (site / "tfdistill" / "__init__.py").write_text("__version__ = '0.1.0'\n")
elif "torch" in args:
    cuda = index is None  # the default index: the CUDA build
    tv_for = os.environ.get("STUB_TV_FOR", "2.11.0")
    broken = os.environ.get("STUB_TV_BROKEN")
    _write_torch(site, cuda, tv_for, broken)
'''

def _write_torch(site, cuda, tv_for="2.11.0", broken=None):
    """Stand-in torch 2.11.0 + torchvision 0.26.0 (CPU, or ``cuda``: CUDA 12.8 builds) whose metadata pins
    ``torch==tv_for``; ``broken``: torchvision fails to import as a CUDA build does beside a CPU torch."""
    site = Path(site)
    tag = "cu128" if cuda else "cpu"
    (site / "torch").mkdir(parents=True, exist_ok=True)
    (site / "torch" / "__init__.py").write_text(
        f"__version__ = '2.11.0+{tag}'\nclass version:\n    cuda = {'12.8' if cuda else None!r}\n")
    (site / "torchvision").mkdir(exist_ok=True)
    body = f"__version__ = '0.26.0+{tag}'\nfrom . import version\n"
    if broken:
        body = "raise RuntimeError('operator torchvision::nms does not exist')\n"
    (site / "torchvision" / "__init__.py").write_text(body)
    (site / "torchvision" / "version.py").write_text("cuda = 12080\n" if cuda else "")
    meta = site / "torchvision-0.26.0.dist-info"
    meta.mkdir(exist_ok=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchvision\nVersion: 0.26.0\n"
                                   f"Requires-Dist: torch=={tv_for}\n")


def _stand_ins(tmp_path: Path) -> dict:
    bin_dir, site = tmp_path / "bin", tmp_path / "site"
    bin_dir.mkdir(exist_ok=True)
    site.mkdir(exist_ok=True)
    (tmp_path / "pip.py").write_text("from pathlib import Path\n" + inspect.getsource(_write_torch) + STUB_PIP)
    py = bin_dir / "python"
    py.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then shift 2; '
                  f'exec {sys.executable} -S {tmp_path / "pip.py"} "$@"; fi\n'
                  f'PYTHONPATH="{site}" exec {sys.executable} -S "$@"\n')
    py.chmod(0o755)
    index = tmp_path / "index" / "torch"
    index.mkdir(parents=True, exist_ok=True)
    (index / "index.html").write_text("<a href='torch-2.11.0+cpu-cp311-none-linux_x86_64.whl'>torch</a>\n")
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(py), "TFDISTILL_TORCH": "cpu",
            "STUB_SITE": str(site), "STUB_LOG": str(tmp_path / "pip.log"),
            "TFDISTILL_CPU_INDEX": (tmp_path / "index").as_uri()}


def _install(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    e = {**_stand_ins(tmp_path), **env}
    res = subprocess.run(["bash", str(SCRIPT)], env=e, capture_output=True, text=True, timeout=120)
    log = tmp_path / "pip.log"
    return res, log.read_text().splitlines() if log.exists() else []


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cpu_index_is_used_and_what_it_installed_is_checked(tmp_path):
    res, pip = _install(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert pip == [f"pip install torch torchvision --index-url {(tmp_path / 'index').as_uri()}",
                   f"pip install -e {REPO}"]
    lines = res.stdout.splitlines()
    assert "scripts/install: torch 2.11.0+cpu: imports (CPU build)" in lines
    assert "scripts/install: torchvision 0.26.0+cpu: imports, built for torch 2.11.0 (CPU build)" in lines
    assert lines[-1] == "scripts/install: done: tfdistill 0.1.0" and "notice" not in res.stdout


def test_an_unreachable_cpu_index_falls_back_to_the_default_wheels_with_one_notice_then_verifies(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    res, pip = _install(tmp_path, TFDISTILL_CPU_INDEX=url)
    assert res.returncode == 0, res.stdout + res.stderr
    notices = [ln for ln in res.stdout.splitlines() if "notice" in ln]
    assert notices == [f"scripts/install: notice: the CPU wheel index {url} cannot be reached: installing the "
                       f"default wheels instead, which bring the CUDA libraries (~5-6 GB)"]
    assert pip == ["pip install torch torchvision", f"pip install -e {REPO}"]  # no retries against the dead index
    assert "scripts/install: torch 2.11.0+cu128: imports (CUDA 12.8 build)" in res.stdout
    assert "scripts/install: torchvision 0.26.0+cu128: imports, built for torch 2.11.0 (CUDA 12.8 build)" in res.stdout
    assert res.stdout.splitlines()[-1] == "scripts/install: done: tfdistill 0.1.0"


def test_a_mismatched_torchvision_is_an_error_naming_the_mismatch(tmp_path):
    res, _ = _install(tmp_path, STUB_TV_FOR="2.10.0")
    assert res.returncode == 1 and "done" not in res.stdout
    assert res.stderr.strip().splitlines()[-1] == (
        "scripts/install: error: torchvision 0.26.0+cpu is built for torch 2.10.0, but torch 2.11.0+cpu is "
        "installed: a mismatched pair; reinstall both from one index")


def test_a_torchvision_that_does_not_import_is_an_error_never_a_success(tmp_path):
    """The issue's case: a CPU torch from one source beside a CUDA torchvision from another."""
    res, _ = _install(tmp_path, STUB_TV_BROKEN="1")
    assert res.returncode == 1 and "done" not in res.stdout
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("scripts/install: error: torchvision does not import beside torch 2.11.0+cpu (CPU build): "
                          "RuntimeError: operator torchvision::nms does not exist")


def test_a_working_torch_is_kept(tmp_path):
    env = _stand_ins(tmp_path)
    _write_torch(env["STUB_SITE"], cuda=True)
    res, pip = _install(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert pip == [f"pip install -e {REPO}"]  # no torch step
    assert "scripts/install: torch + torchvision already installed and working: kept as they are" in res.stdout
    assert "scripts/install: torch 2.11.0+cu128: imports (CUDA 12.8 build)" in res.stdout
