#!/usr/bin/env bash
# A GPU slice of the reproduction protocol in at most ~8 minutes on one H100/H200 (torch >= 2.4, no internet):
# ResNet20, CE vs TFD, 4 seeds, on the CIFAR-10 JPEG copy carried into the repo (.data/cifar10-jpeg/{train,test}.tar.gz),
# the sweep spec configs/reproduce/gpu_slice.yaml (batch 512, lr 0.2, cosine, bf16, channels_last), the number of
# epochs set from a measured throughput so that the sweep fits the budget; the report table is printed last.
#
#   bash benchmarks/gpu_reproduce.sh                      # on the GPU machine, from anywhere
#   GPU_SLICE_TINY=1 bash benchmarks/gpu_reproduce.sh     # the same logic on CPU in ~2 minutes (2 seeds, tiny data)
#
# Settings (environment): GPU_SLICE_BUDGET_S (whole script, default 450 s), GPU_SLICE_JOBS (processes sharing the
# GPU, default 4), GPU_SLICE_SEEDS (default 0,1,2,3), GPU_SLICE_EPOCHS (skip the measurement), GPU_SLICE_DATA_ROOT
# (default .data/cifar10-jpeg), GPU_SLICE_RUNS (default runs), GPU_SLICE_EXTRA (more key=value overrides), PYTHON.
# Run directories go to $GPU_SLICE_RUNS/gpu_slice_e<epochs>/gpu_slice/ (re-running with the same epochs skips
# finished runs); the report (report.md/csv/json + PNGs) and sweep_state.json go to $OUT when it is set.
#
# Table 1 proxy (configs/reproduce/cifar10_table1.yaml: 4 students x {CE, TFD} x 3 seeds x 240 epochs, the paper's
# recipe, 24 runs x 12 M images), in slices that each stop within 9 minutes and resume where the last stopped:
#
#   TABLE1=1 bash benchmarks/gpu_reproduce.sh                    # one slice; run it again to go on
#   TABLE1=1 TABLE1_SLICES=0 bash benchmarks/gpu_reproduce.sh    # slice after slice until the sweep is done
#   TABLE1=1 GPU_SLICE_TINY=1 bash benchmarks/gpu_reproduce.sh   # the slice logic on CPU (tiny data, 2 epochs)
#
# Table 1 settings: TABLE1_SLICE_S (sweep seconds per slice, default 500; the report follows), TABLE1_SLICES (slices
# in this call, default 1; 0 = until finished), TABLE1_JOBS (processes, default 4), TABLE1_SWEEP_ARGS (more sweep
# flags), TABLE1_ONLY (a run-name pattern, e.g. 'resnet20_*'); runs go to $GPU_SLICE_RUNS/cifar10_table1/.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
T0=$(date +%s)
PY=${PYTHON:-python3}
BUDGET=${GPU_SLICE_BUDGET_S:-450}
JOBS=${GPU_SLICE_JOBS:-4}
SEEDS=${GPU_SLICE_SEEDS:-0,1,2,3}
DATA_ROOT=${GPU_SLICE_DATA_ROOT:-.data/cifar10-jpeg}
RUNS=${GPU_SLICE_RUNS:-runs}
TINY=${GPU_SLICE_TINY:-0}
REPORT_RESERVE=40   # seconds kept for the report at the end
export PYTHONUNBUFFERED=1

now() { date +%s; }
log() { echo "[gpu_slice +$(( $(now) - T0 ))s] $*"; }

# ---------------------------------------------------------------- 1. dependencies, only what is missing
# shellcheck source=benchmarks/_env.sh
. benchmarks/_env.sh
ensure_python omegaconf tqdm matplotlib

# ---------------------------------------------------------------- 2a. Table 1 proxy in resumable slices
if [ "${TABLE1:-0}" = 1 ]; then
  SPEC=configs/reproduce/cifar10_table1.yaml
  SLICE_S=${TABLE1_SLICE_S:-500}
  SLICES=${TABLE1_SLICES:-1}
  JOBS=${TABLE1_JOBS:-4}
  OVR=()
  ONLY=()
  if [ "$TINY" = 1 ]; then
    # the slice logic on CPU: one student, both methods, one seed, 2 short epochs, 2 processes
    OVR+=(engine.device=cpu engine.compile=false epochs=2 "schedule.milestones=[1]" engine.max_steps_per_epoch=8)
    if [ -f "$DATA_ROOT/train.tar.gz" ] || [ -d "$DATA_ROOT/train" ]; then
      OVR+=("data.root=$DATA_ROOT" data.train_subset=512 data.test_subset=256)
    else
      log "tiny mode without $DATA_ROOT: synthetic data"
      OVR+=(data.name=synthetic data.synthetic_train=256 data.synthetic_test=128 data.loader=auto)
    fi
    ONLY+=(--only "resnet20_*_s0")
    SLICE_S=${TABLE1_SLICE_S:-60}; SLICES=${TABLE1_SLICES:-3}; JOBS=${TABLE1_JOBS:-2}
  else
    $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
      || { echo "gpu_slice: no CUDA device (GPU_SLICE_TINY=1 runs the logic on CPU)" >&2; exit 3; }
    [ -f "$DATA_ROOT/train.tar.gz" ] && [ -f "$DATA_ROOT/test.tar.gz" ] \
      || { echo "gpu_slice: $DATA_ROOT/{train,test}.tar.gz not found (carry .data/cifar10-jpeg)" >&2; exit 3; }
    OVR+=("data.root=$DATA_ROOT")
  fi
  # shellcheck disable=SC2206
  OVR+=(${GPU_SLICE_EXTRA:-})
  [ -n "${TABLE1_ONLY:-}" ] && ONLY+=(--only "$TABLE1_ONLY")
  # shellcheck disable=SC2206
  SWEEP_ARGS=(--jobs "$JOBS" ${TABLE1_SWEEP_ARGS:-})
  SWEEP_OUT="$RUNS/cifar10_table1"
  SWEEP_DIR="$SWEEP_OUT/cifar10_table1"
  REPORT_DIR=${OUT:-$SWEEP_DIR/report}
  log "table1: $SPEC -> $SWEEP_DIR, slices of ${SLICE_S}s, ${SWEEP_ARGS[*]} ${ONLY[*]} ${OVR[*]}"
  i=0
  while :; do
    i=$(( i + 1 ))
    log "table1 slice $i: sweep for at most ${SLICE_S}s (finished runs are skipped, interrupted ones resume)"
    timeout -s INT -k 20 "$SLICE_S" $PY -m tfdistill sweep "$SPEC" --out-dir "$SWEEP_OUT" "${SWEEP_ARGS[@]}" \
      "${ONLY[@]}" "${OVR[@]}"
    SWEEP_RC=$?
    case $SWEEP_RC in
      0) log "table1 slice $i: the sweep is finished" ;;
      124|130|137) log "table1 slice $i: stopped at the slice limit; run the same command again to resume" ;;
      *) log "table1 slice $i: sweep exit code $SWEEP_RC (failed runs are flagged in the report)" ;;
    esac
    [ -n "${OUT:-}" ] && [ -f "$SWEEP_DIR/sweep_state.json" ] && cp "$SWEEP_DIR/sweep_state.json" "$OUT/"
    if [ -f "$SWEEP_DIR/sweep.yaml" ]; then
      log "table1 slice $i: report ($(( $(now) - T0 ))s so far) -> $REPORT_DIR"
      $PY -m tfdistill report "$SWEEP_DIR" --out "$REPORT_DIR" || exit $?
    else
      log "table1 slice $i: the sweep stopped before it had planned its runs (no report yet)"
    fi
    case $SWEEP_RC in 124|130|137) ;; *) exit $SWEEP_RC ;; esac
    [ "$SLICES" != 0 ] && [ "$i" -ge "$SLICES" ] && exit 0
  done
fi

# ---------------------------------------------------------------- 2. settings
OVR=()
if [ "$TINY" = 1 ]; then
  # The script's logic on CPU: fp32, a few hundred images, 1-2 epochs, 2 seeds, 2 processes.
  OVR+=(engine.device=cpu engine.precision=fp32 engine.channels_last=false data.batch_size=64 optim.lr=0.05)
  if [ -f "$DATA_ROOT/train.tar.gz" ] || [ -d "$DATA_ROOT/train" ]; then
    OVR+=("data.root=$DATA_ROOT" data.train_subset=500 data.test_subset=200)
  else
    log "tiny mode without $DATA_ROOT: synthetic data"
    OVR+=(data.name=synthetic data.synthetic_train=256 data.synthetic_test=128 data.loader=auto)
  fi
  SEEDS=${GPU_SLICE_SEEDS:-0,1}; JOBS=${GPU_SLICE_JOBS:-2}; MIN_E=1; MAX_E=2
else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_slice: no CUDA device (GPU_SLICE_TINY=1 runs the logic on CPU)" >&2; exit 3; }
  [ -f "$DATA_ROOT/train.tar.gz" ] && [ -f "$DATA_ROOT/test.tar.gz" ] \
    || { echo "gpu_slice: $DATA_ROOT/{train,test}.tar.gz not found (carry .data/cifar10-jpeg)" >&2; exit 3; }
  OVR+=("data.root=$DATA_ROOT")
  MIN_E=4; MAX_E=30
fi
# shellcheck disable=SC2206
OVR+=(${GPU_SLICE_EXTRA:-})
ONLY=()
IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
for s in "${SEED_LIST[@]}"; do ONLY+=(--only "*_s$s"); done
NRUNS=$(( 2 * ${#SEED_LIST[@]} ))
$PY - <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__}, {gpu}, python {platform.python_version()}")
EOF
log "overrides: ${OVR[*]}"

# ---------------------------------------------------------------- 3. decode + cache the data once, probe throughput
# (the parallel runs then load the cache instead of decoding the archives side by side)
timeout -k 10 240 $PY - "${OVR[@]}" <<'EOF' || { echo "gpu_slice: the data could not be loaded" >&2; exit 3; }
import sys, time
t = time.time()
from tfdistill.data import build_data
from tfdistill.sweep import plan_sweep

cfg = plan_sweep("configs/reproduce/gpu_slice.yaml", sys.argv[1:]).runs[0].cfg
n = build_data(cfg.data, "cpu", seed=0).num_train
print(f"data: {cfg.data.name} {cfg.data.root}, {n} training images, ready in {time.time() - t:.1f}s")
EOF
if [ -n "${GPU_SLICE_EPOCHS:-}" ]; then
  EPOCHS=$GPU_SLICE_EPOCHS
  log "epochs fixed by GPU_SLICE_EPOCHS: $EPOCHS"
else
  PROBE_START=$(date +%s.%N)
  PROBE=$(timeout -k 10 120 $PY - "$PROBE_START" "$RUNS/gpu_slice_probe" "${OVR[@]}" <<'EOF'
import json, sys, time
t_start, probe_dir, overrides = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
from tfdistill.data import build_data
from tfdistill.engine import train
from tfdistill.sweep import plan_sweep

plan = plan_sweep("configs/reproduce/gpu_slice.yaml", [*overrides, "epochs=1", "engine.max_steps_per_epoch=60"],
                  out_dir=probe_dir)
run = next(r for r in plan.runs if r.method == "tfd")  # the slower of the two methods
t_import = time.time()
num_train = build_data(run.cfg.data, "cpu", seed=0).num_train  # a cache hit by now
t_data = time.time()
train(run.cfg, overwrite=True, echo=lambda s: None)
t_train = time.time()
row = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
# Per-run fixed cost = interpreter + imports + (cached) data + model build + warm-up + evaluation, i.e. all of the
# probe but its capped training epoch.
overhead = (t_import - t_start) + (t_train - t_data) - row["epoch_seconds"]
print(json.dumps({"images_per_sec": round(row["images_per_sec"]), "overhead_s": round(overhead, 1),
                  "num_train": num_train}))
EOF
)
  if [ $? -ne 0 ] || [ -z "$PROBE" ]; then
    EPOCHS=${MIN_E}
    log "probe failed; conservative epochs: $EPOCHS"
  else
    PROBE=$(echo "$PROBE" | tail -n 1)
    LEFT=$(( BUDGET - ($(now) - T0) - REPORT_RESERVE ))
    EPOCHS=$($PY - "$PROBE" "$LEFT" "$NRUNS" "$JOBS" "$MIN_E" "$MAX_E" <<'EOF'
import json, math, sys
p = json.loads(sys.argv[1]); left, runs, jobs, lo, hi = (float(x) for x in sys.argv[2:])
waves = math.ceil(runs / min(jobs, runs))
# Conservative: the processes sharing the GPU are assumed to get no more images/s together than one alone
# (they usually get more, so the sweep ends early), and an epoch costs its training images plus ~15% for evaluation.
per_epoch = runs * 1.15 * p["num_train"] / p["images_per_sec"]
epochs = math.floor((left - waves * 1.2 * p["overhead_s"]) / per_epoch)
print(int(min(hi, max(lo, epochs))))
EOF
)
    log "probe: $PROBE; $LEFT s left for $NRUNS runs, $JOBS at a time -> $EPOCHS epochs"
  fi
fi

# ---------------------------------------------------------------- 4. the sweep, under a hard time limit
SWEEP_OUT="$RUNS/gpu_slice_e$EPOCHS"
SWEEP_DIR="$SWEEP_OUT/gpu_slice"
LIMIT=$(( BUDGET - ($(now) - T0) - REPORT_RESERVE ))
[ "$LIMIT" -lt 30 ] && LIMIT=30
log "sweep: $NRUNS runs x $EPOCHS epochs, $JOBS at a time, hard limit ${LIMIT}s -> $SWEEP_DIR"
timeout -s INT -k 20 "$LIMIT" $PY -m tfdistill sweep configs/reproduce/gpu_slice.yaml --out-dir "$SWEEP_OUT" \
  --jobs "$JOBS" "${ONLY[@]}" "${OVR[@]}" "epochs=$EPOCHS"
SWEEP_RC=$?
case $SWEEP_RC in
  0) log "sweep finished" ;;
  124|130|137) log "sweep stopped at the time limit: unfinished runs are flagged in the report" ;;
  *) log "sweep exit code $SWEEP_RC (failed runs are flagged in the report)" ;;
esac

# ---------------------------------------------------------------- 5. the report, printed last
REPORT_DIR=${OUT:-$SWEEP_DIR/report}
[ -n "${OUT:-}" ] && [ -f "$SWEEP_DIR/sweep_state.json" ] && cp "$SWEEP_DIR/sweep_state.json" "$OUT/"
log "total $(( $(now) - T0 ))s; report in $REPORT_DIR"
$PY -m tfdistill report "$SWEEP_DIR" --out "$REPORT_DIR"
REPORT_RC=$?
[ $REPORT_RC -ne 0 ] && exit $REPORT_RC
exit $SWEEP_RC
