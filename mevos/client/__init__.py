"""Python client of the mevos gRPC API (needs the `serve` extra: grpcio, protobuf).

    from mevos.client import TrackingClient
    with TrackingClient("127.0.0.1:50051") as client:          # or "a:p,b:p,c:p", "dns:///name:p"
        for result in client.track(frames, first_mask, resume=True):
            ...

Imports neither torch nor the server: a thin client needs only the `serve` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mevos.client.client import ClientError, StreamSession, TrackingClient, TrackResult, make_settings
    from mevos.client.resume import ResumableSession

__all__ = ["TrackingClient", "StreamSession", "ResumableSession", "TrackResult", "ClientError", "make_settings"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import mevos.client` alone never needs grpc; using it does.
    if name == "ResumableSession":
        from mevos.client import resume

        return resume.ResumableSession
    if name in __all__:
        from mevos.client import client

        return getattr(client, name)
    raise AttributeError(name)
