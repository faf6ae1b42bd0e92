"""Does mask-embedding learning help? J&F on DAVIS-2016 val of four models (not a test).

(a) copy-the-first-mask baseline; (b) the untrained network (seed 0); (c) correspondence-only
training (phase 1 of a `mevos train` run: OUT/corr_final.pt); (d) correspondence + mask embedding
(the same run continued through the joint phase: OUT/final.pt). (c) and (d) share phase 1, as in
the paper's schedule, so (d) has had more steps than (c): the JSON says how many.

The phase-1 model has never trained its value encoder and decoder, so (c) is also scored with
refine_rounds=0 (the coarse mask A^T Y_r of Eq. 8: pure correspondence propagation, the way
correspondence-only methods segment); (d) is scored both ways too.

  python benchmarks/train_experiment.py --run out/train-small --davis ../shared/data/davis2016
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mevos.model import build_model, load_checkpoint, preset
from mevos.runtime.tracker import TrackerConfig
from mevos.train.evaluate import evaluate_davis

VARIANTS = {
    "b": ("untrained network (small, seed 0)", None, 2),
    "c": ("correspondence only (phase 1)", "corr_final.pt", 2),
    "c_r0": ("correspondence only (phase 1), coarse mask only (refine_rounds=0)", "corr_final.pt", 0),
    "d": ("correspondence + mask embedding (phase 1 + joint phase)", "final.pt", 2),
    "d_r0": ("correspondence + mask embedding, coarse mask only (refine_rounds=0)", "final.pt", 0),
    # The same-steps control: phase 1 continued through the joint epochs with w_seg = 0 (same
    # batches, same learning rates, no clustering), i.e. correspondence only for as many steps as (d).
    "e": ("correspondence only for as many steps as (d) (control run)", "CONTROL/final.pt", 2),
    "e_r0": ("correspondence only for as many steps as (d), coarse mask only (refine_rounds=0)", "CONTROL/final.pt", 0),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="out/train-small", help="run folder of `mevos train` (corr_final.pt, final.pt)")
    p.add_argument("--control", default="out/train-corr-only",
                   help="run folder of the same-steps correspondence-only control (variant e)")
    p.add_argument("--davis", default="../shared/data/davis2016")
    p.add_argument("--short-side", type=int, default=240, help="evaluation resolution (short side, pixels)")
    p.add_argument("--only", default=",".join(["a", *VARIANTS]), help="comma-separated variants to (re)compute")
    p.add_argument("--merge", nargs="*", default=[], help="JSON files of partial runs to merge into --out first")
    p.add_argument("--out", default="benchmarks/results/train_experiment.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("variants", {})
    for extra in args.merge:
        part = json.loads(Path(extra).read_text())
        results["variants"].update(part.get("variants", {}))
        for key in ("sequences", "settings"):
            results.setdefault(key, part.get(key))
    if args.merge:
        _write(out, results, args)
    run = Path(args.run)
    for name in [n for n in args.only.split(",") if n]:
        if name == "a":
            continue  # every evaluation carries the baseline; stored from the first one
        label, ckpt, rounds = VARIANTS[name]
        if ckpt is None:
            model, meta = build_model(preset("small"), seed=0), {"trained": False}
        else:
            ckpt = ckpt.replace("CONTROL/", str(Path(args.control)) + "/") if ckpt.startswith("CONTROL/") else str(run / ckpt)
            model, meta = load_checkpoint(ckpt)
        cfg = TrackerConfig(short_side=args.short_side, refine_rounds=rounds)
        t0 = time.perf_counter()
        r = evaluate_davis(model, args.davis, cfg)
        seconds = time.perf_counter() - t0
        results["variants"][name] = {
            "label": label, "checkpoint": ckpt, "refine_rounds": rounds,
            "JF": r.overall.JF_mean, "J": r.overall.J_mean, "F": r.overall.F_mean,
            "per_sequence_JF": r.per_sequence, "eval_seconds": round(seconds, 1),
            "train_steps": meta.get("steps"), "train_epochs": meta.get("epochs"),
            "train_seconds": meta.get("train_seconds"),
        }
        results["variants"]["a"] = {"label": "copy the first mask (baseline)", "JF": r.baseline.JF_mean,
                                    "J": r.baseline.J_mean, "F": r.baseline.F_mean}
        results["sequences"] = list(r.sequences)
        print(f"{name:5s} J&F {r.overall.JF_mean:.3f} (J {r.overall.J_mean:.3f}, F {r.overall.F_mean:.3f}) "
              f"baseline {r.baseline.JF_mean:.3f}  [{label}, {seconds:.0f} s]", flush=True)
        _write(out, results, args)
    return 0


def _write(out: Path, results: dict, args: argparse.Namespace) -> None:
    results["settings"] = {
        "davis": args.davis, "sequences": len(results.get("sequences", [])),
        "eval_short_side": args.short_side,
        "note": f"frames evaluated at short side {args.short_side} (not the full 480p) to fit the CPU budget; "
                "masks are scored at the full ground-truth resolution by the official DAVIS protocol",
        "tracker": "top_k 10, temperature 0.05, mem_frames 20 (paper defaults); refine_rounds per variant",
        "device": "cpu", "torch": torch.__version__, "python": platform.python_version(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
