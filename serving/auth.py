"""Bearer-token authentication for every gRPC call except the health check.

Clients send `authorization: Bearer TOKEN` metadata. The token is compared in constant time;
a missing or wrong token gets UNAUTHENTICATED before any handler runs.
"""

from __future__ import annotations

import hmac
from typing import Callable, Optional

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape that aborts with UNAUTHENTICATED."""

    async def abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Require `authorization: Bearer <token>` on every method outside OPEN_PREFIXES."""

    def __init__(self, token: str, on_denied: Optional[Callable[[str, grpc.StatusCode], None]] = None):
        """`on_denied(method name, UNAUTHENTICATED)` is told of each call refused (for the metrics)."""
        if not token:
            raise ValueError("empty auth token")
        self._expected = f"bearer {token}".encode()
        self._on_denied = on_denied

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                sent = value if isinstance(value, str) else value.decode(errors="replace")
        scheme, _, token = sent.partition(" ")
        if hmac.compare_digest(f"{scheme.lower()} {token.strip()}".encode(), self._expected):
            return handler
        if self._on_denied:
            self._on_denied(handler_call_details.method.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED)
        return _denied(handler, "missing or invalid bearer token" if sent else "missing authorization metadata (Bearer token)")
