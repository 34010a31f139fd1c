#!/usr/bin/env bash
# Integration tests (issue #28): install the integration extras WITHOUT touching the pinned torch, then run the
# integration test files. On a leg whose Python/torch the extras do not support (transformers 5.x / accelerate 1.16
# need Python >= 3.11 and torch >= 2.6: e.g. the torch 2.4.1 leg), pip refuses and the tests skip (importorskip).
# Usage: .ci/integ.sh [python]   (default: python)
set -euo pipefail
PY="${1:-python}"
PIN="$(mktemp)"
"$PY" - "$PIN" <<'PYEOF'
import sys, importlib.metadata as m
with open(sys.argv[1], "w") as f:
    for d in ("torch", "torchvision"):
        f.write(f"{d}=={m.version(d)}\n")
PYEOF
echo "integ: pinning $(tr '\n' ' ' < "$PIN")"
if "$PY" -m pip install -c "$PIN" -e ".[integrations]"; then
    echo "integ: extras installed"
else
    echo "integ: the extras do not install on this leg (Python/torch too old for them); their tests will skip"
fi
echo "integ: torch after install: $("$PY" -c 'import torch; print(torch.__version__)')"
OMP_NUM_THREADS=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_create_method.py tests/test_integ_transformers.py \
    tests/test_integ_lightning.py tests/test_integ_timm.py tests/test_integ_accelerate.py
