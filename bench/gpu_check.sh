#!/usr/bin/env bash
# The one-shot GPU check of fastconv: everything that needs a GPU, in one short run.
#
#   bench/gpu_check.sh OUTDIR            # full run, under 8 minutes on an H100
#   bench/gpu_check.sh OUTDIR --quick    # under 4 minutes: cnn + small-c, default torch.compile
#   bench/gpu_check.sh OUTDIR --dry-run  # no GPU: every phase on the CPU with tiny shapes
#                                        # (also when FASTCONV_BENCH_DEVICE=cpu)
#   bench/gpu_check.sh OUTDIR --phases=tests,memcheck-cuda   # only these (env and build always run)
#
# Phases, in order, each under `timeout` so that one hang cannot eat the run, and each
# run even when an earlier one failed (the exit status is 1 if any failed):
#   env        nvidia-smi, versions (the extension is not built yet)
#   build      the extension, just in time, timed
#   tests      every GPU-marked test (pytest -m gpu), failures listed
#   smoke      tests/test_smoke.py: each CUDA and Triton kernel variant once, checked vs float64
#   memcheck   the same under compute-sanitizer memcheck (CUDA, then Triton)
#   racecheck  the CUDA kernels under compute-sanitizer racecheck (full run only)
#   layers     bench/bench_layers.py: suites x providers (fastconv, eager cuDNN, torch.compile)
#   train      bench/bench_train.py: the reference CNN's training step, profiled, eager and CUDA-graphed
#   overhead   bench/bench_overhead.py: host time per op call (its table goes to summary.txt)
#   autotable  the table `auto` reads, from the layer results
#   report     results.md + speedup.png, then the short table, printed last
#
# Exactly these 8 files are written to OUTDIR (a compact set, no archives, no subfolders):
#   summary.txt tests.log sanitizer.log results.json results.md speedup.png train.json autotable.json
# Caches (extension build, Triton, Inductor) live under $FASTCONV_SCRATCH (/tmp/fastconv-gpu-check).
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 470 full, 220 quick),
# GPU_CHECK_PHASES (what --phases= sets), GPU_CHECK_WORKERS (pytest-xdist workers, default 12),
# GPU_CHECK_LAYERS_ARGS (bench_layers.py arguments replacing the full run's suites, providers, modes).
set -u -o pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

OUT="" MODE=full DRY=0 PHASES=${GPU_CHECK_PHASES:-}
for arg in "$@"; do
  case "$arg" in
    --phases=*) PHASES=${arg#--phases=} ;;
    --quick) MODE=quick ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) if [ -n "$OUT" ]; then echo "gpu_check.sh: one OUTDIR only" >&2; exit 2; fi; OUT=$arg ;;
  esac
done
if [ -z "$OUT" ]; then usage >&2; exit 2; fi
if [ "${FASTCONV_BENCH_DEVICE:-}" = cpu ]; then DRY=1; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
FILES=(summary.txt tests.log sanitizer.log results.json results.md speedup.png train.json autotable.json)
(cd "$OUT" && rm -f "${FILES[@]}" ./*.tmp)
PY=${PYTHON:-python3}

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ "$DRY" = 0 ]; then
  SCRATCH=${FASTCONV_SCRATCH:-/tmp/fastconv-gpu-check}
  export FASTCONV_CACHE_DIR=${FASTCONV_CACHE_DIR:-$SCRATCH/ext}
  export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$SCRATCH/inductor}
  export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$SCRATCH/triton}
  mkdir -p "$FASTCONV_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR" "$TRITON_CACHE_DIR"
else
  export FASTCONV_BENCH_DEVICE=cpu
fi

if [ "$MODE" = quick ]; then BUDGET=${GPU_CHECK_BUDGET_S:-220}; else BUDGET=${GPU_CHECK_BUDGET_S:-470}; fi

exec > >(tee -a "$OUT/summary.txt") 2>&1
TEE_PID=$!

T0=$SECONDS
STATUS=()
FAILED=0

# limit CAP RESERVE: seconds a phase may take: at most CAP, leaving RESERVE for the later ones
limit() {
  local left=$(( BUDGET - (SECONDS - T0) - $2 ))
  (( left < 20 )) && left=20
  (( left < $1 )) && echo "$left" || echo "$1"
}

# phase NAME CAP RESERVE CMD...: run CMD (a command or a function below) under timeout,
# record its status
phase() {
  local name=$1 lim rc start=$SECONDS
  lim=$(limit "$2" "$3")
  shift 3
  echo
  echo "=== $name (limit ${lim}s, at $(( SECONDS - T0 ))s)"
  PHASE_LIMIT=$lim timeout -k 10 "$lim" bash -c '"$@"' "$name" "$@"
  rc=$?
  local took=$(( SECONDS - start )) word=ok
  if (( rc == 124 || rc == 137 )); then word="TIMEOUT after ${took}s"; FAILED=1
  elif (( rc != 0 )); then word="FAILED (exit $rc)"; FAILED=1; fi
  STATUS+=("$(printf '%-16s %-24s %4ss' "$name" "$word" "$took")")
  echo "--- $name: $word in ${took}s"
  return $rc
}

# ------------------------------------------------------------------------------ phases

env_report() {
  echo "gpu_check.sh $MODE$([ "$DRY" = 1 ] && echo ' (dry run, CPU)') in $ROOT, $(date -u +%FT%TZ)"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
      --format=csv,noheader
  else
    echo "nvidia-smi: not found"
  fi
  echo "nvcc: $(command -v nvcc >/dev/null && nvcc --version | grep -o 'release [0-9.]*' || echo 'not found')"
  echo "compute-sanitizer: $(sanitizer >/dev/null && "$(sanitizer)" --version | grep -m1 -o 'Version .*' || echo 'not found')"
  echo "python: $(command -v "$PY")"
  FASTCONV_EXT=off "$PY" -m fastconv info
}

sanitizer() {
  if command -v compute-sanitizer >/dev/null; then command -v compute-sanitizer; return 0; fi
  local c
  for c in /usr/local/cuda/bin/compute-sanitizer "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/y)")/compute-sanitizer"; do
    if [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}

build() {
  if [ "${FASTCONV_EXT:-}" = off ]; then
    echo "extension: not built (FASTCONV_EXT=off)"
    "$PY" -m fastconv info
    return 0
  fi
  "$PY" - "$DRY" <<'EOF'
import sys, time
t0 = time.time()
from fastconv import _ext
ok = _ext.load()
st = _ext.status()  # with a GPU visible, this loads (or builds) the CUDA kernels too
c = st["cuda"]
print(f"extension: C++ kernels {'built' if ok else 'NOT built'} ({st['mode']}): {st['path'] or st['error']}; "
      f"CUDA kernels {'built (' + c['mode'] + '): ' + c['path'] if c['built'] else 'NOT built: ' + str(c['why'])}; "
      f"{time.time() - t0:.1f} s")
need_cuda = sys.argv[1] == "0"
sys.exit(0 if ok and (st["cuda_kernels"] or not need_cuda) else 1)
EOF
  local rc=$?
  "$PY" -m fastconv info
  return $rc
}

# Every GPU test; skips are reported (-rs) and, on a GPU, a test file with GPU tests of which
# none passed (skipped whole: a missing package, a backend that is unavailable) fails the phase.
gpu_tests() {
  # -v: one line per test as it ends, so a phase cut short by its limit still names what failed
  local args=(-m "$1" -v -rfEsp -p no:cacheprovider) f
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then args+=(--timeout=120); fi
  if [ "$DRY" = 0 ] && "$PY" -c "import xdist" 2>/dev/null; then args+=(-n "${GPU_CHECK_WORKERS:-12}"); fi
  echo "pytest ${args[*]}  (log: tests.log)"
  "$PY" -m pytest "${args[@]}" >"$OUT/tests.log" 2>&1
  local rc=$?
  if (( rc == 5 )); then echo "no GPU-marked test was collected"; rc=1; fi
  grep -E '(^| )(FAILED|ERROR) tests/|^SKIPPED' "$OUT/tests.log" | head -n 30
  if [ "$DRY" = 0 ]; then
    for f in $(grep -l 'pytest.mark.gpu' tests/test_*.py); do
      if ! grep -q "PASSED $f::" "$OUT/tests.log"; then
        echo "GPU test file $f: no test passed (skipped whole?)"
        rc=1
      fi
    done
  fi
  tail -n 3 "$OUT/tests.log"
  return $rc
}

# The smoke run and the sanitizer runs skip Triton's config tuning (FASTCONV_TRITON_TUNE=0: one
# compile per kernel variant). With tuning on, the first H200 run spent its whole 29 s smoke limit
# and its memcheck limit compiling candidates; without it, memcheck of every Triton kernel took
# about a minute there. The tests and the benchmarks tune for themselves.
smoke() {
  FASTCONV_TRITON_TUNE=0 "$PY" -m pytest tests/test_smoke.py -q -rs -p no:cacheprovider -k "$1" 2>&1 \
    | grep -v -e UserWarning -e 'warnings.warn'
  return "${PIPESTATUS[0]}"
}

# sanitize TOOL BACKENDS: compute-sanitizer TOOL on the smoke tests of BACKENDS (a pytest -k expression)
sanitize() {
  local tool=$1 backends=$2 cs rc=0 seen
  seen=$(cat "$OUT/sanitizer.log" 2>/dev/null | wc -l)
  {
    echo "===== compute-sanitizer --tool $tool: tests/test_smoke.py -k '$backends'"
    if [ "$DRY" = 1 ]; then
      echo "===== dry run: compute-sanitizer is not run"
    elif ! cs=$(sanitizer); then
      echo "===== compute-sanitizer not found"
      rc=1
    else
      # no caching allocator: every tensor is its own allocation, so an overrun is caught
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 FASTCONV_TRITON_TUNE=0 timeout -k 5 $(( PHASE_LIMIT - 5 )) "$cs" --tool "$tool" \
        --error-exitcode 99 --print-limit 20 "$PY" -m pytest tests/test_smoke.py -q -p no:cacheprovider -k "$backends"
      rc=$?
      echo "===== exit $rc"
    fi
  } >>"$OUT/sanitizer.log" 2>&1
  tail -n +$(( seen + 1 )) "$OUT/sanitizer.log" \
    | grep -E '^([0-9]+ (passed|failed)|=====|=========.*(ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race|Hazard))' | tail -n 8
  return $rc
}

layers() {
  local budget=$(( PHASE_LIMIT - 30 ))
  (( budget < 10 )) && budget=10
  if [ "$DRY" = 1 ]; then
    "$PY" bench/bench_layers.py --device cpu --suite tiny --providers reference,cpu,auto,eager \
      --target-ms 5 --warmup-ms 2 --threads 1 --out "$OUT" --budget-s "$budget"
  elif [ "$MODE" = quick ]; then
    "$PY" bench/bench_layers.py --suite cnn,small-c,depthwise --compile-mode default --target-ms 50 \
      --out "$OUT" --budget-s "$budget"
  else
    # shellcheck disable=SC2086
    "$PY" bench/bench_layers.py ${GPU_CHECK_LAYERS_ARGS:---suite cnn,small-c,depthwise,airbench,vgg,stem --target-ms 50 --kernel-times} \
      --out "$OUT" --budget-s "$budget"
  fi
}

train() {
  if [ "$DRY" = 1 ]; then
    "$PY" bench/bench_train.py --device cpu --batch 8 --warmup 1 --steps 3 --threads 1 \
      --variants fastconv,torch-eager --profile --out "$OUT/train.json"
  elif [ "$MODE" = quick ]; then
    "$PY" bench/bench_train.py --compile-mode default --steps 20 --profile --cuda-graphs --out "$OUT/train.json"
  else
    # default-mode compile: max-autotune of the whole step ran past 45 s on the first H200 run
    "$PY" bench/bench_train.py --compile-mode default --profile --cuda-graphs --out "$OUT/train.json"
  fi
}

# host overhead per call; its table lands in summary.txt (OUTDIR keeps its 8 files), the
# JSON in the scratch folder
overhead() {
  local dir=${SCRATCH:-/tmp/fastconv-gpu-check}/overhead
  if [ "$DRY" = 1 ]; then
    "$PY" bench/bench_overhead.py --device cpu --backend auto --calls 20 --repeats 2 --out "$dir"
  else
    "$PY" bench/bench_overhead.py --backend triton --out "$dir" \
      && "$PY" bench/bench_overhead.py --backend cuda --dtype bf16 --out "$dir-cuda"
  fi
}

# ------------------------------------------------------------------------------ the run

export -f env_report sanitizer build gpu_tests smoke sanitize layers train overhead
export OUT PY DRY MODE ROOT SCRATCH PHASES

if [ "$MODE" = quick ]; then TESTS_MARK="gpu and not slow"; else TESTS_MARK="gpu"; fi
SMOKE_K="cuda or triton or vendor"
if [ "$DRY" = 1 ]; then SMOKE_K="cpu"; fi

# The plan: name, CAP (the most seconds it may take) and NEED (what it needs to be of use; a phase
# leaves the NEED of every later selected phase to them, never less than 20 s for itself: a slow
# build squeezes the later phases, it is not cut short), then the command.
if [ "$MODE" = quick ]; then
  PLAN=(
    "env             30  10 env_report"
    "build          240  60 build"
    "tests           75  40 gpu_tests"
    "smoke           30  10 smoke"
    "memcheck        50  20 sanitize memcheck"
    "layers          80  20 layers"
    "train           45  10 train"
    "overhead        15   5 overhead"
    "autotable       20   0 autotable"
  )
else
  PLAN=(
    "env             30  10 env_report"
    "build          240  60 build"
    "tests          200 100 gpu_tests"
    "smoke           60  20 smoke"
    "memcheck-cuda   60  20 sanitize memcheck cuda"
    "memcheck-triton 75  40 sanitize memcheck triton or vendor"
    "racecheck-cuda  60  20 sanitize racecheck cuda"
    "layers         220  60 layers"
    "train           90  25 train"
    "overhead        20  10 overhead"
    "autotable       20   5 autotable"
  )
fi
selected() {  # env and build always run: every later phase needs them
  [ "$1" = env ] || [ "$1" = build ] || [ -z "$PHASES" ] || [[ ",$PHASES," == *",$1,"* ]]
}
names=()
for row in "${PLAN[@]}"; do read -r n _ <<<"$row"; names+=("$n"); done
if [ -n "$PHASES" ]; then
  for n in ${PHASES//,/ }; do
    if [[ " ${names[*]} " != *" $n "* ]]; then
      echo "gpu_check.sh: --phases: unknown phase '$n' (phases: ${names[*]})" >&2; exit 2
    fi
  done
fi
for i in "${!PLAN[@]}"; do
  read -r name cap _ cmd args <<<"${PLAN[$i]}"
  selected "$name" || continue
  reserve=0
  for later in "${PLAN[@]:$((i + 1))}"; do
    read -r n _ need _ <<<"$later"
    if selected "$n"; then reserve=$(( reserve + need )); fi
  done
  case "$cmd" in
    gpu_tests) args="$TESTS_MARK" ;;
    smoke) args="$SMOKE_K" ;;
    sanitize) [ "$args" = memcheck ] && args="memcheck cuda or triton or vendor" ;;
  esac
  if [ "$cmd" = autotable ]; then
    if [ ! -f "$OUT/results.json" ]; then echo "no results.json: no auto table"; continue; fi
    phase "$name" "$cap" "$reserve" "$PY" bench/autotable.py "$OUT/results.json" --out "$OUT/autotable.json"
  elif [ "$cmd" = sanitize ]; then
    read -r tool backends <<<"$args"
    phase "$name" "$cap" "$reserve" sanitize "$tool" "$backends"
  elif [ -n "$args" ]; then
    phase "$name" "$cap" "$reserve" "$cmd" "$args"
  else
    phase "$name" "$cap" "$reserve" "$cmd"
  fi
  rc=$?
  if [ "$name" = build ] && (( rc != 0 )); then
    echo "the extension is unusable: later phases run with FASTCONV_EXT=off (no rebuild attempts)"
    export FASTCONV_EXT=off
  fi
done
rm -f "$OUT"/*.tmp

echo
echo "=== phases (total $(( SECONDS - T0 ))s, budget ${BUDGET}s)"
printf '%s\n' "${STATUS[@]}"
echo
if [ -f "$OUT/results.json" ] || [ -f "$OUT/train.json" ]; then
  timeout -k 5 60 "$PY" bench/report.py "$OUT" || FAILED=1
fi
echo "gpu_check: $([ "$FAILED" = 0 ] && echo 'all phases ok' || echo 'SOME PHASES FAILED'); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"

exec >&- 2>&-
for _ in $(seq 100); do kill -0 "$TEE_PID" 2>/dev/null || break; sleep 0.1; done  # let tee finish
exit "$FAILED"
