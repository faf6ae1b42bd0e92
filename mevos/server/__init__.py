"""The gRPC server: servicer, sessions, the cross-session batching scheduler, limits, auth, metrics.

    from mevos.server import ServerConfig, create_server
    server, port = create_server(backend, ServerConfig(port=0))

Needs the `serve` extra (grpcio, grpcio-health-checking, grpcio-reflection, protobuf,
prometheus-client); importing this package without it names the extra to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mevos.server.app import MevosServer, ServerConfig, create_server
    from mevos.server.limits import Limits

__all__ = ["MevosServer", "ServerConfig", "Limits", "create_server"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import mevos.server.scheduler` works without grpc installed.
    if name in ("MevosServer", "ServerConfig", "create_server"):
        from mevos.server import app

        return getattr(app, name)
    if name == "Limits":
        from mevos.server.limits import Limits

        return Limits
    raise AttributeError(name)
