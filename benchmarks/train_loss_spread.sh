#!/usr/bin/env bash
# The spread of train_throughput.py's "same loss" check: the joint phase's fp32 eval loss of the
# weights reached after 3 + 40 steps, for the code before (a worktree of 6d75fce, as
# train_throughput.py makes it) and this tree, each at 1 and 2 torch threads (the thread count
# changes only the order of float sums). All four are scored on the same pseudo masks (the first
# measurement's) and the same fixed batches. Prints one line per measurement.
#   bash benchmarks/train_loss_spread.sh [BEFORE_TREE]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BEFORE=${1:-/tmp/mevos-before}
DATA=${DATA:-$REPO/../shared/data/unlabeled/davis2016-train}
LABELS=$(mktemp -u /tmp/mevos-spread-labels.XXXXXX.pt)
for spec in "$BEFORE 1" "$BEFORE 2" "$REPO 2" "$REPO 1"; do
  set -- $spec; tree=$1; th=$2
  (cd $tree && PYTHONPATH=$tree PYTHONWARNINGS=ignore "$REPO/.venv/bin/python" "$REPO/benchmarks/train_throughput.py" --child joint --preset cpu --data "$DATA" --steps 40 --warmup 3 --eval-batches 8 --threads $th --eval-labels "$LABELS" 2>/dev/null | tail -1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('$tree', $th, {k: round(v,5) for k,v in d['eval_fp32'].items()})")
done
rm -f "$LABELS"
