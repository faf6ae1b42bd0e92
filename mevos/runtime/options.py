"""Command-line options shared by every command that runs the model (segment, serve, bench)."""

from __future__ import annotations

import argparse

from mevos.runtime.backend import BACKENDS
from mevos.runtime.tracker import TrackerConfig


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --backend, --device, --precision."""
    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", "--model", dest="checkpoint", default=None, metavar="PATH",
                   help="checkpoint (.pt) or export folder to run (default: the shipped small weights, "
                        "or untrained small weights when none are shipped)")
    g.add_argument("--backend", default="torch", choices=sorted(BACKENDS),
                   help="inference backend (default: torch)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"],
                   help="auto = fp16 on CUDA, fp32 on the CPU")


def add_tracker_arguments(parser: argparse.ArgumentParser) -> None:
    """The TrackerConfig fields as options, defaults from TrackerConfig."""
    d = TrackerConfig()
    g = parser.add_argument_group("tracking (defaults: the paper's DAVIS protocol)")
    g.add_argument("--top-k", type=int, default=d.top_k, help=f"memory matches per pixel (default {d.top_k})")
    g.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"softmax temperature of the affinity (default {d.temperature})")
    g.add_argument("--mem-frames", type=int, default=d.mem_frames,
                   help=f"recent frames kept in memory besides the pinned ones (default {d.mem_frames})")
    g.add_argument("--refine-rounds", type=int, default=d.refine_rounds,
                   help=f"recurrent refinement rounds R (default {d.refine_rounds})")
    g.add_argument("--radius", type=int, default=d.radius,
                   help="locality radius in feature cells for non-pinned memory frames (default: none; paper: 12)")
    g.add_argument("--short-side", type=int, default=d.short_side,
                   help="process frames at this short side in pixels (default: the input size)")


def tracker_config_from_args(args: argparse.Namespace) -> TrackerConfig:
    """TrackerConfig from the parsed options of add_tracker_arguments."""
    return TrackerConfig(
        top_k=args.top_k,
        temperature=args.temperature,
        mem_frames=args.mem_frames,
        refine_rounds=args.refine_rounds,
        radius=args.radius,
        short_side=args.short_side,
    )
