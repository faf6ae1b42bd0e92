"""`make demo`: segment a generated video end to end through the gRPC server, report J&F and FPS.

The embedded default data is a seeded synthetic video (textured objects that move, scale and
occlude each other) with exact ground truth, so the demo needs no download and scores itself.
It starts `mevos serve` in the background on a free loopback port, waits until its health check
says SERVING, streams the video through the Python client (mevos.client), and stops the server
(SIGTERM) when done, also on errors. Writes the frames, the masks (palette PNGs), an overlay
video and the server's log under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def background_server(checkpoint: str | None, log_path: Path, timeout: float = 120.0,
                      threads: int | None = None) -> Iterator[str]:
    """`mevos serve` on a free loopback port for the duration of the block; yields HOST:PORT.
    The server gets SIGTERM (then SIGKILL after 30 s) on the way out, whatever happened."""
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "w") as log:
        port_file = Path(tmp) / "port"
        cmd = [sys.executable, "-m", "mevos", "serve", "--host", "127.0.0.1", "--port", "0",
               "--port-file", str(port_file), "--metrics-port", "0", "--log-format", "text"]
        if checkpoint:
            cmd += ["--model", checkpoint]
        if threads:
            cmd += ["--threads", str(threads)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"demo: the server did not start; see {log_path}")
                time.sleep(0.1)
            yield f"127.0.0.1:{port_file.read_text().strip()}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mevos.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--frames", type=int, default=60, help="length of the generated video (default 60)")
    parser.add_argument("--objects", type=int, default=3, help="objects in the generated video (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated video (default 0)")
    parser.add_argument("--checkpoint", default=None, help="weights to run (default: the shipped ones)")
    from mevos.runtime.threads import add_threads_argument, default_threads

    add_threads_argument(parser)
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else default_threads()
    if threads < 1:
        parser.error("--threads must be >= 1")

    from tqdm import tqdm

    from mevos.data.overlay import overlay
    from mevos.data.palette import write_label_png
    from mevos.data.synthetic import SyntheticConfig, generate, write_synthetic
    from mevos.data.video import VideoWriter
    from mevos.client import TrackingClient
    from mevos.eval.evaluate import GlobalScores, baseline_sequence, evaluate_sequence
    from mevos.data.results import finish_output, prepare_output
    from mevos.model.weights import describe_weights

    video = generate(SyntheticConfig(num_frames=args.frames, num_objects=args.objects, seed=args.seed, name="demo"))
    out = Path(args.out)
    tmp = prepare_output(out, force=True)
    write_synthetic(video, tmp / "input")
    (tmp / "masks").mkdir()
    print(f"demo: {describe_weights(args.checkpoint)}")
    print(f"demo: synthetic video, {len(video.frames)} frames {video.frames[0].shape[1]}x{video.frames[0].shape[0]}, "
          f"{video.num_objects} objects, seed {args.seed}")

    preds = []
    with background_server(args.checkpoint, tmp / "server.log", threads=threads) as target, TrackingClient(target) as client:
        client.wait_ready(timeout=60)
        device = client.server_info().device
        print(f"demo: streaming through mevos serve at {target} (gRPC), {threads} CPU thread(s)", file=sys.stderr)
        t0 = time.perf_counter()
        with VideoWriter(tmp / "overlay.mp4", fps=12.0) as writer:
            # PNG frames are lossless, so the server segments exactly the generated pixels.
            results = client.track(video.frames, video.labels[0], image_format="png", encoding="rle")
            for result in tqdm(results, total=len(video.frames), unit="frame", desc="demo", file=sys.stderr):
                i = result.index
                preds.append(result.labels)
                write_label_png(tmp / "masks" / f"{i:05d}.png", result.labels)
                writer.write(overlay(video.frames[i], result.labels))
        seconds = time.perf_counter() - t0
    finish_output(tmp, out)

    gt = np.stack(video.labels)
    method = GlobalScores.of(evaluate_sequence(gt, np.stack(preds), name="demo"))
    base = GlobalScores.of(baseline_sequence(gt, name="demo"))
    print(f"demo: J&F {method.JF_mean:.3f} (J {method.J_mean:.3f}, F {method.F_mean:.3f}); "
          f"copy-first-mask baseline J&F {base.JF_mean:.3f}")
    print(f"demo: {len(preds)} frames in {seconds:.1f} s = {len(preds) / seconds:.1f} FPS on {device}")
    print(f"demo: masks in {out / 'masks'}, overlay video {out / 'overlay.mp4'}, input frames in {out / 'input'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
