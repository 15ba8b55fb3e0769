"""Answer a unary call whose request bytes are not a valid message with INVALID_ARGUMENT.

grpc deserialises a request before any of our code runs; when that fails it logs a traceback and
answers UNKNOWN ("Unexpected DecodeError"), which reads like a server fault. `register` hands a
generated `add_*Servicer_to_server` function a stand-in server that rewrites each unary-unary
handler: its deserialiser returns an `UnreadableRequest` instead of raising, and the wrapped method
aborts that call with INVALID_ARGUMENT naming the method and the reason. Streaming requests are
left as they are (the recognizer's stream reader already turns a bad message into
INVALID_ARGUMENT).

A request larger than `INLINE_PARSE_MAX_BYTES` is parsed in a worker thread rather than on the
event loop: a few MB of a million empty repeated items take protobuf long enough to stall every
other call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

import grpc


INLINE_PARSE_MAX_BYTES = 64 * 1024  # larger requests are parsed off the event loop


class UnreadableRequest:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class UnparsedRequest:
    """Stands in for a request too large to parse on the event loop, until a thread parses it."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """A parser that returns `UnreadableRequest` instead of raising."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data) if deserialize else data
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return UnreadableRequest(exc)

    return parse


def _deferring(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """What gRPC calls on the event loop: small requests parsed at once, large ones left to a thread."""
    return lambda data: parse(data) if len(data) <= INLINE_PARSE_MAX_BYTES else UnparsedRequest(data)


REASON_MAX_CHARS = 300  # of a parser's error repeated in the status message

Refused = Callable[[str, grpc.StatusCode], None]  # told (method name, code) of each call refused


def _guarded(service: str, method: str, behavior: Callable, parse: Callable[[bytes], Any], on_refused: Optional[Refused]) -> Callable:
    async def call(request, context):
        if isinstance(request, UnparsedRequest):
            request = await asyncio.get_running_loop().run_in_executor(None, parse, request.data)
        if isinstance(request, UnreadableRequest):
            error = request.error
            if on_refused:
                on_refused(method, grpc.StatusCode.INVALID_ARGUMENT)
            reason = f"{type(error).__name__}: {error}"[:REASON_MAX_CHARS]
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{service}/{method}: unreadable request ({reason})")
        return await behavior(request, context)

    return call


def guard_handlers(service: str, handlers: dict[str, grpc.RpcMethodHandler], on_refused: Optional[Refused] = None) -> dict[str, grpc.RpcMethodHandler]:
    """The same handlers, each unary-unary one answering unparseable bytes with INVALID_ARGUMENT
    (and telling `on_refused`, for the metrics) and parsing large requests off the event loop."""
    out = {}
    for name, handler in handlers.items():
        if not handler.request_streaming and not handler.response_streaming:
            parse = _tolerant(handler.request_deserializer)
            handler = handler._replace(
                request_deserializer=_deferring(parse),
                unary_unary=_guarded(service, name, handler.unary_unary, parse, on_refused),
            )
        out[name] = handler
    return out


class _GuardingServer:
    """What a generated `add_*Servicer_to_server` sees: it registers the guarded handlers."""

    def __init__(self, server, on_refused: Optional[Refused]) -> None:
        self._server, self._on_refused = server, on_refused
        self.registered = False

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers arrive, by name, in add_registered_method_handlers below

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        guarded = guard_handlers(service, handlers, self._on_refused)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        self._server.add_registered_method_handlers(service, guarded)
        self.registered = True


def register(add_servicer: Callable, servicer, server, on_refused: Optional[Refused] = None) -> None:
    """`add_servicer(servicer, server)`, with unreadable unary requests answered INVALID_ARGUMENT."""
    stand_in = _GuardingServer(server, on_refused)
    add_servicer(servicer, stand_in)
    if not stand_in.registered:  # stubs from a grpcio-tools without registered handlers
        raise RuntimeError(f"{add_servicer.__name__} did not register its handlers by name; regenerate the stubs (python -m serving.gen_protos)")
