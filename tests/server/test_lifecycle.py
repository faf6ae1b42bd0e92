"""Lifecycle: cancelled and vanished clients leave no session behind within a second; idle
timeouts and deadlines end sessions; stop() drains; `mevos serve` exits cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mevos.client import ClientError, TrackingClient

from .conftest import SETTINGS, Served, start

REPO = Path(__file__).resolve().parents[2]


def _metric(served: Served, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{served.server.metrics_port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


def _gone_within(served: Served, seconds: float = 1.0) -> bool:
    """True when the server reports no open session (both through ServerInfo and metrics) in time."""
    deadline = time.monotonic() + seconds
    with served.client() as client:
        while time.monotonic() < deadline:
            if client.server_info().active_sessions == 0 and _metric(served, "mevos_sessions_active") == 0:
                return True
            time.sleep(0.02)
    return False


def test_cancelled_client_leaves_no_session(served, video) -> None:  # noqa: ANN001
    with served.client() as client:
        s = client.session(settings=SETTINGS, image_format="raw")
        s.send(video.frames[0], masks=video.labels[0])
        s.receive()
        s.send(video.frames[1])
        assert client.server_info().active_sessions == 1
        s.cancel()
        t0 = time.monotonic()
        assert _gone_within(served, 1.0)
        assert time.monotonic() - t0 < 1.0


def test_vanished_client_process_leaves_no_session(served, video) -> None:  # noqa: ANN001
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from mevos.client import TrackingClient
        from mevos.data.synthetic import SyntheticConfig, generate
        v = generate(SyntheticConfig(height=120, width=160, num_frames=3, num_objects=3, seed=3))
        c = TrackingClient("{served.target}")
        s = c.session(settings={SETTINGS!r}, image_format="raw")
        s.send(v.frames[0], masks=v.labels[0])
        s.receive()
        s.send(v.frames[1])
        print("streaming", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
        with served.client() as client:
            assert client.server_info().active_sessions == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _gone_within(served, 1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_idle_session_times_out(backend, video) -> None:  # noqa: ANN001
    s = start(backend, idle_timeout_s=0.3)
    try:
        with s.client() as client:
            sess = client.session(settings=SETTINGS, image_format="raw")
            sess.send(video.frames[0], masks=video.labels[0])
            sess.receive()
            with pytest.raises(ClientError) as err:
                sess.receive()  # no second frame is sent
            assert err.value.code == "DEADLINE_EXCEEDED" and "idle" in err.value.details
        assert _gone_within(s, 1.0)
    finally:
        s.server.stop(0)


def test_deadline_is_honoured(served, video) -> None:  # noqa: ANN001
    with served.client() as client:
        sess = client.session(settings=SETTINGS, image_format="raw", timeout=0.5)
        sess.send(video.frames[0], masks=video.labels[0])
        sess.receive()
        with pytest.raises(ClientError) as err:
            sess.receive()
        assert err.value.code == "DEADLINE_EXCEEDED"
    assert _gone_within(served, 1.0)


def test_stop_drains_open_sessions_then_refuses(backend, video) -> None:  # noqa: ANN001
    s = start(backend)
    client = s.client()
    sess = client.session(settings=SETTINGS, image_format="raw")
    sess.send(video.frames[0], masks=video.labels[0])
    sess.receive()
    stopper = threading.Thread(target=s.server.stop, kwargs={"grace": 30.0})
    stopper.start()
    time.sleep(0.2)
    # The open session still gets its frames answered during the grace period.
    for f in video.frames[1:3]:
        sess.send(f)
        assert sess.receive().labels.shape == f.shape[:2]
    sess.close_send()
    assert list(sess) == []
    stopper.join(30)
    assert not stopper.is_alive()
    with pytest.raises(ClientError) as err:
        client.server_info(timeout=2)
    assert err.value.code == "UNAVAILABLE"
    client.close()


def test_serve_command_health_and_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mevos", "serve", "--port", "0", "--port-file", str(port_file), "--metrics-port", "0",
         "--grace", "2", "--threads", "1"],
        stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port_file.exists(), proc.stderr.read() if proc.stderr else ""
        with TrackingClient(f"127.0.0.1:{port_file.read_text().strip()}") as client:
            client.wait_ready(10)
            info = client.server_info()
            assert info.backend == "torch" and info.model
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log = proc.stderr.read() if proc.stderr else ""
        assert '"event": "serving"' in log and '"event": "draining"' in log and '"event": "stopped"' in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
