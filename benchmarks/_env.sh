# Sourced by the GPU scripts (gpu_check.sh, gpu_reproduce.sh): the Python environment on a machine without internet.
#
# Needs PY (the interpreter) and a function `log`. Python packages the device image lacks are installed from the
# wheels carried in .whl/ (fetch them on a machine with internet, e.g.
#   pip download --no-deps -d .whl omegaconf antlr4-python3-runtime==4.9.3 pytest-xdist execnet pytest-timeout
# ), into /tmp/site, and tfdistill itself is imported from this checkout.

# ensure_python MODULE... : every module importable, installing from .whl/ what is missing; exit 3 if impossible.
ensure_python() {
  local check="import $(IFS=,; echo "$*")"
  if ! $PY -c "$check" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
      log "installing the missing Python packages from .whl/"
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "pip install from .whl/ failed" >&2; exit 3; }
      export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    $PY -c "$check" || { echo "missing Python packages ($*) and no wheels for them in .whl/" >&2; exit 3; }
  fi
  if ! $PY -c "import tfdistill" 2>/dev/null; then
    $PY -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1 || true
    $PY -c "import tfdistill" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
  $PY -c "import tfdistill" || { echo "cannot import tfdistill" >&2; exit 3; }
}
