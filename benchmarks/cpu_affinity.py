"""CPU top-k affinity: the compiled operator (mevos.kernels.cpu) beside the chunked reference, one run.

Two configurations at 480p (feature grid 60 x 107), 21 memory frames, k = 10, 64-d keys:
- `paper`: the first frame pinned and searched in full, the 20 others within radius 12;
- `gemm`: no radius, every frame searched in full: the similarity is a P x T*P GEMM; the
  operator's achieved GFLOP/s (2 * P * T*P * C per call) is set against the machine's GEMM rate
  measured in the same run (torch.matmul of square 2048 float32 matrices, compute-bound); the
  same-shape torch.matmul is recorded too, but it writes the whole P x T*P matrix (GBs) and is
  bound by memory, not arithmetic.
Both methods run in the same process, interleaved (reference, operator, reference, ...), with the
same threads, so machine load hits both; the indices are compared and the largest weight
difference reported.

    .venv/bin/python benchmarks/cpu_affinity.py        # 2 threads, writes benchmarks/results/cpu_affinity.json/.png

Reported per method: median and min of --repeat timed calls after one untimed call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mevos.bench.environment import load_average, machine_info, versions  # noqa: E402
from mevos.kernels import cpu, reference  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def keys(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def run_config(name: str, grid: tuple[int, int], T: int, C: int, k: int, radius: int | None,
               repeat: int, ref_repeat: int) -> dict:
    h, w = grid
    P = h * w
    query, memory = keys((P, C), 0), keys((T, P, C), 1)
    pinned = torch.zeros(T, dtype=torch.bool)
    pinned[0] = True
    kw = dict(k=k, temperature=0.05, grid=grid, pinned=pinned, radius=radius)
    ref = lambda: reference.topk_affinity(query, memory, chunk_size=1024, **kw)  # noqa: E731
    op = lambda: cpu.topk_affinity(query, memory, **kw)  # noqa: E731
    want, got = ref(), op()  # untimed first calls (the operator's build happens before, in main)
    same = bool(torch.equal(want[1], got[1]))
    max_dw = float((want[0] - got[0]).abs().max())
    t_ref, t_op = [], []
    for i in range(max(repeat, ref_repeat)):  # interleaved: load changes hit both methods
        if i < ref_repeat:
            t_ref += timed(ref, 1)
        if i < repeat:
            t_op += timed(op, 1)
    flop = 2.0 * P * T * P * C
    if radius is not None:
        # Scored candidates: the pinned frame in full, each windowed frame over its window.
        cells = sum((min(h - 1, y + radius) - max(0, y - radius) + 1) * (min(w - 1, x + radius) - max(0, x - radius) + 1)
                    for y in range(h) for x in range(w))
        flop = 2.0 * C * (P * P + (T - 1) * cells)
    row = {
        "config": name, "grid": [h, w], "memory_frames": T, "pinned_frames": 1, "radius": radius, "k": k,
        "key_dim": C, "useful_gflop": round(flop / 1e9, 3),
        "reference_ms": {"median": 1e3 * statistics.median(t_ref), "min": 1e3 * min(t_ref), "runs": len(t_ref)},
        "cpu_operator_ms": {"median": 1e3 * statistics.median(t_op), "min": 1e3 * min(t_op), "runs": len(t_op)},
        "speedup_median": statistics.median(t_ref) / statistics.median(t_op),
        "same_indices": same, "max_weight_difference": max_dw,
        "cpu_operator_gflops": flop / 1e9 / statistics.median(t_op),
    }
    if radius is None:
        # The machine's GEMM rate on the same shapes, in the same run: query x all memory keys.
        mem_t = memory.reshape(T * P, C).t().contiguous()
        q = query / 0.05
        (q @ mem_t)
        t_mm = timed(lambda: q @ mem_t, repeat)
        row["torch_matmul_ms"] = {"median": 1e3 * statistics.median(t_mm), "min": 1e3 * min(t_mm)}
        # That product writes a P x T*P float32 matrix (GBs at 480p): bound by memory writes, not by
        # arithmetic. The machine's GEMM rate is a compute-bound product: square float32 matrices
        # of 2048 into a preallocated output, same threads.
        n = 2048
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.matmul(a, b, out=c)
        t_sq = timed(lambda: torch.matmul(a, b, out=c), max(3, repeat))
        row["torch_matmul_gflops"] = flop / 1e9 / statistics.median(t_mm)
        row["gemm_rate_gflops"] = 2.0 * n**3 / 1e9 / statistics.median(t_sq)
        row["gemm_rate_shape"] = [n, n, n]
        row["fraction_of_gemm_rate"] = row["cpu_operator_gflops"] / row["gemm_rate_gflops"]
    return row


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    rows = report["results"]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["reference_ms"]["median"] for r in rows], 0.4, label="chunked reference")
    ax.bar([x + 0.2 for x in xs], [r["cpu_operator_ms"]["median"] for r in rows], 0.4, label="CPU operator")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r["cpu_operator_ms"]["median"], f"{r['speedup_median']:.1f}x", ha="center", va="bottom")
    ax.set_xticks(list(xs), [f"{r['config']}\nradius {r['radius']}" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (median)")
    ax.set_title(f"top-k affinity, 480p grid, {rows[0]['memory_frames']} frames, k {rows[0]['k']}, "
                 f"{report['threads']} threads\n{report['machine']['cpu_model']}, load {report['load_average_start']}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, used by both methods (default 2)")
    parser.add_argument("--frames", type=int, default=21, help="memory frames, the first pinned (default 21)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls of the operator per configuration")
    parser.add_argument("--ref-repeat", type=int, default=3, help="timed calls of the reference per configuration")
    parser.add_argument("--configs", default="paper,gemm", help="paper, gemm or both (default)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ok = cpu.available()
    build_s = time.perf_counter() - t0
    if not ok:
        print(f"the compiled operator is unavailable: {cpu.reason()}", file=sys.stderr)
        return 1
    load_start = load_average()
    results = []
    for name in args.configs.split(","):
        radius = {"paper": 12, "gemm": None}[name]
        row = run_config(name, (60, 107), args.frames, 64, 10, radius, args.repeat, args.ref_repeat)
        results.append(row)
        extra = (f", {row['cpu_operator_gflops']:.1f} GFLOP/s = {100 * row['fraction_of_gemm_rate']:.0f}% of "
                 f"the machine's GEMM rate {row['gemm_rate_gflops']:.1f} (same-shape torch.matmul, bound by writing "
                 f"its output: {row['torch_matmul_gflops']:.1f})" if radius is None else "")
        print(f"{name}: reference {row['reference_ms']['median']:.1f} ms, operator {row['cpu_operator_ms']['median']:.1f} ms "
              f"= {row['speedup_median']:.1f}x; same indices {row['same_indices']}, max |dw| "
              f"{row['max_weight_difference']:.1e}{extra}")
    report = {
        "benchmark": "cpu_affinity",
        "command": "python benchmarks/cpu_affinity.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "device": "cpu", "threads": torch.get_num_threads(),
        "load_average_start": load_start, "load_average_end": load_average(), "versions": versions(),
        "operator": {"library": str(cpu.library_path()), "first_use_seconds": round(build_s, 2),
                     "compiler_flags": list(cpu._FLAGS)},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cpu_affinity.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}" + (" and .png" if plot(report, path.with_suffix(".png")) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
