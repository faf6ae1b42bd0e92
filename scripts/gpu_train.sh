#!/usr/bin/env bash
# `mevos train --preset gpu` in one device call on a lent H100/H200, under a hard time limit:
# install mevos, train on the unlabeled DAVIS-2016 train frames, and leave under $OUT what comes
# back: train.log, log.jsonl, summary.json and the weights as float16 in parts of at most 15 MiB
# (model-fp16.pt.partNN; rejoin with `cat model-fp16.pt.part* > model-fp16.pt`).
#
# The frames beside the checkout (../shared) do not travel with a device call, and are over the
# 64 MiB a call carries; pack them once, here, into an ignored folder and carry that:
#   .venv/bin/python scripts/gpu_recipe.py pack ../shared/data/unlabeled/davis2016-train out/gpu-data/davis2016-train
# then, through the device tool:
#   run(command="bash scripts/gpu_train.sh", carry=["out/gpu-data"], timeout_s=480)
#
# Arguments go to `mevos train` after the recipe's own (e.g. --set corr_epochs=4 --max-steps 200).
# Environment: GPU_TRAIN_DATA (default: the first that exists of out/gpu-data/davis2016-train,
# shared/data/unlabeled/davis2016-train, ../shared/data/unlabeled/davis2016-train);
# GPU_TRAIN_SECONDS, the hard limit of the training process (default 400: with install and
# summary the call ends inside 8 minutes); GPU_TRAIN_RUN, the run folder (default under /dev/shm,
# else /tmp: last.pt holds Adam's state, ~320 MB for r18, too big to come back);
# GPU_TRAIN_WEIGHTS=fp16|none; GPU_TRAIN_INSTALL=1|0; PYTHON (default python3); OUT (default
# out/gpu-train where the device tool sets none).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-train}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LIMIT=${GPU_TRAIN_SECONDS:-400}
WEIGHTS=${GPU_TRAIN_WEIGHTS:-fp16}

main() {
    local data="${GPU_TRAIN_DATA:-}"
    if [ -z "$data" ]; then
        for d in out/gpu-data/davis2016-train shared/data/unlabeled/davis2016-train \
                 ../shared/data/unlabeled/davis2016-train; do
            if [ -d "$d" ]; then data=$d; break; fi
        done
    fi
    if [ -z "$data" ] || [ ! -d "$data" ]; then
        echo "gpu_train: no training frames (set GPU_TRAIN_DATA, or pack them into out/gpu-data and carry it)"
        return 2
    fi
    local run="${GPU_TRAIN_RUN:-}"
    if [ -z "$run" ]; then
        if [ -d /dev/shm ] && [ -w /dev/shm ]; then run=/dev/shm/mevos-gpu-run; else run=/tmp/mevos-gpu-run; fi
    fi
    echo "gpu_train: $(date -u +%FT%TZ) data=$data run=$run limit=${LIMIT}s weights=$WEIGHTS"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    if [ "${GPU_TRAIN_INSTALL:-1}" = 1 ]; then
        # --no-build-isolation: the machine has no network for pip to fetch setuptools into a build env.
        if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
            echo "gpu_train: pip install failed; running from the source tree"
            export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
        fi
    fi
    "$PY" -c "import torch, mevos
print('gpu_train: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'mevos', mevos.__version__)" || return 2
    rm -rf "$run"
    mkdir -p "$run"
    local t0 rc
    t0=$(date +%s)
    # SIGTERM at the limit (then SIGKILL 15 s later): last.pt is written atomically every 100 steps
    # and each epoch, so a stopped run still leaves weights to export.
    PYTHONUNBUFFERED=1 timeout -k 15 "$LIMIT" "$PY" -m mevos train "$data" --preset gpu --out "$run" \
        --export "$run/model.pt" --checkpoint-every 100 --log-every 10 "$@"
    rc=$?
    echo; echo "gpu_train: mevos train exited $rc after $(( $(date +%s) - t0 )) s"
    "$PY" scripts/gpu_recipe.py summary "$run" "$OUT" --rc "$rc" --wall "$(( $(date +%s) - t0 ))" \
        --limit "$LIMIT" --weights "$WEIGHTS"
}

main "$@" 2>&1 | tee -a "$OUT/train.log"
