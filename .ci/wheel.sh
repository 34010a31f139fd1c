#!/usr/bin/env bash
# CI: the wheel a user gets. Build sdist + wheel (no build warning allowed), `twine check` them, install the wheel
# (not editable) into the given virtual environment, then, from a folder outside the checkout: `tfdistill recipes`,
# a one-epoch `tfdistill demo`, the library import, and the non-slow suite against the installed wheel (a copy of the
# checkout WITHOUT src/, so nothing can import the checkout's source).
#
# Usage:   .ci/wheel.sh VENV_PYTHON [PYTEST_ARGS...]
#          VENV_PYTHON: the python of a virtual environment that already holds torch + torchvision (a CI matrix
#          leg); they are kept as they are (pip gets them as constraints). Default PYTEST_ARGS: -q -n 2 -m "not slow".
# Env:     WHEEL_SKIP_TESTS=1   stop after the smoke checks (build, twine, install, recipes, demo, import).
set -euo pipefail

py="${1:?usage: .ci/wheel.sh VENV_PYTHON [PYTEST_ARGS...]}"
shift
[ "$#" -gt 0 ] || set -- -q -n 2 -m "not slow"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T0=$(date +%s)
say() { echo "[wheel +$(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "[wheel] FAILED: $*" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

# ------------------------------------------------------------------ build (from a clean copy of the working tree)
say "copying the checkout's tracked and unignored files to $work/src-tree"
mkdir "$work/src-tree"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c 'test -e "{}" && echo "{}"' \
    | tar cf - -T -) | tar xf - -C "$work/src-tree"
say "installing build + twine into $py"
"$py" -m pip install -q build twine
say "python -m build (sdist, then the wheel from the sdist)"
# PYTHONDONTWRITEBYTECODE makes setuptools print "byte-compiling is disabled" warnings: a setting of the machine,
# not of the package
(cd "$work/src-tree" && env -u PYTHONDONTWRITEBYTECODE "$py" -m build --outdir "$work/dist" .) > "$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; fail "python -m build"; }
if grep -niE "warning|deprecat|would be ignored" "$work/build.log"; then
    fail "the build printed the warnings above (full log: python -m build in a copy of the checkout)"
fi
sdist=$(ls "$work"/dist/tfdistill-*.tar.gz) && wheel=$(ls "$work"/dist/tfdistill-*.whl) || fail "no sdist or wheel"
say "built $(basename "$sdist") and $(basename "$wheel"), no warnings"
"$py" -m twine check --strict "$sdist" "$wheel"

# what each must hold: every recipe of configs/ (the wheel: tfdistill/configs/), py.typed, the LICENSE
"$py" - "$repo" "$sdist" "$wheel" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path
repo, sdist, wheel = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
recipes = sorted(str(p.relative_to(repo)) for p in (repo / "configs").rglob("*.yaml"))
whl = set(zipfile.ZipFile(wheel).namelist())
sd = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
need_whl = [f"tfdistill/{r}" for r in recipes] + ["tfdistill/py.typed"]
missing = [n for n in need_whl if n not in whl] + [n for n in recipes + ["LICENSE", "setup.py"] if n not in sd]
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in whl):
    missing.append("wheel: *.dist-info/licenses/LICENSE")
if missing:
    sys.exit(f"[wheel] FAILED: missing from the sdist/wheel: {', '.join(missing)}")
print(f"[wheel] contents: {len(recipes)} recipes, py.typed and LICENSE in the wheel; recipes, LICENSE, setup.py in the sdist")
EOF

# ------------------------------------------------------------------ install the wheel (torch kept as it is)
"$py" -c "import torch, torchvision" || fail "$py has no working torch + torchvision (a CI matrix leg installs them first)"
"$py" -c "import torch, torchvision; print(f'torch=={torch.__version__.split(\"+\")[0]}'); \
print(f'torchvision=={torchvision.__version__.split(\"+\")[0]}')" > "$work/constraints.txt"
say "installing the wheel + [test] extras with $(tr '\n' ' ' < "$work/constraints.txt")kept"
"$py" -m pip uninstall -q -y tfdistill 2>/dev/null || true  # an editable install of the checkout would shadow the wheel
"$py" -m pip install -q -c "$work/constraints.txt" "${wheel}[test]"
"$py" -c "import torch, torchvision" || fail "installing the wheel broke torch/torchvision"
bindir="$(dirname "$py")"
tfd="$bindir/tfdistill"
[ -x "$tfd" ] || fail "no tfdistill entry point next to $py"

# ------------------------------------------------------------------ smoke: outside the checkout
mkdir "$work/outside" && cd "$work/outside"
where=$("$py" -c "import tfdistill, os; print(os.path.dirname(tfdistill.__file__))")
case "$where" in
    "$repo"/*) fail "tfdistill imports from the checkout ($where), not from the installed wheel" ;;
    *site-packages/tfdistill) say "tfdistill imports from $where" ;;
    *) fail "tfdistill imports from $where, not from site-packages" ;;
esac
say "tfdistill recipes"
"$tfd" recipes | tee "$work/recipes.txt"
for r in demo cifar100/paper reproduce/table1; do
    grep -qx "$r" "$work/recipes.txt" || fail "tfdistill recipes does not list $r"
done
grep -q "^# recipes in $where/configs " "$work/recipes.txt" || fail "the recipes are not read from the installed package"
say "tfdistill demo --epochs 1"
"$tfd" demo --epochs 1 --out-dir "$work/outside/runs" | tee "$work/demo.txt"
grep -q "^| tfd |" "$work/demo.txt" && ls "$work"/outside/runs/demo-*/curves.png >/dev/null \
    || fail "the demo printed no result table or wrote no curves.png"
say "the library import"
"$py" - <<'EOF'
import torch
import tfdistill
from tfdistill import FeatureTap, TFDLoss
from tfdistill.models import create_model

model = create_model("resnet8", num_classes=10)
with FeatureTap(model, "auto") as tap:
    logits, feats = tap(torch.randn(4, 3, 32, 32))
    terms = TFDLoss()(feats)
loss = terms["total"]
loss.backward()
assert logits.shape == (4, 10) and torch.isfinite(loss), (logits.shape, loss)
print(f"[wheel] import tfdistill {tfdistill.__version__}: TFD terms {sorted(terms)} on resnet8, loss {loss.item():.4f}")
EOF

if [ -n "${WHEEL_SKIP_TESTS:-}" ]; then
    say "smoke checks passed (tests skipped: WHEEL_SKIP_TESTS)"
    exit 0
fi
# ------------------------------------------------------------------ the suite, against the installed wheel
# A copy of the checkout without src/: the tests' subprocesses (PYTHONPATH=<copy>/src) and imports can only reach
# the installed package; tests/test_packaging.py's installed-wheel checks run (TFDISTILL_TEST_INSTALLED=1).
say "the tests against the installed wheel: pytest $*"
rm -rf "$work/src-tree/src" "$work/src-tree/build" "$work"/src-tree/*.egg-info
ln -s "$(dirname "$repo")/shared" "$work/shared" 2>/dev/null || true  # the real-data tests find ../shared
cd "$work/src-tree"
TFDISTILL_TEST_INSTALLED=1 "$py" -m pytest -p no:cacheprovider "$@"
say "wheel checks passed"
