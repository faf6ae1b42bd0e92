"""Segment objects through a video given their masks on the first frame.

Writes one palette PNG per frame (named like the input frames, so `mevos eval` can score them)
and an overlay video. Output goes to a temporary folder that is renamed into place only when
every frame is done, so an interrupted run never leaves a folder that looks complete.

example:
  mevos segment ../shared/data/davis2016/JPEGImages/480p/blackswan \\
      --mask ../shared/data/davis2016/Annotations/480p/blackswan/00000.png --out results/blackswan
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mevos.runtime.tracker import FrameTracker, TrackerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mevos.runtime.options import add_model_arguments, add_tracker_arguments
    from mevos.runtime.threads import add_threads_argument

    parser.add_argument("source", help="folder of frames (sorted by name) or a video file")
    parser.add_argument("--mask", required=True, help="label PNG of the first frame (0 = background, 1..255 = objects)")
    parser.add_argument("--out", required=True, help="output folder for the masks (must not exist, or be empty)")
    parser.add_argument("--overlay", default=None,
                        help="overlay video path (default: OUT/overlay.mp4; 'none' to skip)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    add_model_arguments(parser)
    add_threads_argument(parser)
    add_tracker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mevos.data.results import ResultWriter, read_first_mask
    from mevos.data.video import open_frames
    from mevos.model.weights import describe_weights
    from mevos.runtime.options import tracker_config_from_args
    from mevos.runtime.threads import configure_threads
    from mevos.runtime.tracker import track

    threads = configure_threads(args.threads)
    config = tracker_config_from_args(args)
    source = open_frames(args.source)
    mask = read_first_mask(args.mask, source)
    tracker, what = make_tracker(args, config)
    print(f"mevos segment: {describe_weights(args.checkpoint)}; {what}, {threads} CPU thread(s)", file=sys.stderr)
    total = source.num_frames if args.max_frames is None else min(args.max_frames, source.num_frames or args.max_frames)
    t0 = time.perf_counter()
    with ResultWriter(args.out, source, force=args.force, overlay=args.overlay) as results, \
            tqdm(total=total, unit="frame", desc=f"segment {source.name}", file=sys.stderr) as bar:
        # One frame behind (runtime.tracker.track): frame i is queued before frame i-1's labels
        # are read, so the fast tracker overlaps them.
        for i, (frame, result) in enumerate(track(tracker, itertools.islice(source, args.max_frames), mask)):
            results.write(i, frame, result.labels)
            bar.update(1)
            bar.set_postfix(fps=f"{results.count / (time.perf_counter() - t0):.1f}")
    seconds = time.perf_counter() - t0
    print(f"mevos segment: {results.count} frames, {len(tracker.object_ids)} object(s), "
          f"{results.count / seconds:.1f} FPS -> {results.out}"
          + (f" (overlay {results.overlay_path})" if results.overlay_path else ""))
    return 0


def make_tracker(args: argparse.Namespace, config: TrackerConfig) -> tuple[FrameTracker, str]:
    """The tracker the options ask for (runtime.options.use_fast_tracker decides), and a line
    saying which one runs where."""
    from mevos.runtime.backend import create_backend
    from mevos.runtime.options import use_fast_tracker
    from mevos.runtime.tracker import Tracker

    if use_fast_tracker(args.device, args.backend, args.fast):
        from mevos.model.weights import load_default_model
        from mevos.runtime.fast import FastOptions, FastTracker

        model, _ = load_default_model(args.checkpoint)
        fast = FastTracker(model, config, device=args.device, options=FastOptions(fp16=args.precision != "fp32"))
        return fast, f"fast tracker on {fast.device} ({'fp32' if args.precision == 'fp32' else 'fp16'})"
    backend = create_backend(args.backend, args.checkpoint, device=args.device, precision=args.precision)
    return Tracker(backend, config), f"backend {backend.name} on {backend.device}"
