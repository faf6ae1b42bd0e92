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
    from mevos.runtime.backend import create_backend
    from mevos.runtime.options import tracker_config_from_args
    from mevos.runtime.threads import configure_threads
    from mevos.runtime.tracker import Tracker
    from mevos.runtime.weights import describe_weights

    threads = configure_threads(args.threads)
    config = tracker_config_from_args(args)
    source = open_frames(args.source)
    mask = read_first_mask(args.mask, source)
    backend = create_backend(args.backend, args.checkpoint, device=args.device, precision=args.precision)
    print(f"mevos segment: {describe_weights(args.checkpoint)}; backend {backend.name} on {backend.device}, "
          f"{threads} CPU thread(s)",
          file=sys.stderr)
    tracker = Tracker(backend, config)
    total = source.num_frames if args.max_frames is None else min(args.max_frames, source.num_frames or args.max_frames)
    t0 = time.perf_counter()
    with ResultWriter(args.out, source, force=args.force, overlay=args.overlay) as results, \
            tqdm(total=total, unit="frame", desc=f"segment {source.name}", file=sys.stderr) as bar:
        for i, frame in enumerate(itertools.islice(source, args.max_frames)):
            result = tracker.step(frame, masks=mask if i == 0 else None)
            results.write(i, frame, result.labels)
            bar.update(1)
            bar.set_postfix(fps=f"{results.count / (time.perf_counter() - t0):.1f}")
    seconds = time.perf_counter() - t0
    print(f"mevos segment: {results.count} frames, {len(tracker.object_ids)} object(s), "
          f"{results.count / seconds:.1f} FPS -> {results.out}"
          + (f" (overlay {results.overlay_path})" if results.overlay_path else ""))
    return 0
