"""Replicas of `mevos serve` on loopback, and sessions streamed across them: what the replica
tests and `benchmarks/replicas.py` share.

    with ReplicaSet(3) as replicas:                  # three `mevos serve` processes, port 0 each
        runs = stream_sessions(replicas.target, 6, clip.frames, clip.labels[0], resume=True)
        replicas.kill(0)                             # kill -9 (from another thread, mid-stream)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mevos.errors import MevosError

#: seconds a replica may take to start (it imports torch and loads the model; slow on busy CPUs)
START_TIMEOUT_S = 240.0


class ReplicaSet:
    """n `mevos serve` processes on free loopback ports, started in parallel; `target` is their
    comma list. Stopped (SIGTERM, then SIGKILL) on close."""

    def __init__(self, n: int, args: Sequence[str] = (), grace: float = 10.0, cwd: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="mevos-replicas-")
        root = Path(self._tmp.name)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [root / f"replica{i}.log" for i in range(n)]
        files = [root / f"port{i}" for i in range(n)]
        for i in range(n):
            cmd = [sys.executable, "-m", "mevos", "serve", "--port", "0", "--port-file", str(files[i]),
                   "--no-metrics", "--threads", "1", "--grace", str(grace), *args]
            with open(self.logs[i], "wb") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env))
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            for i, f in enumerate(files):
                while not f.exists():
                    if self.procs[i].poll() is not None or time.monotonic() > deadline:
                        raise MevosError(f"replica {i} did not start:\n{self.log(i)[-3000:]}")
                    time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        self.ports = [int(f.read_text()) for f in files]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.target = ",".join(self.addresses)
        self.wait_ready()

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every live replica reports SERVING."""
        from mevos.client import TrackingClient

        for i, address in enumerate(self.addresses):
            if self.procs[i].poll() is None:
                with TrackingClient(address) as client:
                    client.wait_ready(timeout)

    def active_sessions(self) -> list[int | None]:
        """Open sessions per replica (None: not answering)."""
        from mevos.client import ClientError, TrackingClient

        out: list[int | None] = []
        for i, address in enumerate(self.addresses):
            if self.procs[i].poll() is not None:
                out.append(None)
                continue
            with TrackingClient(address) as client:
                try:
                    out.append(int(client.server_info(timeout=5).active_sessions))
                except ClientError:
                    out.append(None)
        return out

    def kill(self, i: int) -> None:
        """kill -9: no drain, no goodbye."""
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(30)

    def term(self, i: int) -> None:
        """SIGTERM: the replica drains (health NOT_SERVING, sessions told to move) and exits."""
        self.procs[i].send_signal(signal.SIGTERM)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._tmp.cleanup()

    def __enter__(self) -> ReplicaSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Clip:
    """A DAVIS sequence's first frames at a working size: frames T*H*W*3 uint8, labels T*H*W."""

    name: str
    frames: list[np.ndarray]
    labels: np.ndarray


def davis_clip(root: Path, sequence: str, frames: int, short_side: int = 240) -> Clip:
    """The first `frames` frames of a DAVIS sequence and their ground truth, scaled (bilinear /
    nearest) to `short_side`."""
    from PIL import Image

    from mevos.data.palette import read_label_png

    images = sorted((root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[:frames]
    annotations = sorted((root / "Annotations" / "480p" / sequence).glob("*.png"))[:frames]
    if len(images) < frames or len(annotations) < frames:
        raise MevosError(f"DAVIS sequence {sequence} under {root} has fewer than {frames} annotated frames")
    w, h = Image.open(images[0]).size
    size = (round(w * short_side / min(w, h)), round(h * short_side / min(w, h)))
    rgb = [np.asarray(Image.open(p).convert("RGB").resize(size, Image.Resampling.BILINEAR)) for p in images]
    gt = np.stack([np.asarray(Image.fromarray(read_label_png(p)).resize(size, Image.Resampling.NEAREST)) for p in annotations])
    gt = np.where(gt == 255, 0, gt).astype(np.uint8)
    return Clip(sequence, rgb, gt)


def jf(gt: np.ndarray, pred: np.ndarray) -> float:
    """J&F mean over objects (official protocol: first and last frames not scored)."""
    from mevos.eval.evaluate import evaluate_sequence

    objects = evaluate_sequence(gt, pred)
    return float(np.mean([(o.J_mean + o.F_mean) / 2 for o in objects]))


@dataclass
class SessionRun:
    """What one session received: indices in arrival order, label maps, whether each frame came
    after a move, client latencies, the server-side session ids, moves, and the error if any."""

    indices: list[int] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    resumed: list[bool] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)
    moves: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def moved(self) -> bool:
        return any(self.resumed)


def stream_sessions(target: str, n: int, frames: Sequence[np.ndarray], first_mask: np.ndarray,
                    settings: dict[str, Any], resume: bool = True, window: int = 2, stagger_s: float = 0.0,
                    on_frame: Callable[[int, int], None] | None = None) -> list[SessionRun]:
    """n concurrent sessions over one balanced channel, each streaming `frames` (JPEG in,
    run-length out); returns what each received. on_frame(session, index) after every answer."""
    from mevos.client import TrackingClient
    from mevos.client.resume import ResumableSession

    runs = [SessionRun() for _ in range(n)]
    with TrackingClient(target) as client:
        client.wait_ready(60)
        time.sleep(1.0)  # round_robin connects to every replica at once; let them all report SERVING

        def one(k: int) -> None:
            run = runs[k]
            try:
                s = client.session(settings=settings, encoding="rle", image_format="jpeg", window=window,
                                   resume=resume, client_tag=f"replicas {k}")
                sender = threading.Thread(target=_send, args=(s, frames, first_mask), daemon=True)
                sender.start()
                for r in s:
                    run.indices.append(r.index)
                    run.labels.append(r.labels)
                    run.resumed.append(r.resumed)
                    run.latency_s.append(r.latency_s or 0.0)
                    run.received_at.append(time.perf_counter())
                    if r.session_id not in run.session_ids:
                        run.session_ids.append(r.session_id)
                    if on_frame is not None:
                        on_frame(k, r.index)
                sender.join(10)
                run.moves = list(s.log.moves) if isinstance(s, ResumableSession) else []
            except BaseException as exc:  # noqa: BLE001 - recorded, the caller asserts
                run.error = exc

        threads = []
        for k in range(n):
            threads.append(threading.Thread(target=one, args=(k,), name=f"session-{k}"))
            threads[-1].start()
            time.sleep(stagger_s)
        for t in threads:
            t.join()
    return runs


def _send(session: Any, frames: Sequence[np.ndarray], first_mask: np.ndarray) -> None:
    try:
        for i, frame in enumerate(frames):
            session.send(frame, masks=first_mask if i == 0 else None)
            if session.ended():
                break
    finally:
        session.close_send()
