"""Top-k affinity + readout per frame: the fused CUDA kernel against the PyTorch reference.

Methods: `dense` (reference.dense_topk_affinity: the full P x T*P affinity, then torch.topk),
`chunked` (reference.topk_affinity, chunk_size 1024) and `fused` (mevos.kernels.fused, CUDA only).
One frame = top-k affinity of the query frame's keys over T memory frames, then the readout of
the objects' values (O x 512 channels) and masks (O channels), as the tracker does.

    python benchmarks/bench_affinity.py                     # CUDA: 240p/480p/720p x 5/21 frames x 1/4 objects
    python benchmarks/bench_affinity.py --device cpu        # the reference only, small sizes

Writes benchmarks/results/affinity_<device>.json and .png (a GPU run is named after the GPU).
Reported: ms per frame (median of --repeat timed runs after --warmup untimed ones, the device
synchronised before each clock read), the top-k part's achieved TFLOP/s against the similarity
GEMM (2 * P * T*P * C FLOP) and the GEMM's time at the GPU's datasheet tensor-core peak, and the
peak memory allocated above the inputs (CUDA only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mevos.kernels import reference  # noqa: E402

#: Frame height x width -> feature grid at output stride 8.
SIZES = {"120p": (120, 214), "240p": (240, 427), "480p": (480, 854), "720p": (720, 1280)}
#: Dense fp16 tensor-core peak (TFLOP/s, datasheet, no sparsity), matched on the device name.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]
VALUE_DIM = 512


def grid_of(size: str) -> tuple[int, int]:
    h, w = SIZES[size]
    return math.ceil(h / 8), math.ceil(w / 8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def methods(device: torch.device, chunk: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (top-k fn, readout fn), all with the reference's signatures."""
    out: dict[str, tuple[Callable, Callable]] = {
        "dense": (
            lambda q, m, **kw: reference.dense_topk_affinity(q, m, **kw),
            lambda w, i, v: reference.readout(w, i, v, chunk_size=w.shape[0]),
        ),
        "chunked": (
            lambda q, m, **kw: reference.topk_affinity(q, m, chunk_size=chunk, **kw),
            lambda w, i, v: reference.readout(w, i, v, chunk_size=chunk),
        ),
    }
    if device.type == "cuda":
        from mevos.kernels import fused

        out["fused"] = (fused.topk_affinity, fused.readout)
    return out


def run_one(name, fns, size, T, objects, args, device, dtype) -> dict:
    grid = grid_of(size)
    P = grid[0] * grid[1]
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(P, args.key_dim, generator=g), dim=1).to(device, dtype)
    m = torch.nn.functional.normalize(torch.randn(T, P, args.key_dim, generator=g), dim=1).to(device, dtype)
    values = torch.randn(T * P, objects * VALUE_DIM, generator=g).to(device, dtype)
    masks = torch.rand(T * P, objects, generator=g).to(device, dtype)
    pinned = torch.zeros(T, dtype=torch.bool)
    pinned[0] = True
    kw = dict(k=args.k, temperature=args.temperature, grid=grid, pinned=pinned, radius=args.radius)
    topk, read = fns
    row = dict(size=size, grid=list(grid), mem_frames=T, objects=objects, method=name)
    flop = 2.0 * P * T * P * args.key_dim
    row["gemm_flop"] = flop
    try:
        sync(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        holder: dict = {}

        def do_topk():
            holder["wi"] = topk(q, m, **kw)

        def do_frame():
            w, i = topk(q, m, **kw)
            read(w, i, values)
            read(w, i, masks)

        t_topk = timed(do_topk, device, args.warmup, args.repeat)
        w, i = holder["wi"]
        t_read = timed(lambda: (read(w, i, values), read(w, i, masks)), device, args.warmup, args.repeat)
        t_frame = timed(do_frame, device, 0 if args.repeat > 1 else args.warmup, args.repeat)
        if device.type == "cuda":
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
        row.update(
            status="ok",
            ms_per_frame=statistics.median(t_frame),
            topk_ms=statistics.median(t_topk),
            readout_ms=statistics.median(t_read),
            frame_ms_all=[round(t, 4) for t in t_frame],
        )
        row["topk_tflops"] = flop / (row["topk_ms"] * 1e-3) / 1e12
    except torch.OutOfMemoryError as exc:
        row.update(status="out of memory", error=str(exc).splitlines()[0])
    finally:
        holder = {}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("numpy", "cuda-core", "cuda-bindings", "nvidia-cuda-nvrtc", "mevos"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["torch_cuda"] = torch.version.cuda
    return out


def device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    peak = next((p for key, p in PEAK_TFLOPS if key in props.name), None)
    return {
        "type": "cuda",
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "assumed_peak_tflops_fp16_dense": peak,
    }


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    rows = [r for r in report["results"] if r["status"] == "ok"]
    configs = list(dict.fromkeys((r["size"], r["mem_frames"], r["objects"]) for r in rows))
    names = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(configs) * max(1, len(names)) / 2), 4.5))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        ys = [next((r["ms_per_frame"] for r in rows if (r["size"], r["mem_frames"], r["objects"]) == c and r["method"] == name), float("nan")) for c in configs]
        ax.bar([i + j * width for i in range(len(configs))], ys, width, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(configs))])
    ax.set_xticklabels([f"{s}\nT={t} O={o}" for s, t, o in configs], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per frame (top-k + readouts)")
    dev = report["device"]
    ax.set_title(f"top-k affinity, k={report['settings']['k']}, {report['settings']['dtype']} keys: {dev['name']}", fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--sizes", default=None, help="comma list of %s (default: 240p,480p,720p; cpu: 120p,240p)" % ",".join(SIZES))
    ap.add_argument("--mem-frames", default="5,21")
    ap.add_argument("--objects", default="1,4")
    ap.add_argument("--methods", default=None, help="comma list of fused,dense,chunked (default: all the device has)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--key-dim", type=int, default=128)
    ap.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="default: float16 on cuda, float32 on cpu")
    ap.add_argument("--radius", type=int, default=None, help="locality radius for non-pinned frames (default: none)")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=None, help="default: 3 (cuda), 1 (cpu)")
    ap.add_argument("--repeat", type=int, default=None, help="default: 20 (cuda), 3 (cpu)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device here; use --device cpu for the reference timings")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.repeat = args.repeat if args.repeat is not None else (20 if cuda else 3)
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    sizes = (args.sizes or ("240p,480p,720p" if cuda else "120p,240p")).split(",")
    available = methods(device, args.chunk_size)
    chosen = args.methods.split(",") if args.methods else list(available)
    for name in chosen:
        if name not in available:
            ap.error(f"method {name!r} is not available on {args.device} (have: {', '.join(available)})")

    dev = device_info(device)
    results = []
    for size in sizes:
        for T in (int(t) for t in args.mem_frames.split(",")):
            for objects in (int(o) for o in args.objects.split(",")):
                for name in chosen:
                    row = run_one(name, available[name], size, T, objects, args, device, dtype)
                    if dev.get("assumed_peak_tflops_fp16_dense"):
                        row["gemm_bound_ms"] = row["gemm_flop"] / (dev["assumed_peak_tflops_fp16_dense"] * 1e12) * 1e3
                    results.append(row)
                    print(
                        f"{size:>5} T={T:<3} O={objects} {name:>8}: "
                        + (f"{row['ms_per_frame']:9.3f} ms/frame  (top-k {row['topk_ms']:.3f} ms, {row['topk_tflops']:.2f} TFLOP/s)" if row["status"] == "ok" else row["status"]),
                        flush=True,
                    )
    for row in results:  # speedups against the dense reference of the same configuration
        dense = next((r for r in results if r["method"] == "dense" and r["status"] == "ok" and all(r[x] == row[x] for x in ("size", "mem_frames", "objects"))), None)
        if dense and row["status"] == "ok":
            row["speedup_vs_dense"] = dense["ms_per_frame"] / row["ms_per_frame"]

    report = {
        "benchmark": "affinity",
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else "bench_affinity.py", *sys.argv[1:]]),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "device": dev,
        "versions": versions(),
        "settings": {
            "k": args.k, "temperature": args.temperature, "key_dim": args.key_dim, "dtype": str(dtype).replace("torch.", ""),
            "radius": args.radius, "pinned": "first frame", "value_dim": VALUE_DIM, "chunk_size": args.chunk_size,
            "warmup": args.warmup, "repeat": args.repeat,
        },  # fmt: skip
        "results": results,
    }
    tag = "cpu" if not cuda else re.sub(r"[^a-z0-9]+", "-", dev["name"].lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"affinity_{tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {json_path}")
    png = args.out / f"affinity_{tag}.png"
    if plot(report, png):
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
