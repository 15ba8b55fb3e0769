"""Answer a unary call whose request bytes are not a valid message with INVALID_ARGUMENT.

grpc deserialises a request before any of our code runs; when that fails it logs a traceback and
answers UNKNOWN ("Unexpected DecodeError"), which reads like a server fault. `register` hands a
generated `add_*Servicer_to_server` function a stand-in server that rewrites each unary-unary
handler: its deserialiser returns an `UnreadableRequest` instead of raising, and the wrapped method
aborts that call with INVALID_ARGUMENT naming the method and the reason. Streaming requests are
left as they are (the recognizer's stream reader already turns a bad message into
INVALID_ARGUMENT).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import grpc


class UnreadableRequest:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data) if deserialize else data
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return UnreadableRequest(exc)

    return parse


Refused = Callable[[str, grpc.StatusCode], None]  # told (method name, code) of each call refused


def _guarded(service: str, method: str, behavior: Callable, on_refused: Optional[Refused]) -> Callable:
    async def call(request, context):
        if isinstance(request, UnreadableRequest):
            error = request.error
            if on_refused:
                on_refused(method, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{service}/{method}: unreadable request ({type(error).__name__}: {error})")
        return await behavior(request, context)

    return call


def guard_handlers(service: str, handlers: dict[str, grpc.RpcMethodHandler], on_refused: Optional[Refused] = None) -> dict[str, grpc.RpcMethodHandler]:
    """The same handlers, each unary-unary one answering unparseable bytes with INVALID_ARGUMENT
    (and telling `on_refused`, for the metrics)."""
    out = {}
    for name, handler in handlers.items():
        if not handler.request_streaming and not handler.response_streaming:
            handler = handler._replace(
                request_deserializer=_tolerant(handler.request_deserializer),
                unary_unary=_guarded(service, name, handler.unary_unary, on_refused),
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
