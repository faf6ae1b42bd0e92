"""Server targets: one `host:port`, a comma list of replicas, or any gRPC target URI.

A comma list becomes one gRPC target with many addresses (`ipv4:a:p,b:p` / `ipv6:[a]:p,...`,
gRPC's own static resolvers), and a list or a `dns:` name gets gRPC's `round_robin` policy with
client-side health checking (grpc.health.v1 Watch on every replica; a replica that reports
NOT_SERVING, e.g. while draining, gets no new calls). No balancing code of ours: the service
config below asks gRPC for it.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass

from mevos.errors import UsageError

#: the service whose health the balancer watches on every replica (mevos serve reports it)
HEALTH_SERVICE = "mevos.v1.Tracking"
#: gRPC URI schemes passed through untouched
SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


@dataclass(frozen=True)
class Target:
    """How to reach the server(s). uri: the gRPC target; addresses: the replicas named
    explicitly (empty for a name resolved by gRPC); balanced: round_robin + health checking."""

    uri: str
    addresses: tuple[str, ...]
    balanced: bool

    @property
    def service_config(self) -> str | None:
        """JSON for the `grpc.service_config` channel option (None: gRPC's default, pick_first)."""
        if not self.balanced:
            return None
        return json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                           "healthCheckConfig": {"serviceName": HEALTH_SERVICE}})


def _split_host_port(item: str) -> tuple[str, str]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if not rest.startswith(":") or not rest[1:]:
            raise UsageError(f"server address {item!r}: expected [IPv6]:PORT")
        return host, rest[1:]
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port:
        raise UsageError(f"server address {item!r}: expected HOST:PORT")
    return host, port


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The host as an IP address; a name is resolved here, once (use dns:///NAME to have gRPC
    re-resolve it)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"server host {host!r} does not resolve: {exc.strerror}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    v4 = [a for a in addresses if a.version == 4]
    return v4[0] if v4 else addresses[0]


def parse_target(servers: str, balance: bool | None = None) -> Target:
    """`host:port` (one server, gRPC's defaults), `a:p,b:p,...` (replicas, balanced), or a gRPC
    URI such as `dns:///mevos.default.svc:50051` (balanced when it is a dns: name). balance
    overrides the choice (True: round_robin + health checking even for one address)."""
    servers = servers.strip()
    if not servers:
        raise UsageError("no server given")
    if servers.startswith(SCHEMES) or "," not in servers:
        balanced = servers.startswith("dns:") if balance is None else balance
        addresses = () if servers.startswith(SCHEMES) else (servers,)
        return Target(servers, addresses, balanced)
    items = [s.strip() for s in servers.split(",")]
    if any(not s for s in items):
        raise UsageError(f"server list {servers!r} has an empty entry")
    if len(set(items)) != len(items):
        raise UsageError(f"server list {servers!r} names a server twice")
    parsed = []
    for item in items:
        host, port = _split_host_port(item)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"server address {item!r}: port {port!r} is not in 1..65535")
        parsed.append((_literal(host), int(port)))
    versions = {a.version for a, _ in parsed}
    if len(versions) > 1:  # one gRPC target holds addresses of one family
        raise UsageError(f"server list {servers!r} mixes IPv4 and IPv6 addresses; use one family, or a dns:/// name")
    if versions == {4}:
        uri = "ipv4:" + ",".join(f"{a}:{p}" for a, p in parsed)
    else:
        uri = "ipv6:" + ",".join(f"[{a}]:{p}" for a, p in parsed)
    return Target(uri, tuple(items), True if balance is None else balance)
