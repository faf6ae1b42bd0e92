"""Measure latency and FPS of each stage and backend, the gRPC serving overhead and the GPU fast
path; write JSON, PNG plots and SUMMARY.md.

Per-stage latency (encode_key, affinity top-k, readout, refinement rounds of V and D, memory
write) and end-to-end FPS with the real Tracker, for each available backend, against the
baseline of the paper's code path (fp32 PyTorch, dense affinity). Warm-up runs are separate from
timed runs; the device is synchronised before every clock read.

examples:
  mevos bench --quick                 # CPU-sized: small preset, 240p, torch + onnxruntime (minutes)
  mevos bench                         # the whole grid and the GPU fast path (meant for a CUDA GPU)
  mevos bench --quick --no-grpc --variants baseline,torch --out /tmp/bench
  mevos bench --quick --out benchmarks/results   # update the committed record (explicitly)

Writes (default OUT: ./bench-out, outside the committed record) OUT/bench_<mode>_<device>.json, OUT/bench_<mode>_<device>_{stages,fps}.png and rewrites
OUT/SUMMARY.md from every bench_*.json in OUT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mevos.errors import UsageError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


_PARSER: list[argparse.ArgumentParser] = []  # the parser add_arguments filled, to rebuild the command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _PARSER[:] = [parser]
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="the CPU-sized plan: small preset, 240p, 1/4 objects, 5/20 memory frames, torch and "
                           "onnxruntime, a short gRPC run (a few minutes on 2 cores)")
    mode.add_argument("--plan", choices=["full", "quick", "tiny"], default=None,
                      help="named plan (default full: every backend at 240p/480p/720p and the GPU fast path)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--out", default="bench-out",
                        help="results folder (default ./bench-out; the committed record is --out benchmarks/results)")
    parser.add_argument("--tag", default=None, help="file name part (default: <plan>_<device>)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="weights to run (default: the default weights for small, seeded weights otherwise)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch and ONNX Runtime (default: 1 for --quick and tiny, else the "
                             "usable cores less those other processes keep busy (mevos.runtime.threads); "
                             "0 = the libraries' choice)")
    g = parser.add_argument_group("grid (override the plan)")
    g.add_argument("--presets", type=_names, default=None, help="model presets, e.g. small,r18")
    g.add_argument("--resolutions", type=_names, default=None, help="e.g. 240p,480p,720p or WxH")
    g.add_argument("--objects", type=_ints, default=None, help="object counts, e.g. 1,4")
    g.add_argument("--mem-frames", type=_ints, default=None, help="memory frames, e.g. 5,20")
    g.add_argument("--variants", type=_names, default=None,
                   help="baseline,torch,onnxruntime,onnxruntime-trt,tensorrt,fast (unavailable ones are skipped)")
    g.add_argument("--refine-rounds", type=int, default=None, help="refinement rounds R (default 2)")
    g.add_argument("--warmup", type=int, default=None, help="untimed iterations before the timed ones")
    g.add_argument("--repeat", type=int, default=None, help="timed iterations per stage measurement")
    g.add_argument("--frames", type=int, default=None, help="timed frames per end-to-end run")
    s = parser.add_argument_group("sections")
    s.add_argument("--no-e2e", action="store_true", help="skip the end-to-end Tracker runs")
    s.add_argument("--no-grpc", action="store_true", help="skip the gRPC serving run")
    s.add_argument("--no-fast", action="store_true", help="skip the GPU fast path")
    s.add_argument("--no-jf", action="store_true", help="skip the fast path's J&F check on DAVIS")
    s.add_argument("--davis", default=None, metavar="DIR",
                   help="DAVIS folder for the J&F check (default: ../shared/data/davis2016 if present)")
    s.add_argument("--fast-frames", type=int, default=None, help="timed frames of the fast-path run")
    s.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def command_line(args: argparse.Namespace) -> list[str]:
    """`mevos bench` and every option whose value differs from its default: the command that
    reproduces the run, however it was started (console script, script, or main([...]))."""
    out = ["mevos", "bench"]
    for action in _PARSER[0]._actions if _PARSER else ():
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value == action.default:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            out.append(flag)
        else:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return out


def _plan(args: argparse.Namespace):  # noqa: ANN202
    from mevos.bench.plan import PLANS

    plan = PLANS["quick" if args.quick else args.plan or "full"]()
    changes = {}
    for field, value in (("presets", args.presets), ("resolutions", args.resolutions), ("objects", args.objects),
                         ("mem_frames", args.mem_frames), ("variants", args.variants),
                         ("refine_rounds", args.refine_rounds), ("warmup", args.warmup), ("repeat", args.repeat),
                         ("fast_frames", args.fast_frames)):
        if value is not None:
            changes[field] = value
    if args.threads is not None:
        if args.threads < 0:
            raise UsageError("--threads must be >= 0")
        changes["threads"] = args.threads or None
    elif plan.threads is None:
        from mevos.runtime.threads import default_threads

        changes["threads"] = default_threads()
    if args.resolutions is not None:
        changes["e2e_resolutions"] = tuple(r for r in plan.e2e_resolutions if r in args.resolutions) or \
            args.resolutions[:1]
        changes["grpc_resolution"] = plan.grpc_resolution if plan.grpc_resolution in args.resolutions else \
            args.resolutions[0]
    if args.objects is not None:
        changes["e2e_objects"] = tuple(o for o in plan.e2e_objects if o in args.objects) or args.objects[:1]
    if args.mem_frames is not None:
        changes["e2e_mem_frames"] = tuple(m for m in plan.e2e_mem_frames if m in args.mem_frames) or \
            args.mem_frames[:1]
    if args.frames is not None:
        changes["e2e_frames"] = changes["grpc_frames"] = args.frames
    if args.no_e2e:
        changes["e2e_resolutions"] = ()
    if args.no_grpc:
        changes["grpc"] = False
    if args.no_fast:
        changes["fast"] = False
        changes["variants"] = tuple(v for v in changes.get("variants", plan.variants) if v != "fast")
    if args.no_jf:
        changes["jf_check"] = False
    return plan.replace(**changes) if changes else plan


def run(args: argparse.Namespace) -> int:
    import torch

    from mevos.bench import environment, report
    from mevos.bench.runner import Runner

    plan = _plan(args)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu (or --quick)")
    if device.type != "cuda" and plan.mode == "full":
        if args.plan is None:
            raise UsageError("no CUDA GPU here: the default (full) plan is meant for a GPU and takes hours on the "
                             "CPU; use --quick (or --plan full to insist)")
        print("mevos bench: the full plan on the CPU takes hours; --quick is the CPU-sized one", file=sys.stderr)
    davis = Path(args.davis) if args.davis else Path("../shared/data/davis2016")
    out = Path(args.out)
    runner = Runner(plan, device, checkpoint=args.checkpoint, davis=davis)
    doc = runner.run(command_line(args))
    doc["settings"]["argv"] = list(sys.argv)
    tag = args.tag or f"{plan.mode}_{environment.device_slug(doc['device'])}"
    stem = f"bench_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    if not args.no_plots:
        for kind, fn in (("stages", report.plot_stages), ("fps", report.plot_fps)):
            p = fn(doc, out / f"{stem}_{kind}.png")
            if p is not None:
                plots.append(p.name)
    doc["files"] = {"json": f"{stem}.json", "plots": plots, "summary": report.SUMMARY}
    path = report.write_json(doc, out / f"{stem}.json")
    summary = report.write_summary(out)
    written = ", ".join(str(out / p) for p in plots) or "no plots"
    print(f"mevos bench: {doc['wall_seconds']:.0f} s; wrote {path}, {written}"
          f" and {summary}")
    return 0
