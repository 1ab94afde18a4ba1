#!/usr/bin/env bash
# One call on a GPU machine: build and install cbbench with the CUDA kernels, run the CUDA tests,
# compute-sanitizer memcheck on every kernel path, the GPU speed benchmark, racecheck on one case per
# kernel, a second build with CBBENCH_CUDA_ARCH set to an older architecture (its PTX must run here:
# tests/test_cuda_triggers.py), then the harness's 200-epoch CIFAR-10-LT timing on fake CIFAR-sized
# data (the later stages are the ones to lose if time runs out); print a summary table last. Every stage runs under a
# time limit and the script keeps going after a failing stage; it exits non-zero if any stage failed.
#
#   bash scripts/gpu_check.sh                 # every stage; logs and results go to $OUT (default: a temp dir)
#   bash scripts/gpu_check.sh build harness   # only the named stages, in the order above
#
# Budget: GPU_CHECK_BUDGET_S (default 540 s) for the whole script; the benchmark gets what is left and
# runs the quick suite when less than 330 s remain (BENCH_ARGS overrides, e.g. BENCH_ARGS="" for full).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d -t cbbench-gpu-check.XXXX)}"
mkdir -p "$OUT"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

ALL_STAGES=(build info tests memcheck bench racecheck archbuild harness)
for arg in "$@"; do
  [[ " ${ALL_STAGES[*]} " == *" $arg "* ]] || { echo "unknown stage '$arg'; stages: ${ALL_STAGES[*]}" >&2; exit 2; }
done
WANT=("$@")
want() {  # want STAGE: no arguments run every stage, else only the named ones
  ((${#WANT[@]} == 0)) && return 0
  [[ " ${WANT[*]} " == *" $1 "* ]]
}

NAMES=()
RCS=()
TIMES=()

# stage NAME LIMIT_S CMD...: run CMD with a time limit, log to $OUT/NAME.log, record rc and seconds.
stage() {
  local name=$1 limit=$2 rc t0=$SECONDS
  shift 2
  local left=$((BUDGET - SECONDS - 15))
  if ((limit > left)); then limit=$left; fi
  if ((limit < 10)); then
    echo "=== $name: skipped, out of time budget ==="
    NAMES+=("$name"); RCS+=("skip"); TIMES+=(0)
    return 0
  fi
  echo "=== $name (limit ${limit}s) ==="
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  ((rc == 124 || rc == 137)) && echo "$name: timed out after ${limit}s" | tee -a "$OUT/$name.log"
  NAMES+=("$name"); RCS+=("$rc"); TIMES+=($((SECONDS - t0)))
  echo "=== $name: rc=$rc in $((SECONDS - t0))s ==="
}

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer || true)" /usr/local/cuda/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
           /usr/local/cuda-*/compute-sanitizer/compute-sanitizer; do
    if [[ -n "$c" && -x "$c" ]]; then echo "$c"; return 0; fi
  done
  return 1
}

sanitize() {  # sanitize TOOL ARGS...: compute-sanitizer without torch's caching allocator
  local tool=$1 san
  shift
  if ! san=$(find_sanitizer); then
    echo "compute-sanitizer not found (PATH, /usr/local/cuda*/)"
    return 1
  fi
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$san" --tool "$tool" --error-exitcode 97 --print-limit 20 \
    "$PY" scripts/sanitizer_cases.py "$@"
}

bench() {
  if ! "$PY" -c "import cbbench.bench.speed" 2>/dev/null; then
    echo "cbbench.bench.speed is missing or does not import; no GPU benchmark"
    "$PY" -c "import cbbench.bench.speed" || true
    return 1
  fi
  # shellcheck disable=SC2086  # BENCH_ARGS is a word list
  "$PY" -m cbbench.bench.speed --device cuda --out "$OUT/bench" ${BENCH_ARGS:-}
}

summary() {
  echo
  echo "== cbbench GPU check: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) | logs in $OUT"
  printf '%-12s %6s %6s\n' stage rc seconds
  local i
  for i in "${!NAMES[@]}"; do printf '%-12s %6s %6s\n' "${NAMES[$i]}" "${RCS[$i]}" "${TIMES[$i]}"; done
  grep -h "^harness:" "$OUT/harness.log" 2>/dev/null || true
  [[ -f "$OUT/bench/speed.json" ]] && "$PY" - "$OUT/bench/speed.json" <<'EOF' || true
import json, sys
res = json.load(open(sys.argv[1]))
rows = [r for r in res["rows"] if r["impl"] in ("cuda", "cuda_graph")]
print(f"\ncbbench CUDA kernels, fwd+bwd (copy bandwidth {res['copy_gbps']:.0f} GB/s; "
      "targets: >= 0.80 of copy, >= 2x compile on CE, >= 4x on focal, <= 0.040 ms at 256x1000)")
print(f"{'loss':8} {'shape':>14} {'dtype':>9} {'impl':>10} {'ms':>9} {'of copy':>8} {'vs compile':>10} {'vs eager':>9}  status")
for r in rows:
    f = lambda k, spec: format(r[k], spec) if r.get(k) is not None else "-"
    print(f"{r['loss']:8} {r['shape']:>14} {r['dtype']:>9} {r['impl']:>10} {f('fwd_bwd_ms', '.3f'):>9} "
          f"{f('frac_copy_fwd_bwd', '.2f'):>8} {f('speedup_vs_compile', '.2f'):>10} {f('speedup_vs_eager', '.2f'):>9}  "
          f"{r['status']} {r.get('note', '')[:40]}")
EOF
}

build() {  # cbbench with the CUDA kernels, then any carried wheels (scripts/fetch_gpu_wheels.sh)
  "$PY" -m pip install --no-build-isolation --no-deps -v -e . || return 1
  if compgen -G "gpu-wheels/*.whl" >/dev/null; then
    "$PY" -m pip install --no-deps --no-index gpu-wheels/*.whl || return 1
  else
    echo "no gpu-wheels/: the Liger-Kernel peer will be skipped (run scripts/fetch_gpu_wheels.sh and carry gpu-wheels/)"
  fi
}

harness() {  # the harness target: 200 epochs of CIFAR-10-LT IF 100 in <= 60 s (fake images of CIFAR's sizes)
  "$PY" -c "from cbbench.harness.datasets import write_fake_cifar; write_fake_cifar('$OUT/fake-cifar')" || return 1
  "$PY" -m cbbench train --dataset cifar10-lt --data-dir "$OUT/fake-cifar" --method cb_focal --device cuda \
    --out "$OUT/train" || return 1
  "$PY" - "$OUT/train/result.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["config"]
print(f"harness: {c['epochs']} epochs of {r['dataset']} ({c['n_train']} images, accel {c['accel_used']}, "
      f"loss backend {c['loss_backend']}): train_time_s = {r['train_time_s']:.1f} (target <= 60)")
EOF
}

export -f find_sanitizer sanitize bench build harness
export OUT PY
export CBBENCH_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.log" || true

if want build; then stage build 300 bash -c build; fi
if want info; then stage info 60 "$PY" -m cbbench.info; fi
if want tests; then
  stage tests 300 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" \
    -k "not test_build_with_cbbench_cuda_arch" tests/
fi
if want memcheck; then stage memcheck 150 bash -c 'sanitize memcheck'; fi
if want bench; then
  # The full suite compiles a torch.compile peer per case (minutes); with less time left, the quick one.
  if [[ -z "${BENCH_ARGS+x}" ]]; then
    if ((BUDGET - SECONDS < 330)); then BENCH_ARGS="--quick"; else BENCH_ARGS=""; fi
  fi
  export BENCH_ARGS
  echo "benchmark arguments: '${BENCH_ARGS}' ($((BUDGET - SECONDS))s of the budget left)"
  stage bench 400 bash -c bench
fi
if want racecheck; then stage racecheck 90 bash -c 'sanitize racecheck --quick'; fi
# a whole extension build (minutes): CBBENCH_CUDA_ARCH adds to TORCH_CUDA_ARCH_LIST and embeds PTX
if want archbuild; then
  stage archbuild 420 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider tests/test_cuda_triggers.py \
    -k test_build_with_cbbench_cuda_arch
fi
# last: about 100 s (data, graph capture, 200 epochs, evaluation), run when the budget still allows
if want harness; then stage harness 150 bash -c harness; fi

summary | tee "$OUT/summary.txt"
# A stage skipped for lack of budget shows as "skip" in the table and does not fail the run.
for rc in "${RCS[@]}"; do
  [[ "$rc" == 0 || "$rc" == skip ]] || exit 1
done
exit 0
