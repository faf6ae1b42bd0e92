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
import shutil
import sys
import time
from pathlib import Path

from mevos.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mevos.runtime.options import add_model_arguments, add_tracker_arguments

    parser.add_argument("source", help="folder of frames (sorted by name) or a video file")
    parser.add_argument("--mask", required=True, help="label PNG of the first frame (0 = background, 1..255 = objects)")
    parser.add_argument("--out", required=True, help="output folder for the masks (must not exist, or be empty)")
    parser.add_argument("--overlay", default=None,
                        help="overlay video path (default: OUT/overlay.mp4; 'none' to skip)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    add_model_arguments(parser)
    add_tracker_arguments(parser)


def prepare_output(out: Path, force: bool) -> Path:
    """Check OUT can be written and return the temporary folder beside it to write into."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"{out} exists and is not empty; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish_output(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder into place."""
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mevos.data.overlay import overlay
    from mevos.data.palette import read_label_png, write_label_png
    from mevos.data.video import ImageFolderSource, VideoWriter, open_frames
    from mevos.runtime.backend import create_backend
    from mevos.runtime.options import tracker_config_from_args
    from mevos.runtime.tracker import Tracker
    from mevos.runtime.weights import describe_weights

    config = tracker_config_from_args(args)
    source = open_frames(args.source)
    mask = read_label_png(args.mask)
    if mask.shape != source.size:
        raise InputError(
            f"{args.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from the frame size "
            f"{source.size[1]}x{source.size[0]} of {args.source}"
        )
    if not mask.any():
        raise InputError(f"{args.mask}: the mask has no object (every pixel is 0 = background)")
    backend = create_backend(args.backend, args.checkpoint, device=args.device, precision=args.precision)
    print(f"mevos segment: {describe_weights(args.checkpoint)}; backend {backend.name} on {backend.device}",
          file=sys.stderr)
    tracker = Tracker(backend, config)

    out = Path(args.out)
    tmp = prepare_output(out, args.force)
    names = [p.stem for p in source.paths] if isinstance(source, ImageFolderSource) else None
    overlay_path = None if args.overlay == "none" else Path(args.overlay) if args.overlay else out / "overlay.mp4"
    writer = VideoWriter(tmp / "overlay.mp4", fps=source.fps or 24.0) if overlay_path else None
    total = source.num_frames if args.max_frames is None else min(args.max_frames, source.num_frames or args.max_frames)
    count, t0 = 0, time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", desc=f"segment {source.name}", file=sys.stderr) as bar:
            for i, frame in enumerate(source):
                if args.max_frames is not None and i >= args.max_frames:
                    break
                result = tracker.step(frame, masks=mask if i == 0 else None)
                write_label_png(tmp / f"{names[i] if names else f'{i:05d}'}.png", result.labels)
                if writer is not None:
                    writer.write(overlay(frame, result.labels))
                count += 1
                bar.update(1)
                bar.set_postfix(fps=f"{count / (time.perf_counter() - t0):.1f}")
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finish_output(tmp, out)
    if overlay_path is not None and overlay_path != out / "overlay.mp4":
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out / "overlay.mp4"), overlay_path)
    seconds = time.perf_counter() - t0
    print(f"mevos segment: {count} frames, {len(tracker.object_ids)} object(s), {count / seconds:.1f} FPS "
          f"-> {out}" + (f" (overlay {overlay_path})" if overlay_path else ""))
    return 0
