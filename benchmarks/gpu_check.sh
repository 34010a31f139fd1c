#!/usr/bin/env bash
# The GPU check: one prepared command for a lent GPU machine (one H100/H200, no internet), ~8 minutes.
#
#   bash benchmarks/gpu_check.sh               # on the GPU machine; results in $OUT (default gpu_check_out/)
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same logic on 2 CPU cores in <= 3 minutes (small parts)
#
# Runs, in order, each part under its own time limit (a hang in one cannot eat the others):
#   1. the test suite on this machine, CUDA-only tests included (pytest -n 8)            -> pytest.txt
#   2. benchmarks/throughput.py (engine vs classic, TFD/CE, FitNets/TFD, packed runs)     -> throughput.txt/.json
#   3. the whole step compiled (engine.compile=true): one run at batch 512, K packed runs   -> compile.txt
#   4. a short real-data run, CE vs TFD (ResNet20, CIFAR-10 JPEG copy)                     -> realdata.txt
#   5. benchmarks/profile_tfd.py: kernels per step and the TFD losses' own time, eager vs fused -> profile.txt
#   6. benchmarks/profile_step.py: a CE step's time per dtype x memory format (and compiled), by kernel category
#                                                                                            -> step_profile.txt
# and prints a short summary last (also summary.txt), with the card's name. At most 8 files go to $OUT.
#
# Carry into the checkout: .data/cifar10-jpeg/{train,test}.tar.gz (the CIFAR-10 JPEG copy from ../shared/data) and,
# if the image lacks them, wheels in .whl/ (see benchmarks/_env.sh). Environment: OUT, PYTHON, GPU_CHECK_DATA
# (default .data/cifar10-jpeg, else ../shared/data/cifar10-jpeg), GPU_CHECK_T_TESTS / _T_THROUGHPUT / _T_COMPILE /
# _T_REALDATA / _T_PROFILE / _T_STEP (seconds per part).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
T0=$(date +%s)
PY=${PYTHON:-python3}
SMOKE=0
for a in "$@"; do
  case "$a" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$a' (valid: --cpu-smoke, --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }
# shellcheck source=benchmarks/_env.sh
. benchmarks/_env.sh
ensure_python omegaconf tqdm matplotlib pytest xdist pytest_timeout

DATA=${GPU_CHECK_DATA:-}
if [ -z "$DATA" ]; then
  for d in .data/cifar10-jpeg ../shared/data/cifar10-jpeg; do
    [ -f "$d/train.tar.gz" ] && { DATA=$d; break; }
  done
fi
[ -n "$DATA" ] && export TFDISTILL_CIFAR10_JPEG="$DATA"

if [ $SMOKE = 1 ]; then
  DEV=cpu
  T_TESTS=${GPU_CHECK_T_TESTS:-60}; T_TP=${GPU_CHECK_T_THROUGHPUT:-60}
  T_COMPILE=${GPU_CHECK_T_COMPILE:-60}; T_REAL=${GPU_CHECK_T_REALDATA:-30}; T_PROF=${GPU_CHECK_T_PROFILE:-40}
  T_STEP=${GPU_CHECK_T_STEP:-40}
  # the fast losses, the train step's fallbacks, the graph runner (fake backend) and every method's backward under bf16
  TESTS=(tests/test_tfd_fast.py tests/test_accel.py tests/test_graphs.py tests/test_baselines.py -m "not slow"
         -k "tfd_fast or accel or graphs or bf16" -n 2)
  TP_ARGS=(--device cpu --quick --skip-classic --compile-budget 0)
  PROF_ARGS=(--device cpu --batch 16 --iters 2)
  PROF_BACKEND=aot_eager  # the fused variant traced, not built: inductor's C++ build alone can take the whole limit
  STEP_ARGS=(--device cpu --batch 8 --iters 2 --variant fp32:cl --variant bf16:nchw)
  # the compiled step traced with aot_eager (inductor's C++ build alone could take the whole limit)
  COMPILE_ARGS=(--device cpu --quick --skip-classic --parts packed); COMPILE_BACKEND=aot_eager
  REAL=(data.train_subset=1000 data.test_subset=500 epochs=1 data.batch_size=128 optim.lr=0.1 engine.precision=fp32)
else
  DEV=cuda
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: no CUDA device here (--cpu-smoke runs the logic on the CPU)" >&2; exit 3; }
  T_TESTS=${GPU_CHECK_T_TESTS:-90}; T_TP=${GPU_CHECK_T_THROUGHPUT:-180}
  T_COMPILE=${GPU_CHECK_T_COMPILE:-150}; T_REAL=${GPU_CHECK_T_REALDATA:-90}; T_PROF=${GPU_CHECK_T_PROFILE:-60}
  T_STEP=${GPU_CHECK_T_STEP:-150}
  # the CUDA-only tests: every other test hides the GPU (tests/conftest.py), so CI on a CPU already runs it as
  # it would run here
  TESTS=(tests -m cuda -n 4)
  PROF_ARGS=(--device cuda)
  PROF_BACKEND=${TFDISTILL_COMPILE_BACKEND:-inductor}
  # the default variants, then the compiled model last (its warm-up may not fit the limit; the others print first)
  # (nchw is ~3x slower and fp32 ~1.5x: measured once on an H100, benchmarks/README.md; not repeated here)
  STEP_ARGS=(--device cuda --batch 512 --variant bf16:cl --variant fp16:cl --variant bf16:cl:compile)
  COMPILE_ARGS=(--device cuda --skip-classic --parts big,packed --big-methods ce --rounds 2)
  COMPILE_BACKEND=${TFDISTILL_COMPILE_BACKEND:-inductor}
  TP_ARGS=(--device cuda --rounds 3 --ratio-rounds 5 --compile-budget 0)  # compile: part 3
  REAL=(epochs=8 data.batch_size=512 optim.lr=0.2 engine.precision=bf16)
fi

ENV_TXT=$(mktemp)
$PY - > "$ENV_TXT" 2>&1 <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"device: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); python {platform.python_version()}; "
      f"{platform.machine()}, {__import__('os').cpu_count()} CPUs")
EOF
log "$(cat "$ENV_TXT")"

# ---------------------------------------------------------------- 1. the test suite
log "1/6 tests (limit ${T_TESTS}s)"
timeout -k 10 "$T_TESTS" $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}" > "$OUT/pytest.txt" 2>&1
TESTS_RC=$?
tail -n 3 "$OUT/pytest.txt"

# ---------------------------------------------------------------- 2. throughput
log "2/6 throughput (limit ${T_TP}s)"
TP_DATA=()
[ -n "$DATA" ] && TP_DATA=(--archive "$DATA")
timeout -k 10 "$T_TP" $PY benchmarks/throughput.py "${TP_ARGS[@]}" "${TP_DATA[@]}" --json-out "$OUT/throughput.json" \
  > "$OUT/throughput.txt" 2>&1
TP_RC=$?

# ---------------------------------------------------------------- 3. torch.compile, warm-up capped
log "3/6 compiled step (limit ${T_COMPILE}s)"
C_START=$(date +%s)
TFDISTILL_COMPILE_BACKEND=$COMPILE_BACKEND timeout -k 5 "$T_COMPILE" $PY benchmarks/throughput.py "${COMPILE_ARGS[@]}" \
  "${TP_DATA[@]}" --compile --compile-budget 0 > "$OUT/compile.txt" 2>&1
COMPILE_RC=$?
echo "exit code $COMPILE_RC after $(( $(date +%s) - C_START ))s (124 = stopped at the ${T_COMPILE}s limit)" >> "$OUT/compile.txt"

# ---------------------------------------------------------------- 4. real data, CE vs TFD
log "4/6 real data (limit ${T_REAL}s)"
RUNS_DIR=$(mktemp -d)
REAL_RC=0
{
  if [ -z "$DATA" ]; then
    echo "no CIFAR-10 JPEG archives (carry .data/cifar10-jpeg): real-data part skipped"
    REAL_RC=3
  else
    for m in ce tfd; do
      timeout -k 5 $(( T_REAL / 2 )) $PY -m tfdistill train cifar100/paper data.name=imagefolder "data.root=$DATA" \
        model.name=resnet20 "method.name=$m" seed=0 schedule.name=cosine engine.device=$DEV engine.progress=false \
        "${REAL[@]}" "out_dir=$RUNS_DIR" "name=$m" || REAL_RC=$?
    done
  fi
} > "$OUT/realdata.txt" 2>&1

# ---------------------------------------------------------------- 5. the TFD losses' kernels and time
log "5/6 TFD loss profile (limit ${T_PROF}s)"
TFDISTILL_COMPILE_BACKEND=$PROF_BACKEND timeout -k 5 "$T_PROF" $PY benchmarks/profile_tfd.py "${PROF_ARGS[@]}" \
  > "$OUT/profile.txt" 2>&1
PROF_RC=$?

# ---------------------------------------------------------------- 6. where a CE step's time goes
log "6/6 step profile (limit ${T_STEP}s)"
timeout -k 5 "$T_STEP" $PY benchmarks/profile_step.py "${STEP_ARGS[@]}" > "$OUT/step_profile.txt" 2>&1
STEP_RC=$?

# ---------------------------------------------------------------- summary, printed last
$PY - "$OUT" "$ENV_TXT" "$RUNS_DIR" "$TESTS_RC" "$TP_RC" "$COMPILE_RC" "$REAL_RC" "$PROF_RC" "$STEP_RC" "$(( $(date +%s) - T0 ))" <<'EOF' | tee "$OUT/summary.txt"
import json, re, sys
from pathlib import Path

out, env, runs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
tests_rc, tp_rc, compile_rc, real_rc, prof_rc, step_rc, total = (int(v) for v in sys.argv[4:])
def last_match(path, pattern):
    text = path.read_text(errors="replace") if path.is_file() else ""
    found = re.findall(pattern, text, flags=re.M)
    return found[-1] if found else None

print("=" * 100)
print(env.read_text().strip())
line = last_match(out / "pytest.txt", r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$")
print(f"tests: {line or 'no result'}" + ("" if tests_rc == 0 else f"  (exit {tests_rc}{', time limit' if tests_rc == 124 else ''})"))
tp = out / "throughput.json"
if tp.is_file():
    res = json.loads(tp.read_text().strip().splitlines()[-1])
    for t in res.get("targets") or []:
        v = t.get("value")
        text = "-" if v is None else f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3f}"
        print(f"target {t.get('status', '?'):<7} {t.get('target')}: {text} (goal {t.get('goal')})"
              + (f"  {t['note']}" if t.get("note") else ""))
    for k, v in (res.get("ratios") or {}).items():
        if isinstance(v, (int, float)):
            print(f"  {k} = {v:.3f}")
else:
    print(f"throughput: no result (exit {tp_rc}{', time limit' if tp_rc == 124 else ''}); see throughput.txt")
comp = last_match(out / "compile.txt", r"^(\{.*\})$")
print(f"compile: exit {compile_rc}{' (time limit)' if compile_rc == 124 else ''}")
if comp:
    comp = json.loads(comp)
    for k, v in comp.get("speed", {}).items():
        print(f"  compiled {k}: {v['images_per_sec']:.0f} img/s ({v['mode']})")
    pk = comp.get("packed") or {}
    if pk:
        print(f"  compiled K={pk['k']} packed at batch {pk['batch']}: {pk['aggregate_images_per_sec']:.0f} img/s vs "
              f"{pk['single_run_images_per_sec']:.0f} one run = {pk['aggregate_over_single']:.3f}x ({pk['how']}; "
              f"one run {pk.get('single_how')})")
    for k, v in (comp.get("ratios") or {}).items():
        if k.startswith("big_") or "_over_big_" in k:
            print(f"  compiled {k} = {v:.3f}")
for m in ("ce", "tfd"):
    s = runs / m / "summary.json"
    if s.is_file():
        d = json.loads(s.read_text())
        print(f"real data {m}: last {d['last_top1']:.2f}%  best {d['best_top1']:.2f}% (epoch {d['best_epoch']}/{d['epochs']}), "
              f"{d.get('images_per_sec') or 0:.0f} img/s, {d.get('precision')}, seed {d['seed']}")
    else:
        print(f"real data {m}: no result (exit {real_rc}); see realdata.txt")
prof = last_match(out / "profile.txt", r"^(\{.*\})$")
if prof:
    for b, row in json.loads(prof)["batches"].items():
        print(f"profile {b}: kernels/step CE {row['kernels_ce']}, TFD eager {row['kernels_tfd_eager']}, fused "
              f"{row['kernels_tfd_fused']} ({row['mode_tfd_fused']}); losses fwd+bwd {row['loss_us_tfd_eager']} us "
              f"eager, {row['loss_us_tfd_fused']} us fused; step TFD/CE {row['step_tfd_eager_over_ce']} eager, "
              f"{row['step_tfd_fused_over_ce']} fused")
else:
    print(f"profile: no result (exit {prof_rc}); see profile.txt")
step = out / "step_profile.txt"
rows = re.findall(r"^(b\d+/\S+)\s+([\d.]+) ms/step\s+(\d+) img/s", step.read_text(errors="replace") if step.is_file()
                  else "", flags=re.M)
for key, ms, ips in rows:
    print(f"step profile {key}: {ms} ms/step, {ips} img/s")
if step_rc != 0:
    print(f"step profile: exit {step_rc}{' (time limit)' if step_rc == 124 else ''}; see step_profile.txt")
print(f"gpu_check: {total}s in all; files in {out}/")
EOF
rm -rf "$RUNS_DIR" "$ENV_TXT"
[ $TESTS_RC -eq 0 ] && [ $TP_RC -eq 0 ] && [ $REAL_RC -eq 0 ]
