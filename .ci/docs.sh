#!/usr/bin/env bash
# CI step for the docs site: install the [docs] extra and build the site with `mkdocs build --strict` (any warning
# fails: a broken link, a page missing from the nav, a docstring mkdocstrings cannot render, a generated method
# section with an unknown family) into a temporary folder that is removed afterwards. The examples in the pages
# run in tests/test_docs.py, which needs no mkdocs.
#   bash .ci/docs.sh            # from anywhere; uses $PYTHON (default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export NO_MKDOCS_2_WARNING=1 PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[docs] installing the docs extra: $PY -m pip install -q -e .[docs]"
"$PY" -m pip install -q -e ".[docs]"
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
echo "[docs] mkdocs build --strict -d $SITE"
"$PY" -m mkdocs build --strict -d "$SITE"
echo "[docs] built $(find "$SITE" -name index.html | wc -l) pages: mkdocs build --strict passed"
