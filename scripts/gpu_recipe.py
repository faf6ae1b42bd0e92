"""Helpers of the GPU training recipe (scripts/gpu_train.sh).

    python scripts/gpu_recipe.py pack SRC DST      # here: the unlabeled frames, small enough to carry
    python scripts/gpu_recipe.py summary RUN OUT   # there: weights, log and summary into OUT

`pack` re-encodes the frames under SRC as JPEG (quality 80) into DST, keeping the folder layout,
and fails when they come to more than --budget-mib: the device tool carries at most 64 MiB a call,
the repository included, and the 1,452 frames of davis2016-train are 67 MB at quality 90
(about 46 MiB at 80). The frame size is unchanged.

`summary` runs after `mevos train` ends or is stopped: it makes the weights-only export from
RUN/last.pt when the run was cut short (no RUN/model.pt), checks that it loads (weights_only),
copies RUN/log.jsonl into OUT, writes OUT/summary.json (schedule reached, step times per phase,
losses, clustering, GPU, weights' checksums) and, with --weights fp16, a float16 copy of the
weights split into OUT/model-fp16.pt.partNN files of at most 15 MiB (each file that comes back
from the device is at most 16 MiB; the float32 weights, 105 MiB for r18, are over the 64 MiB that
come back in all). Rejoin: `cat model-fp16.pt.part* > model-fp16.pt`; it loads like any
checkpoint (the weights are cast back to float32 on load).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PART_BYTES = 15 * 2**20
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def pack(src: Path, dst: Path, quality: int, budget_mib: float) -> int:
    from PIL import Image

    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"pack: no image under {src}", file=sys.stderr)
        return 2
    total = 0
    for p in files:
        out = dst / p.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(p) as im:
            im.convert("RGB").save(out, "JPEG", quality=quality, optimize=True)
        total += out.stat().st_size
    mib = total / 2**20
    print(f"pack: {len(files)} frames, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB -> "
          f"{mib:.1f} MiB in {dst} (JPEG quality {quality})")
    if mib > budget_mib:
        print(f"pack: {mib:.1f} MiB is over the {budget_mib} MiB budget; lower --quality", file=sys.stderr)
        return 1
    return 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return records


def _phases(steps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in ("corr", "joint"):
        rows = [r for r in steps if r.get("phase") == phase]
        if not rows:
            continue
        sec = [r["sec_per_step"] for r in rows if "sec_per_step" in r]
        loss_keys = [k for k in ("total", "short", "long", "seg", "distill") if k in rows[-1]]
        out[phase] = {
            "last_step": rows[-1]["step"],
            "logged_steps": len(rows),
            "sec_per_step_median": round(statistics.median(sec), 4) if sec else None,
            "sec_per_step_max": round(max(sec), 4) if sec else None,
            "first": {k: round(rows[0][k], 4) for k in loss_keys if k in rows[0]},
            "last": {k: round(rows[-1][k], 4) for k in loss_keys},
        }
    return out


def _device() -> dict[str, Any]:
    import torch

    d: dict[str, Any] = {"torch": str(torch.__version__), "cuda": torch.version.cuda,
                         "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    return d


def _fp16_copy(model: Any, meta: dict[str, Any], dst: Path) -> float:
    """Write `model` with its floating tensors in float16 to dst; returns the largest |key
    difference| of the two on one random image (a check that the copy still computes the same)."""
    import copy

    import torch

    from mevos.model.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(dst, copy.deepcopy(model).half(), {**meta, "weights_dtype": "float16 (cast to float32 on load)"})
    half, _ = load_checkpoint(dst)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (model.encode_key(x)[0] - half.encode_key(x)[0]).abs().max().item()


def _split(path: Path, out: Path) -> list[dict[str, Any]]:
    parts = []
    with open(path, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(PART_BYTES), b"")):
            part = out / f"{path.name}.part{i:02d}"
            part.write_bytes(block)
            parts.append({"file": part.name, "bytes": len(block)})
    return parts


def summary(run: Path, out: Path, rc: int, wall: float, limit: float, weights: str) -> int:
    from mevos.errors import MevosError
    from mevos.model.checkpoint import load_checkpoint, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    log = _read_log(run / "log.jsonl")
    if (run / "log.jsonl").is_file():
        shutil.copyfile(run / "log.jsonl", out / "log.jsonl")
    start = next((r for r in log if r.get("event") == "start"), {})
    steps = [r for r in log if r.get("event") == "step"]
    end = next((r for r in reversed(log) if r.get("event") == "end"), None)
    cfg = start.get("config", {})
    per_epoch = start.get("steps_per_epoch")
    planned = per_epoch * (cfg.get("corr_epochs", 0) + cfg.get("joint_epochs", 0)) if per_epoch else None
    report: dict[str, Any] = {
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_exit_code": rc,
        "stopped_by_time_limit": rc in (124, 137),
        "train_wall_seconds": round(wall, 1),
        "train_time_limit_seconds": limit,
        "completed_schedule": end is not None and planned is not None and end.get("step") == planned,
        "steps": end["step"] if end else (steps[-1]["step"] if steps else 0),
        "planned_steps": planned,
        "steps_per_epoch": per_epoch,
        "train_seconds": end.get("seconds") if end else None,
        "videos": start.get("videos"), "frames": start.get("frames"),
        "config": {k: cfg[k] for k in ("model", "batch_size", "crop_size", "scale_min", "scale_max",
                                       "clips_per_video", "corr_epochs", "joint_epochs", "lr", "lr_step_epochs",
                                       "joint_lr", "recluster_every", "precision") if k in cfg},
        "phases": _phases(steps),
        "clustering": [{k: v for k, v in r.items() if k not in ("time", "event")}
                       for r in log if r.get("event") == "cluster"],
        "device": _device(),
    }
    code = 0 if rc == 0 else 1
    export = run / "model.pt"
    try:
        if not export.is_file() and (run / "last.pt").is_file():
            model, meta = load_checkpoint(run / "last.pt")
            save_checkpoint(export, model, {**meta, "note": "exported from last.pt: the run stopped early"})
            report["weights_from"] = "last.pt (the run stopped before its end)"
        if export.is_file():
            model, meta = load_checkpoint(export)  # weights_only load + strict shape check
            report["steps"] = meta.get("steps", report["steps"])  # the log has every log_every-th step only
            report["weights"] = {"run_file": str(export), "bytes": export.stat().st_size, "sha256": _sha256(export),
                                 "loads": True, "steps": meta.get("steps"), "trained": meta.get("trained")}
            if weights == "fp16":
                half = run / "model-fp16.pt"
                diff = _fp16_copy(model, meta, half)
                report["weights_fp16"] = {"bytes": half.stat().st_size, "sha256": _sha256(half),
                                          "key_max_abs_diff_vs_fp32": diff, "parts": _split(half, out),
                                          "rejoin": "cat model-fp16.pt.part* > model-fp16.pt"}
        else:
            report["weights"] = None
            code = 1
    except MevosError as exc:
        report["weights_error"] = str(exc)
        code = 1
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("train_exit_code", "completed_schedule", "steps", "planned_steps",
                                             "train_seconds", "phases", "device")}, indent=1))
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="re-encode unlabeled frames small enough to carry to the device")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--budget-mib", type=float, default=52.0)
    s = sub.add_parser("summary", help="weights, log and summary of a finished or stopped run")
    s.add_argument("run", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--rc", type=int, default=0, help="exit code of the training process")
    s.add_argument("--wall", type=float, default=0.0, help="its wall-clock seconds")
    s.add_argument("--limit", type=float, default=0.0, help="its time limit, seconds")
    s.add_argument("--weights", choices=["fp16", "none"], default="fp16")
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        return pack(a.src, a.dst, a.quality, a.budget_mib)
    return summary(a.run, a.out, a.rc, a.wall, a.limit, a.weights)


if __name__ == "__main__":
    raise SystemExit(main())
