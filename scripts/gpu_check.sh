#!/usr/bin/env bash
# The GPU checks, in one device call on a lent GPU, each step under its own time limit:
#   1. pytest tests/kernels -k cuda        (NVRTC compile, dispatch, fused kernels against the reference)
#   2. python benchmarks/bench_affinity.py (fused vs dense vs chunked top-k affinity, 240p-720p)
#   3. the training recipe, scripts/gpu_train.sh, on a shortened schedule: 4 + 2 epochs (264
#      steps, both phases and one clustering, ~2 min), stopped at GPU_TRAIN_SECONDS (165)
# Worst case (every limit hit) 60 + 120 + 90 + 225 s = 8.3 min; about 4 when nothing hangs. The full
# recipe is scripts/gpu_train.sh alone, in its own call. Outputs under
# $OUT (at most 8 files come back): check.log, pytest.xml, bench/affinity_<gpu>.json and .png,
# train/train.log, train/log.jsonl, train/summary.json.
#
# Pack the frames once, here (see scripts/gpu_train.sh), then through the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=["out/gpu-data"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

declare -a RESULTS=()

step() {  # step NAME SECONDS COMMAND...: run under a time limit, record the outcome
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    RESULTS+=("$name: exit $rc in $(( $(date +%s) - t0 )) s$([ "$rc" = 124 ] && echo ' (time limit)')")
    echo "=== $name: exit $rc"
}

main() {
    echo "gpu_check: $(date -u +%FT%TZ) on $(hostname)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # --no-build-isolation: the machine has no network for pip to fetch setuptools into a build env.
    if [ "${GPU_TRAIN_INSTALL:-1}" = 1 ]; then
        step install 60 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
    fi
    if ! "$PY" -c "import mevos" 2>/dev/null; then
        echo "gpu_check: mevos is not installed; running from the source tree"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    step pytest 120 "$PY" -m pytest -q -p no:cacheprovider tests/kernels -k cuda --junitxml="$OUT/pytest.xml"
    step bench_affinity 90 "$PY" benchmarks/bench_affinity.py --out "$OUT/bench"
    # gpu_train.sh keeps its own (inner) limit; this outer one only guards against a hang after it.
    local limit=${GPU_TRAIN_SECONDS:-165}
    step train $(( limit + 60 )) env OUT="$OUT/train" GPU_TRAIN_INSTALL=0 GPU_TRAIN_SECONDS="$limit" \
        GPU_TRAIN_WEIGHTS=none bash scripts/gpu_train.sh \
        --set corr_epochs=4 --set joint_epochs=2 --set lr_step_epochs=2 --set recluster_every=2
    echo "=== gpu_check summary"
    printf '  %s\n' "${RESULTS[@]}"
}

main 2>&1 | tee "$OUT/check.log"
