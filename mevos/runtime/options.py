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
    g.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the fast tracker (fp16, fused kernels, CUDA graphs; objects fixed by the first mask, "
                        "else handed over to the regular tracker) (default: on with --device cuda and the torch "
                        "backend)")


def use_fast_tracker(device: str, backend: str, fast: bool | None) -> bool:
    """Whether `--device DEVICE --backend BACKEND [--fast|--no-fast]` runs the fast tracker: by
    default on a CUDA device with the torch backend when torch sees CUDA; --fast insists (a
    UsageError where it cannot run), --no-fast declines."""
    from mevos.errors import UsageError
    from mevos.runtime.fast import cuda_unavailable

    if fast is False:
        return False
    on_cuda = device.startswith("cuda")
    why = None
    if not on_cuda:
        why = f"runs on CUDA devices, not {device!r}"
    elif backend != "torch":
        why = f"runs the torch model, not the {backend} backend"
    else:
        why = cuda_unavailable()
    if why is None:
        return True
    if fast:
        raise UsageError(f"--fast: the fast tracker {why}")
    return False


def add_tracker_arguments(parser: argparse.ArgumentParser, server_defaults: bool = False) -> None:
    """The TrackerConfig fields as options, defaults from TrackerConfig; with server_defaults
    (`mevos stream`) every option defaults to None, meaning: the server's setting."""
    d = TrackerConfig()
    title = ("tracking (default: the server's)" if server_defaults
             else "tracking (defaults: chosen on DAVIS-2016, see mevos/assets/small.md)")
    g = parser.add_argument_group(title)
    options = [
        ("--top-k", int, d.top_k, "memory matches per pixel"),
        ("--temperature", float, d.temperature, "softmax temperature of the affinity"),
        ("--mem-frames", int, d.mem_frames, "recent frames kept in memory besides the pinned ones"),
        ("--refine-rounds", int, d.refine_rounds, "recurrent refinement rounds R"),
        ("--radius", int, d.radius, "locality radius in feature cells for non-pinned memory frames (paper: 12 at 480p)"),
        ("--short-side", int, d.short_side,
         f"process frames at exactly this short side in pixels (unset: the input's, scaled down to "
         f"{d.max_short_side} when larger; e.g. 480 for DAVIS at full size)"),
    ]
    for flag, kind, value, help_text in options:
        if flag == "--radius" and not server_defaults:
            kind, help_text = _radius, help_text + "; 'none' for no limit"
        if server_defaults:
            shown = "the server's"
        elif value is None:
            shown = f"the input size, at most {d.max_short_side}" if flag == "--short-side" else "none"
        else:
            shown = str(value)
        g.add_argument(flag, type=kind, default=None if server_defaults else value,
                       help=f"{help_text} (default: {shown})")


    if not server_defaults:  # not a session setting of the gRPC protocol: the server's own default
        g.add_argument("--memory-masks", choices=["soft", "hard"], default=d.memory_masks,
                       help="what a predicted frame stores in memory: its label map (hard) or its "
                            f"probabilities (soft) (default: {d.memory_masks})")


def _radius(text: str) -> int | None:
    """--radius: a number of feature cells, or 'none' for no locality limit."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"radius must be a number of cells or 'none', not {text!r}") from None


def tracker_config_from_args(args: argparse.Namespace) -> TrackerConfig:
    """TrackerConfig from the parsed options of add_tracker_arguments."""
    return TrackerConfig(
        top_k=args.top_k,
        temperature=args.temperature,
        mem_frames=args.mem_frames,
        refine_rounds=args.refine_rounds,
        radius=args.radius,
        short_side=args.short_side,
        memory_masks=getattr(args, "memory_masks", None) or TrackerConfig.memory_masks,
    )
