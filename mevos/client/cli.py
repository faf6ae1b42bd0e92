"""Stream a video (file or folder of frames) to a mevos server and write the masks it returns.

Frames are sent as they are read and masks written as they arrive, one palette PNG per frame
(named like the input frames), plus an overlay video. Settings left unset take the server's
defaults (see `grpcurl ... GetServerInfo`).

--server takes one HOST:PORT, a comma list of replicas (balanced by gRPC's round_robin with
health checks: replicas that are down or draining get no new sessions), or a gRPC target such as
dns:///mevos.default.svc.cluster.local:50051. With --resume the session moves to another replica
when its server fails or drains, re-seeded from the last mask received; every frame is written
once, in order.

example:
  mevos serve --port 50051 &
  mevos stream ../shared/data/davis2016/JPEGImages/480p/blackswan \\
      --mask ../shared/data/davis2016/Annotations/480p/blackswan/00000.png \\
      --server 127.0.0.1:50051 --out results/blackswan
  mevos stream VIDEO --mask M --server 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 --resume --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: the session settings (SessionSettings fields) as options; unset = the server's default. Not
#: mevos.runtime.options.add_tracker_arguments: that module imports torch, which a thin client
#: must not need.
SESSION_OPTIONS = [
    ("--top-k", int, "memory matches per pixel"),
    ("--temperature", float, "softmax temperature of the affinity"),
    ("--mem-frames", int, "recent frames kept in memory besides the pinned ones"),
    ("--refine-rounds", int, "recurrent refinement rounds R"),
    ("--radius", int, "locality radius in feature cells for non-pinned memory frames"),
    ("--short-side", int, "process frames at exactly this short side in pixels"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mevos.errors import require

    require("grpc", "serve", "mevos stream", package="grpcio")
    require("google.protobuf", "serve", "mevos stream", package="protobuf")
    parser.add_argument("source", help="folder of frames (sorted by name) or a video file")
    parser.add_argument("--mask", required=True, help="label PNG of the first frame (0 = background, 1..255 = objects)")
    parser.add_argument("--server", default="127.0.0.1:50051",
                        help="HOST:PORT of the server, HOST:PORT,HOST:PORT,... of replicas, or a gRPC target "
                             "(dns:///NAME:PORT) (default 127.0.0.1:50051)")
    parser.add_argument("--resume", action="store_true",
                        help="when the server fails or drains, move the session to another replica (re-seeded "
                             "from the last mask received) instead of failing")
    parser.add_argument("--resume-timeout", type=float, default=30.0,
                        help="seconds one move may keep trying before giving up (default 30)")
    parser.add_argument("--out", required=True, help="output folder for the masks (must not exist, or be empty)")
    parser.add_argument("--overlay", default=None, help="overlay video path (default: OUT/overlay.mp4; 'none' to skip)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    w = parser.add_argument_group("wire")
    w.add_argument("--image-format", choices=["jpeg", "png", "raw"], default="jpeg",
                   help="how frames are sent (default jpeg)")
    w.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..95 (default 90)")
    w.add_argument("--encoding", choices=["png", "rle", "raw"], default="rle",
                   help="how the server encodes the masks it returns (default rle)")
    w.add_argument("--window", type=int, default=4, help="frames queued ahead of the server's answers (default 4)")
    w.add_argument("--timeout", type=float, default=None, help="deadline of the whole stream, seconds")
    s = parser.add_argument_group("security")
    s.add_argument("--token-file", default=None, help="bearer token file (default: $MEVOS_TOKEN if set)")
    s.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    s.add_argument("--tls-ca", default=None, metavar="PEM", help="use TLS, trusting this CA certificate")
    s.add_argument("--allow-plaintext-token", action="store_true",
                   help="send the token without TLS to a server that is not on this machine (trusted networks only)")
    g = parser.add_argument_group("tracking (default: the server's)")
    for flag, kind, help_text in SESSION_OPTIONS:
        g.add_argument(flag, type=kind, default=None, help=f"{help_text} (default: the server's)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mevos.client.client import TrackingClient
    from mevos.data.results import ResultWriter, read_first_mask
    from mevos.data.video import open_frames
    from mevos.env import load_token

    source = open_frames(args.source)
    mask = read_first_mask(args.mask, source)
    token = load_token(args.token_file)
    root = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    settings = {k: getattr(args, k) for k in ("top_k", "temperature", "mem_frames", "refine_rounds", "radius",
                                              "short_side")}
    total = source.num_frames if args.max_frames is None else min(args.max_frames, source.num_frames or args.max_frames)
    # Frames the sender has read, kept until their mask arrives (for the overlay): at most the
    # in-flight window, since the server answers in order.
    pending: dict[int, np.ndarray] = {}
    frames = itertools.islice(source, args.max_frames)

    def remember() -> Iterator[np.ndarray]:
        for i, frame in enumerate(frames):
            pending[i] = frame
            yield frame

    objects, moved, t0 = 0, 0, time.perf_counter()
    with ResultWriter(args.out, source, force=args.force, overlay=args.overlay) as results, \
            TrackingClient(args.server, token=token, tls=args.tls, root_certificates=root,
                           allow_plaintext_token=args.allow_plaintext_token) as client, \
            tqdm(total=total, unit="frame", desc=f"stream {source.name}", file=sys.stderr) as bar:
        for result in client.track(remember(), mask, settings=settings, encoding=args.encoding,
                                   image_format=args.image_format, jpeg_quality=args.jpeg_quality,
                                   window=args.window, timeout=args.timeout, client_tag=f"stream {source.name}",
                                   resume=args.resume, resume_timeout=args.resume_timeout):
            results.write(result.index, pending.pop(result.index), result.labels)
            objects = len(result.objects)
            if result.moves > moved:
                moved = result.moves
                bar.write(f"mevos stream: the session moved to another server at frame {result.index} "
                          f"(move {moved})", file=sys.stderr)
            bar.update(1)
            bar.set_postfix(fps=f"{results.count / (time.perf_counter() - t0):.1f}")
    seconds = time.perf_counter() - t0
    print(f"mevos stream: {results.count} frames, {objects} object(s), {results.count / seconds:.1f} FPS via "
          f"{args.server} -> {results.out}" + (f" (overlay {results.overlay_path})" if results.overlay_path else "")
          + (f"; the session moved {moved} time(s)" if moved else ""))
    return 0
