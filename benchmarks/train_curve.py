"""Quality against compute: J&F on the DAVIS-2016 dev sequences of a training run's snapshots.

`mevos train ... --snapshot-every N` writes OUT/snapshots/step<N>.pt; this script scores each one
(R = 0, the coarse mask of pure correspondence, and the runtime's default R) through the Tracker and
the official protocol, beside the training time the snapshot had cost (from its metadata), and
plots J&F against steps and CPU minutes.

  python benchmarks/train_curve.py --run out/xfeat --out benchmarks/results/train_curve.json

Snapshots already in the JSON are not scored again, so it can run beside training and be rerun.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_table import run_variant  # noqa: E402

from mevos.atomic import write_text_atomic  # noqa: E402
from mevos.data.davis import DavisFolder  # noqa: E402
from mevos.model import load_checkpoint  # noqa: E402
from mevos.runtime.backend import TorchBackend  # noqa: E402
from mevos.runtime.tracker import TrackerConfig  # noqa: E402


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(table["points"].values(), key=lambda r: r["step"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, style in (("JF_R0", "R = 0 (coarse mask; the default R)", "o-"), ("JF_default", "default R", "s-")):
        xs = [p["train_minutes"] for p in points if key in p]
        ys = [p[key] for p in points if key in p]
        if xs:
            ax.plot(xs, ys, style, label=f"{label}")
    for name, value in table.get("references", {}).items():
        ax.axhline(value, ls="--", lw=0.8, color="grey")
        ax.text(0.01, value, f"{name} {value:.3f}", va="bottom", fontsize=8, color="grey",
                transform=ax.get_yaxis_transform())
    ax.set_xlabel("training time (CPU minutes, 2 cores)")
    ax.set_ylabel("J&F, 17 DAVIS-2016 dev sequences, short side 240")
    ax.set_title(table.get("title", "cpu-distill run (small student of XFeat), snapshots: quality against compute"),
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder of `mevos train` with snapshots/")
    p.add_argument("--davis", default="../shared/data/davis2016")
    p.add_argument("--short-side", type=int, default=240)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--every", type=int, default=1, help="score every n-th snapshot only (the last one always)")
    p.add_argument("--default-r", action="store_true", help="also score each snapshot with the runtime's default R")
    p.add_argument("--reference", action="append", default=[], metavar="NAME=JF", help="horizontal line on the plot")
    p.add_argument("--out", default="benchmarks/results/train_curve.json")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {"points": {}}
    table.update({
        "what": "J&F (official protocol) of the snapshots of one training run on the DAVIS-2016 dev sequences",
        "run": args.run, "machine": platform.node(), "torch": torch.__version__, "threads": args.threads,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "references": {**table.get("references", {}),
                       **{r.split("=")[0]: float(r.split("=")[1]) for r in args.reference}},
    })
    snaps = sorted((Path(args.run) / "snapshots").glob("step*.pt"))
    chosen = [s for i, s in enumerate(snaps) if i % args.every == args.every - 1 or s == snaps[-1]]
    davis = DavisFolder(args.davis)
    names = list(davis.sequences)
    for snap in [] if args.plot_only else chosen:
        model, meta = load_checkpoint(snap)
        row = table["points"].get(snap.name, {"step": int(meta["steps"]),
                                              "train_minutes": round(float(meta["train_seconds"]) / 60, 2)})
        base = TrackerConfig(short_side=args.short_side)
        todo = [("JF_R0", replace(base, refine_rounds=0))]
        if args.default_r and base.refine_rounds:
            todo.append(("JF_default", base))
        for key, cfg in todo:
            if key in row:
                continue
            t0 = time.perf_counter()
            r = run_variant(TorchBackend(model, device="cpu", precision="fp32"), cfg, davis, names)
            row[key] = r["JF"]
            row[key.replace("JF", "J")] = r["J"]
            row[key.replace("JF", "F")] = r["F"]
            row[f"{key}_seconds"] = round(time.perf_counter() - t0, 1)
            table["points"][snap.name] = row
            print(f"{snap.name}: step {row['step']} {key} {r['JF']:.4f}", flush=True)
            write_text_atomic(out, json.dumps(table, indent=1) + "\n")
    write_text_atomic(out, json.dumps(table, indent=1) + "\n")
    plot(table, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
