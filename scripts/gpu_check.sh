#!/usr/bin/env bash
# The GPU checks: the first command of any session that has a GPU lent, in one device call of at
# most 8 minutes, each step under its own time limit:
#   1. pytest: the CUDA parity tests (tests/kernels: NVRTC compile, dispatch, the fused kernels
#      against the reference; tests/runtime/test_fast_tracker.py: the fast tracker on CUDA)
#   2. benchmarks/bench_affinity.py: fused vs dense vs chunked top-k affinity, 240p-720p
#   3. the GPU `mevos bench`: stages and end to end of baseline / torch / fast at 240p and 480p,
#      the fast tracker's goal configuration with its ablations (no gRPC, no DAVIS J&F unless the
#      shared DAVIS folder is there)
# Worst case (every limit hit) 60 + 120 + 90 + 200 s = 7.8 min. Every result is left under
# $OUT/benchmarks/results/ (the names the committed record uses: copy them into
# benchmarks/results/ and commit), with check.log and pytest.xml beside them.
#
# Through the device tool:  run(command="bash scripts/gpu_check.sh", timeout_s=500)
# The full training recipe is scripts/gpu_train.sh, in its own call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
RESULTS_DIR="$OUT/benchmarks/results"
mkdir -p "$RESULTS_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

declare -a SUMMARY=()

step() {  # step NAME SECONDS COMMAND...: run under a time limit, record the outcome
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    SUMMARY+=("$name: exit $rc in $(( $(date +%s) - t0 )) s$([ "$rc" = 124 ] && echo ' (time limit)')")
    echo "=== $name: exit $rc"
}

main() {
    echo "gpu_check: $(date -u +%FT%TZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # --no-build-isolation: the machine has no network for pip to fetch setuptools into a build env.
    if [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
        step install 60 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
    fi
    if ! "$PY" -c "import mevos" 2>/dev/null; then
        echo "gpu_check: mevos is not installed; running from the source tree"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    step pytest 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/kernels tests/runtime/test_fast_tracker.py \
        -k "cuda or compile or dispatch or fast" --junitxml="$RESULTS_DIR/gpu_check_pytest.xml"
    step bench_affinity 90 "$PY" benchmarks/bench_affinity.py --out "$RESULTS_DIR"
    local davis=(--no-jf)
    [ -d ../shared/data/davis2016 ] && davis=(--davis ../shared/data/davis2016 --no-jf)
    [ -d shared/data/davis2016 ] && davis=(--davis shared/data/davis2016)
    step mevos_bench 200 "$PY" -m mevos.cli bench --plan full --device cuda --resolutions 240p,480p --objects 1 \
        --mem-frames 5,20 --variants baseline,torch,fast --no-grpc --repeat 10 --fast-frames 100 "${davis[@]}" \
        --tag gpu_check --out "$RESULTS_DIR"
    echo "=== gpu_check summary"
    printf '  %s\n' "${SUMMARY[@]}"
    ls -l "$RESULTS_DIR"
}

main 2>&1 | tee "$RESULTS_DIR/gpu_check.log"
