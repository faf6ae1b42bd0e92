"""Issue 14: replicas behind gRPC's round_robin, and sessions that survive a replica.

Real `mevos serve` processes on loopback (the shipped small weights, one torch thread each): six
sessions spread over three replicas, one replica killed with SIGKILL mid-stream, every frame
arrives once and in order, and the moved sessions' J&F on a DAVIS sequence stays within 0.05 of
the undisturbed ones'; a replica drained with SIGTERM hands its sessions over with no error, also
through `mevos stream --server a,b --resume`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mevos.bench.replicas import ReplicaSet, SessionRun, davis_clip, jf, stream_sessions
from mevos.data.palette import read_label_png
from mevos.data.synthetic import SyntheticConfig, generate, write_synthetic

REPO = Path(__file__).resolve().parents[2]
#: cheap but real settings; memory 4 frames keeps every frame's cost flat
SETTINGS = {"top_k": 10, "mem_frames": 4}
FRAMES = 16


def _sessions_of(replicas: ReplicaSet, i: int) -> set[str]:
    """Session ids replica i logged as started (JSON log lines)."""
    ids = set()
    for line in replicas.log(i).splitlines():
        if line.startswith("{") and '"session_start"' in line:
            ids.add(json.loads(line)["session"])
    return ids


def _in_order(run: SessionRun, frames: int) -> None:
    assert run.error is None, run.error
    assert run.indices == list(range(frames)), run.indices  # every frame, once, in order
    # after a move every frame says so; before it none does
    moved_at = run.resumed.index(True) if run.moved else frames
    assert run.resumed == [False] * moved_at + [True] * (frames - moved_at)


def test_kill_9_of_one_of_three_replicas_loses_no_frame(shared_data: Path) -> None:
    clip = davis_clip(shared_data / "davis2016", "blackswan", FRAMES, short_side=192)
    answered = [0] * 6
    all_started, kill_now = threading.Event(), threading.Event()
    spread: list[list[int | None]] = []

    def on_frame(k: int, index: int) -> None:
        answered[k] += 1
        if min(answered) >= 1:
            all_started.set()
        if min(answered) >= 4:
            kill_now.set()

    with ReplicaSet(3, cwd=REPO) as replicas:
        def killer() -> None:
            all_started.wait(300)
            spread.append(replicas.active_sessions())
            kill_now.wait(300)
            replicas.kill(0)

        t = threading.Thread(target=killer)
        t.start()
        runs = stream_sessions(replicas.target, 6, clip.frames, clip.labels[0], SETTINGS, resume=True,
                               on_frame=on_frame)
        t.join(60)
        on_killed = _sessions_of(replicas, 0)
    assert spread and all(n is not None and n >= 1 for n in spread[0]), spread  # every replica got sessions
    for run in runs:
        _in_order(run, FRAMES)
    moved = [r for r in runs if r.session_ids[0] in on_killed]
    kept = [r for r in runs if r.session_ids[0] not in on_killed]
    assert moved and kept
    assert all(r.moved for r in moved) and not any(r.moved for r in kept)
    undisturbed = [jf(clip.labels, np.stack(r.labels)) for r in kept]
    assert max(undisturbed) - min(undisturbed) < 1e-9  # same weights, same settings: the same masks
    for r in moved:
        score = jf(clip.labels, np.stack(r.labels))
        assert abs(score - undisturbed[0]) <= 0.05, (score, undisturbed[0])


def _replica_with_tag(replicas: ReplicaSet, tag: str) -> int | None:
    for i in range(len(replicas.procs)):
        for line in replicas.log(i).splitlines():
            if line.startswith("{") and '"session_start"' in line and json.loads(line).get("tag") == tag:
                return i
    return None


def test_drain_moves_sessions_with_no_error_also_from_the_cli(tmp_path: Path) -> None:
    video = generate(SyntheticConfig(height=240, width=320, num_frames=48, num_objects=2, seed=5))
    frames_dir = write_synthetic(video, tmp_path / "data")
    mask = tmp_path / "data" / "Annotations" / "480p" / video.name / "00000.png"
    out = tmp_path / "out"
    with ReplicaSet(2, grace=120, cwd=REPO) as replicas:
        cli = subprocess.Popen(
            [sys.executable, "-m", "mevos", "stream", str(frames_dir), "--mask", str(mask), "--server", replicas.target,
             "--resume", "--out", str(out), "--overlay", "none", "--window", "1", "--top-k", "10", "--mem-frames", "4"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
        deadline = time.monotonic() + 120
        drained = None
        while drained is None and cli.poll() is None and time.monotonic() < deadline:
            drained = _replica_with_tag(replicas, f"stream {video.name}")
            time.sleep(0.05)
        assert drained is not None, cli.communicate(timeout=60)
        # two more sessions from Python (round_robin: one per replica), then drain the CLI's replica
        started = threading.Event()
        answered = [0, 0]

        def on_frame(k: int, index: int) -> None:
            answered[k] += 1
            if min(answered) >= 1:
                started.set()

        runs: list[SessionRun] = []
        python_sessions = threading.Thread(target=lambda: runs.extend(stream_sessions(
            replicas.target, 2, video.frames, video.labels[0], SETTINGS, resume=True, window=1, on_frame=on_frame)))
        python_sessions.start()
        assert started.wait(300)
        assert cli.poll() is None, "the CLI finished before the drain could start"
        replicas.term(drained)
        cli_out, cli_err = cli.communicate(timeout=300)
        python_sessions.join(300)
        assert replicas.procs[drained].wait(120) == 0
        drained_log = replicas.log(drained)
        on_drained = _sessions_of(replicas, drained)
    assert cli.returncode == 0, cli_err[-3000:]
    assert "48 frames" in cli_out and "the session moved" in cli_out, cli_out
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(48)]
    assert read_label_png(out / "00047.png").shape == (240, 320)
    assert len(runs) == 2
    for run in runs:
        _in_order(run, 48)
        assert run.moved == (run.session_ids[0] in on_drained)  # those on the drained replica moved, only those
    assert '"grace_ended"' not in drained_log  # every session left well before the grace ended
