"""Token auth (UNAUTHENTICATED without the right bearer token; health stays open) and TLS."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mevos.client import ClientError, TrackingClient
from mevos.server import Limits, ServerConfig, create_server
from mevos.server.auth import load_token

from .conftest import SETTINGS

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def secured(backend) -> Iterator[str]:  # noqa: ANN001
    server, port = create_server(backend, ServerConfig(port=0, token=TOKEN, limits=Limits(max_sessions=2)))
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("token, message", [(None, "missing 'authorization"), ("wrong", "invalid token")])
def test_calls_without_the_token_are_unauthenticated(secured, video, token, message, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("MEVOS_TOKEN", raising=False)
    with TrackingClient(secured, token=token) as client:
        with pytest.raises(ClientError) as err:
            client.server_info()
        assert err.value.code == "UNAUTHENTICATED" and message in err.value.details
        with pytest.raises(ClientError) as err:
            list(client.track(video.frames[:2], video.labels[0], settings=SETTINGS))
        assert err.value.code == "UNAUTHENTICATED"
        assert client.health() == "SERVING"  # health checks need no token


def test_the_right_token_works_also_from_the_environment(secured, video, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MEVOS_TOKEN", TOKEN)
    with TrackingClient(secured) as client:
        assert client.server_info().auth_required
        results = list(client.track(video.frames[:2], video.labels[0], settings=SETTINGS))
        assert len(results) == 2


def test_load_token_prefers_the_file(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MEVOS_TOKEN", "from-env")
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert load_token(str(f)) == "from-file"
    assert load_token(None) == "from-env"
    monkeypatch.delenv("MEVOS_TOKEN")
    assert load_token(None) is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls(backend, video, tmp_path: Path) -> None:  # noqa: ANN001
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    server, port = create_server(backend, ServerConfig(port=0, tls_cert=str(cert), tls_key=str(key)))
    try:
        with TrackingClient(f"localhost:{port}", root_certificates=cert.read_bytes()) as client:
            results = list(client.track(video.frames[:2], video.labels[0], settings=SETTINGS))
            assert len(results) == 2 and isinstance(results[0].labels, np.ndarray)
        with TrackingClient(f"localhost:{port}") as plain, pytest.raises(ClientError) as err:
            plain.server_info(timeout=3)
        assert err.value.code == "UNAVAILABLE"
    finally:
        server.stop(0)
