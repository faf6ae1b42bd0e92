"""Per-graph latency of the three exported graphs (encode_key, encode_value, decode), by backend.

CPU: torch fp32 and ONNX Runtime (CPU execution provider) fp32. Where a CUDA GPU is present, also
torch fp32 and fp16 (autocast) on CUDA, and ONNX Runtime's CUDA execution provider when the
installed onnxruntime has it. At 240p (240x432 padded input) and 480p (480x856), with `--objects`
objects for encode_value and decode; weights are the untrained small preset unless --checkpoint.

    python benchmarks/bench_graphs.py                       # small preset, both sizes, 2 objects
    python benchmarks/bench_graphs.py --preset r18 --repeat 10

Not a test. Each measurement: --warmup untimed calls, then --repeat timed calls, the device
synchronised before each clock read; reported as median and p90 milliseconds. Writes
benchmarks/results/graphs_<device>.json (device: cpu, or the CUDA GPU's name).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mevos.model.graphs import GRAPH_NAMES, graph_specs  # noqa: E402
from mevos.export.onnx import export_onnx  # noqa: E402
from mevos.model import build_model, load_checkpoint, preset  # noqa: E402
from mevos.runtime.backend import TorchBackend  # noqa: E402

#: name -> padded network input (H, W): 854x480 and 427x240 frames padded to multiples of 8.
SIZES = {"240p": (240, 432), "480p": (480, 856)}


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> list[float]:
    """Milliseconds of `repeat` calls after `warmup` untimed ones."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"median_ms": round(statistics.median(s), 3), "p90_ms": round(s[min(len(s) - 1, int(0.9 * len(s)))], 3),
            "min_ms": round(s[0], 3), "runs": len(s)}


def backends(model: Any, export_dir: Path, device: str) -> dict[str, Any]:
    """label -> backend for everything this machine can run."""
    out: dict[str, Any] = {}
    if device == "cpu":
        out["torch-cpu-fp32"] = TorchBackend(model, "cpu", "fp32")
    else:
        out["torch-cuda-fp32"] = TorchBackend(model, "cuda", "fp32")
        out["torch-cuda-fp16"] = TorchBackend(model, "cuda", "fp16")
    try:
        import onnxruntime as ort

        from mevos.export.manifest import load_onnx_export
        from mevos.runtime.onnxruntime_backend import OnnxRuntimeBackend

        export = load_onnx_export(export_dir)
        if device == "cpu":
            out["onnxruntime-cpu-fp32"] = OnnxRuntimeBackend(export, "cpu", threads=torch.get_num_threads())
        elif "CUDAExecutionProvider" in ort.get_available_providers():
            out["onnxruntime-cuda-fp32"] = OnnxRuntimeBackend(export, "cuda")
    except ImportError:
        print("onnxruntime is not installed: torch only", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="model preset when no --checkpoint (default small)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to time instead of untrained weights")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present, else cpu)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--objects", type=int, default=2, help="objects for encode_value/decode (default 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="output JSON (default benchmarks/results/graphs_<device>.json)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else build_model(preset(args.preset), seed=0)
    dev = torch.device(device)
    load_start = list(os.getloadavg())
    specs = graph_specs(model.config)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = export_onnx(model, Path(tmp) / "export").folder
        runs = backends(model, export_dir, device)
        # One backend at a time: interleaved, one library's idle worker threads slow the other's.
        for label, b in runs.items():
            for size in args.sizes:
                h, w = SIZES[size]
                for name in GRAPH_NAMES:
                    objects = 1 if name == "encode_key" else args.objects
                    gen = torch.Generator().manual_seed(0)
                    shapes = specs[name].input_shapes(h, w, objects).values()
                    inputs = [torch.rand(s, generator=gen).to(dev) for s in shapes]
                    fn = getattr(b, name)
                    row = {"backend": label, "graph": name, "size": size, "input": [h, w], "objects": objects,
                           **summary(timed(lambda fn=fn, x=inputs: fn(*x), dev, args.warmup, args.repeat))}
                    results.append(row)
                    print(f"{size:5s} {name:13s} {label:22s} {row['median_ms']:9.2f} ms (p90 {row['p90_ms']:.2f})",
                          flush=True)

    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    tag = "cpu" if dev.type == "cpu" else re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"graphs_{tag}.json"
    versions = {"torch": str(torch.__version__)}
    for pkg in ("onnxruntime", "onnx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    report = {
        "benchmark": "per-graph latency (benchmarks/bench_graphs.py)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model.config.name,
        "weights": args.checkpoint or "untrained (seed 0)",
        "device": device_name,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": list(os.getloadavg()),
                         "note": "1/5/15-minute load of the machine, shared with other work; "
                                 "a load above the core count makes the figures slower and noisier"},
        "versions": versions,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
