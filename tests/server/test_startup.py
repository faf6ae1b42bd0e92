"""Issue 13, findings 7 (a second SIGTERM forces the exit), 8 (start-up errors are one clear line
and exit code 2) and 9 (ServerInfo.model shows no server path), against `mevos serve` processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevos.client import ClientError, TrackingClient

from .conftest import SETTINGS, Served, start
from .test_malformed import Healthy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def busy(backend, video) -> Iterator[tuple[Served, Healthy]]:  # noqa: ANN001
    s = start(backend)
    h = Healthy(s, backend, video)
    h.check()
    yield s, h
    h.session.close_send()
    h.client.close()
    s.server.stop(0)


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mevos", "serve", "--threads", "1", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _certs(tmp: Path) -> tuple[Path, Path, Path]:
    """cert.pem with key.pem, and other.pem: a key of another certificate."""
    for name in ("key", "other"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp / f"{name}.pem"),
                        "-out", str(tmp / f"{name}-cert.pem"), "-days", "1", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
    return tmp / "key-cert.pem", tmp / "key.pem", tmp / "other.pem"


def test_8_start_up_errors_are_one_line_and_exit_2(busy, tmp_path: Path) -> None:  # noqa: ANN001
    served, healthy = busy
    cases = {"port in use": (["--port", str(served.port), "--no-metrics"], "the port is in use")}
    if shutil.which("openssl"):
        cert, key, other = _certs(tmp_path)
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        cases["key of another certificate"] = (["--port", "0", "--no-metrics", "--tls-cert", str(cert), "--tls-key",
                                                str(other)], "the key does not match the certificate")
        cases["garbage PEM"] = (["--port", "0", "--no-metrics", "--tls-cert", str(garbage), "--tls-key", str(key)],
                                "not a valid PEM certificate chain and private key")
    procs = {name: _serve(*args) for name, (args, _) in cases.items()}  # in parallel: each imports torch
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{err}"
        assert "Traceback" not in err, f"{name}:\n{err}"
        assert len(lines) == 1 and lines[0].startswith("mevos serve: error: "), f"{name}:\n{err}"
        assert cases[name][1] in lines[0], f"{name}: {lines[0]}"
    with served.client() as client:
        assert client.health() == "SERVING"
    healthy.check()


def test_7_second_sigterm_forces_exit_and_9_model_shows_no_path(busy, tmp_path: Path, video) -> None:  # noqa: ANN001
    from mevos.model import build_model, preset
    from mevos.model.checkpoint import save_checkpoint

    served, healthy = busy
    ckpt = save_checkpoint(tmp_path / "weights" / "ckpt.pt", build_model(preset("small"), seed=0)).resolve()
    port_file = tmp_path / "port"
    proc = _serve("--port", "0", "--port-file", str(port_file), "--no-metrics", "--grace", "60", "--model", str(ckpt))
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port_file.exists(), proc.communicate(timeout=5)[1] if proc.poll() is not None else "no port file"
        with TrackingClient(f"127.0.0.1:{port_file.read_text().strip()}") as client:
            client.wait_ready(30)
            info = client.server_info()
            assert "ckpt.pt" in info.model and str(ckpt.parent) not in info.model, info.model
            s = client.session(settings=SETTINGS, image_format="raw")
            s.send(video.frames[0], masks=video.labels[0])
            s.receive()
            proc.send_signal(signal.SIGTERM)  # drain: 60 s of grace for the open session
            deadline = time.monotonic() + 10
            while client.health() != "NOT_SERVING" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.health() == "NOT_SERVING"
            with pytest.raises(ClientError) as err:
                list(client.track(video.frames[:1], video.labels[0], settings=SETTINGS))
            assert err.value.code == "UNAVAILABLE" and "shutting down" in err.value.details
            assert proc.poll() is None  # still draining
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 1
            s.cancel()
        err_text = proc.communicate(timeout=5)[1]
        assert "again: exiting without draining" in err_text and "Traceback" not in err_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with served.client() as client:
        assert client.health() == "SERVING"
    healthy.check()
