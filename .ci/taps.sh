#!/usr/bin/env bash
# The Hugging Face family table at the lowest declared transformers (5.0.0): a venv over the CI environment's
# site-packages (its torch is kept), transformers pinned to 5.0.0, then the HF tap tests and the HF walk's fast subset.
# Usage: .ci/taps.sh [PYTHON]   (PYTHON: the interpreter of the torch-matrix environment to build on; default python)
set -euo pipefail
PY="${1:-python}"
VENV="${TMPDIR:-/tmp}/tfdistill-hf50"
PIN="$(mktemp)"
trap 'rm -f "$PIN"' EXIT
"$PY" -c 'import importlib.metadata as m; print("\n".join(f"{d}=={m.version(d)}" for d in ("torch", "torchvision")))' > "$PIN"
CONSTRAINTS=(-c "$PIN")
echo "== .ci/taps.sh: venv $VENV over $("$PY" -c 'import sys; print(sys.executable)') with transformers==5.0.0"
"$PY" -m venv --system-site-packages "$VENV"
TORCH_BEFORE="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
# transformers 5.0.0 breaks with kernels >= 0.11 (LayerRepository needs a revision): keep an older one in this venv
"$VENV/bin/pip" install -q "${CONSTRAINTS[@]}" "transformers==5.0.0" "kernels<0.11"
"$VENV/bin/pip" install -q --no-deps -e .
TORCH_AFTER="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
echo "== torch $TORCH_BEFORE -> $TORCH_AFTER; transformers $("$VENV/bin/python" -c 'import transformers; print(transformers.__version__)')"
[ "$TORCH_BEFORE" = "$TORCH_AFTER" ] || { echo "torch changed: $TORCH_BEFORE -> $TORCH_AFTER" >&2; exit 1; }
echo "== HF tap tests at transformers 5.0.0"
OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_hf_taps.py \
    "tests/test_tap_walk.py::test_hf_walk_fast_subset"
