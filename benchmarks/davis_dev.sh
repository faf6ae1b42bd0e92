#!/usr/bin/env bash
# Segment every DAVIS-2016 dev sequence with `mevos segment` (default weights and settings, plus any
# extra flags given), score them with `mevos eval`, and write a per-sequence JSON table beside the
# copy-the-first-mask baseline and the J of each sequence's last frame.
#
#   bash benchmarks/davis_dev.sh OUT [segment flags...]
#   bash benchmarks/davis_dev.sh out/davis-dev-240 --short-side 240
set -euo pipefail
OUT=${1:?usage: davis_dev.sh OUT [mevos segment flags]}; shift
DAVIS=${DAVIS:-../shared/data/davis2016}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT/results"
start=$(date +%s)
for seq in $(cat "$DAVIS/sequences.txt"); do
  if [ -f "$OUT/results/$seq/.done" ]; then continue; fi  # resumable
  "$PY" -m mevos segment "$DAVIS/JPEGImages/480p/$seq" --mask "$DAVIS/Annotations/480p/$seq/00000.png" \
      --out "$OUT/results/$seq" --force --overlay none "$@" 2>>"$OUT/segment.log"
  touch "$OUT/results/$seq/.done"
  echo "$seq done ($(( $(date +%s) - start )) s)"
done
"$PY" -m mevos eval --davis "$DAVIS" --results "$OUT/results" --out "$OUT/" | tee "$OUT/eval.txt"
"$PY" - "$OUT" "$DAVIS" "$*" <<'PY'
import csv, json, platform, sys
from pathlib import Path
import numpy as np
import torch
from mevos.eval.evaluate import read_label_png
out, davis, flags = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rows = {}
for r in csv.DictReader(open(out / "per_object.csv")):
    name = r.pop(next(iter(r)))
    seq = name.rsplit("_", 1)[0]
    rows[seq] = {k: float(v) for k, v in r.items()}
    rows[seq]["JF_mean"] = (rows[seq]["J_mean"] + rows[seq]["F_mean"]) / 2
for seq in rows:
    gts = sorted((davis / "Annotations/480p" / seq).glob("*.png"))
    pred = read_label_png(out / "results" / seq / gts[-1].name) > 0
    gt = read_label_png(gts[-1]) > 0
    rows[seq]["J_last_frame"] = float((pred & gt).sum() / max(1, (pred | gt).sum()))
glob = {}
for r in csv.DictReader(open(out / "global.csv")):
    name = r.pop(next(iter(r)))
    glob[name] = {k: float(v) for k, v in r.items()}
report = {"what": "mevos segment (default weights" + (f", flags: {flags}" if flags else "") + ") on the DAVIS-2016 dev sequences, scored by mevos eval",
          "command": f"bash benchmarks/davis_dev.sh {out} {flags}".strip(), "machine": platform.node(), "torch": torch.__version__,
          "global": glob, "per_sequence": rows}
(out / "table.json").write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps({k: round(v.get("JF_mean", 0), 4) for k, v in glob.items()}))
PY
