"""Optional bearer-token auth: every mevos.v1 call needs `authorization: Bearer <token>` metadata;
health checks and reflection stay open (load balancers and grpcurl probe them)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

from mevos.env import load_token  # noqa: F401 - where the server's callers have always found it

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _aborting_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the right bearer token with UNAUTHENTICATED."""

    def __init__(self, token: str, on_reject: Callable[[str], None] | None = None) -> None:
        self._expected = f"bearer {token}".encode()
        self._on_reject = on_reject

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(EXEMPT_PREFIXES):
            return continuation(details)
        got = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode(errors="replace")
        scheme, _, cred = got.partition(" ")
        if got and hmac.compare_digest(f"{scheme.lower()} {cred.strip()}".encode(), self._expected):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        reason = ("missing 'authorization: Bearer <token>' metadata" if not got
                  else "invalid token in 'authorization' metadata")
        if self._on_reject is not None:
            self._on_reject(details.method)
        return _aborting_handler(handler, reason)
