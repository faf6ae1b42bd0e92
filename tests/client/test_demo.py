"""`python -m mevos.demo` (what `make demo` runs) streams through a background server and stops it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="the serve extra (grpcio) is not installed")

REPO = Path(__file__).resolve().parents[2]


def test_demo_streams_through_grpc_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "mevos.demo", "--out", str(out), "--frames", "3"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "J&F" in done.stdout and "FPS" in done.stdout
    assert "streaming through mevos serve" in done.stderr
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert (out / "overlay.mp4").is_file()
    log = (out / "server.log").read_text()
    assert "serving" in log and "session_end" in log and "code=OK" in log and "stopped" in log
