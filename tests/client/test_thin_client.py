"""The client is thin: it imports neither torch nor the server (issue 11, item 5), and its server
targets (one address, a replica list, a gRPC URI) parse as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mevos.client.targets import HEALTH_SERVICE, parse_target
from mevos.errors import UsageError

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import sys
{body}
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "mevos.server", "mevos.runtime")))
assert not heavy, heavy
"""


def _run(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHECK.format(body=body)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_client_modules_import_neither_torch_nor_the_server() -> None:
    pytest.importorskip("grpc", reason="the serve extra (grpcio) is not installed")
    r = _run("import mevos.client.cli, mevos.client.client, mevos.client.resume, mevos.client.targets\n"
             "from mevos.client import TrackingClient")
    assert r.returncode == 0, r.stderr


def test_stream_help_answers_without_torch() -> None:
    pytest.importorskip("grpc", reason="the serve extra (grpcio) is not installed")
    r = _run("from mevos.cli import main\n"
             "try:\n    main(['stream', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n")
    assert r.returncode == 0, r.stderr
    assert "--resume" in r.stdout and "--server" in r.stdout and "dns:///" in r.stdout


def test_one_address_keeps_grpc_defaults() -> None:
    t = parse_target("127.0.0.1:50051")
    assert (t.uri, t.balanced, t.service_config) == ("127.0.0.1:50051", False, None)


def test_a_replica_list_is_one_balanced_multi_address_target() -> None:
    t = parse_target("127.0.0.1:1, localhost:2,127.0.0.1:3")
    assert t.uri == "ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3" and t.balanced
    config = json.loads(t.service_config or "")
    assert config == {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": HEALTH_SERVICE}}
    assert parse_target("[::1]:1,[::1]:2").uri == "ipv6:[::1]:1,[::1]:2"


def test_dns_names_are_balanced_and_uris_pass_through() -> None:
    assert parse_target("dns:///mevos.default.svc:50051").balanced
    assert not parse_target("unix:/tmp/mevos.sock").balanced
    assert parse_target("127.0.0.1:1", balance=True).balanced


@pytest.mark.parametrize("servers, message", [
    ("127.0.0.1:1,", "empty entry"),
    ("127.0.0.1:1,127.0.0.1:1", "names a server twice"),
    ("127.0.0.1,127.0.0.1:2", "expected HOST:PORT"),
    ("127.0.0.1:0,127.0.0.1:2", "not in 1..65535"),
    ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
    ("", "no server"),
])
def test_bad_targets_are_clear_errors(servers: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_target(servers)
