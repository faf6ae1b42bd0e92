"""`mevos train` as a process: torchrun with two CPU processes (gloo), and a kill mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mevos.model import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--no-progress", "--threads", "1", "--checkpoint-every", "1", "--log-every", "1"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no dependence on the host's network setup
    return env


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_two_cpu_processes_end_with_identical_weights(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # --standalone: a c10d rendezvous on a free localhost port, so parallel test runs never collide.
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "mevos", "train", str(videos),
           "--out", str(out), *TINY, "--rank-weights"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(out / "rank0.pt", weights_only=True), torch.load(out / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta = read_checkpoint(out / "final.pt")["metadata"]
    assert meta["world_size"] == 2 and meta["steps"] == 4 and meta["trained"] is True


def test_kill_then_resume_ends_where_an_uninterrupted_run_ends(videos: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mevos", "train", str(videos), *TINY]
    straight = subprocess.run([*base, "--out", str(tmp_path / "a")], cwd=REPO, env=_env(), capture_output=True,
                              text=True, timeout=120)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run = tmp_path / "b"
    proc = subprocess.Popen([*base, "--out", str(run)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not (run / "last.pt").exists():
        pytest.fail("the run was killed before it wrote any checkpoint")
    # What a kill inside a checkpoint write leaves (the kill above may or may not have hit one).
    (run / ".last.pt.0badc0de.partial").write_bytes(b"cut short")
    with open(run / "log.jsonl", "a") as log:
        log.write('{"event": "step", "step": 99}\n{"event": "st')  # a step never checkpointed, a cut line
    resumed = subprocess.run([*base, "--out", str(run), "--resume", "auto"], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = read_checkpoint(tmp_path / "a" / "last.pt")
    b = read_checkpoint(run / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 4
    assert not list(run.glob("**/*.partial")), "partial files left behind"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("event") == "step"]
    assert steps == [1, 2, 3, 4], f"each step logged once, in order: {steps}"
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
