"""Answer a unary call whose request bytes are not a valid message with INVALID_ARGUMENT.

grpc deserialises a request before any of our code runs; when that fails it logs a traceback and
answers UNKNOWN ("Unexpected DecodeError"), which reads like a server fault. `register` hands a
generated `add_*Servicer_to_server` function a stand-in server that rewrites each unary-unary
handler: its deserialiser returns an `UnreadableRequest` instead of raising, and the wrapped method
aborts that call with INVALID_ARGUMENT naming the method and the reason. Stream messages keep
gRPC's parser (the recognizer's stream reader turns a bad message into INVALID_ARGUMENT).

A request larger than `INLINE_PARSE_MAX_BYTES` is parsed only once a walk over its wire format
(no parse) has counted no more fields than its message can hold (`field_limit`: at most
`MAX_REQUEST_FIELDS` where it has repeated fields), and a unary one in a worker thread rather
than on the event loop: protobuf parses a few MB of a million empty items (or of one field
repeated a million times) in one call that holds the GIL, which would stall every other call even
from a thread. A stream message over the limit ends its stream with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

import grpc
from google.protobuf import descriptor_pool

INLINE_PARSE_MAX_BYTES = 64 * 1024  # larger requests are counted before parsing, unary ones parsed off the event loop
MAX_REQUEST_FIELDS = 16_384  # fields (each repeated item counts) of a message with repeated fields
SPARE_FIELDS = 64  # beyond a message's declared fields: room for fields a newer client may add
REASON_MAX_CHARS = 300  # of a parser's error repeated in the status message


class UnreadableRequest:
    """Stands in for a request that is not parsed: `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class UnparsedRequest:
    """Stands in for a request too large to parse on the event loop, until a thread parses it."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def _varint(data: bytes, pos: int, end: int) -> tuple[int | None, int]:
    """The protobuf varint at `pos` and the position after it (None: cut short or over 10 bytes)."""
    value = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None, pos


def fields_over(data: bytes, message, limit: int) -> bool:
    """Whether `data`, a serialized message of descriptor `message`, holds more than `limit`
    fields at every depth (each item of a repeated field counts; a packed array counts once),
    by walking its wire format without parsing it. Stops past `limit`; framing that does not
    hold together is left to the parser to refuse."""
    stack, count = [(0, len(data), message)], 0
    while stack:
        pos, end, descriptor = stack.pop()
        while pos < end:
            key, pos = _varint(data, pos, end)
            count += 1
            if key is None or count > limit:
                return key is not None
            wire = key & 7
            if wire == 0:
                _, pos = _varint(data, pos, end)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                length, pos = _varint(data, pos, end)
                if length is None or pos + length > end:
                    return False
                field = descriptor.fields_by_number.get(key >> 3) if descriptor else None
                if field is not None and field.message_type is not None:
                    stack.append((pos, pos + length, field.message_type))
                pos += length
            else:  # groups: not in proto3
                return False
    return False


def field_limit(message, seen: frozenset = frozenset()) -> int:
    """The most fields a well-formed `message` holds: `MAX_REQUEST_FIELDS` when it or a message
    inside it has a repeated field, else its declared fields (nested ones included) plus
    `SPARE_FIELDS`."""
    count = len(message.fields)
    for field in message.fields:
        if field.is_repeated:
            return MAX_REQUEST_FIELDS
        if field.message_type is not None and field.message_type.full_name not in seen:
            nested = field_limit(field.message_type, seen | {message.full_name})
            if nested == MAX_REQUEST_FIELDS:
                return nested
            count += nested
    return min(MAX_REQUEST_FIELDS, count + SPARE_FIELDS)


def _too_many_fields(data: bytes, message) -> str | None:
    """Why a large request is refused unparsed (None: it may be parsed)."""
    if message is None or len(data) <= INLINE_PARSE_MAX_BYTES:
        return None
    limit = field_limit(message)
    if not fields_over(data, message, limit):
        return None
    return f"more than {limit:,} fields (repeated items included) in one {message.name}; send fewer per call"


def _tolerant(deserialize: Callable[[bytes], Any] | None, message=None) -> Callable[[bytes], Any]:
    """A parser that returns `UnreadableRequest` instead of raising, and (given the message's
    descriptor) refuses a large request of too many fields before parsing it."""

    def parse(data: bytes) -> Any:
        refusal = _too_many_fields(data, message)
        if refusal:
            return UnreadableRequest(refusal)
        try:
            return deserialize(data) if deserialize else data
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return UnreadableRequest(f"unreadable request ({type(exc).__name__}: {exc})"[:REASON_MAX_CHARS])

    return parse


def _counted(deserialize: Callable[[bytes], Any] | None, message) -> Callable[[bytes], Any]:
    """A stream's parser: raises ValueError for a large message of too many fields, unparsed."""

    def parse(data: bytes) -> Any:
        refusal = _too_many_fields(data, message)
        if refusal:
            raise ValueError(refusal)
        return deserialize(data) if deserialize else data

    return parse


def _request_descriptor(service: str, method: str):
    """The descriptor of `service`/`method`'s request message, when the default pool knows it."""
    try:
        return descriptor_pool.Default().FindServiceByName(service).FindMethodByName(method).input_type
    except (KeyError, AttributeError):
        return None


def _deferring(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """What gRPC calls on the event loop: small requests parsed at once, large ones left to a thread."""
    return lambda data: parse(data) if len(data) <= INLINE_PARSE_MAX_BYTES else UnparsedRequest(data)


Refused = Callable[[str, grpc.StatusCode], None]  # told (method name, code) of each call refused


def _guarded(service: str, method: str, behavior: Callable, parse: Callable[[bytes], Any], on_refused: Optional[Refused]) -> Callable:
    async def call(request, context):
        if isinstance(request, UnparsedRequest):
            request = await asyncio.get_running_loop().run_in_executor(None, parse, request.data)
        if isinstance(request, UnreadableRequest):
            if on_refused:
                on_refused(method, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{service}/{method}: {request.reason}")
        return await behavior(request, context)

    return call


def guard_handlers(service: str, handlers: dict[str, grpc.RpcMethodHandler], on_refused: Optional[Refused] = None) -> dict[str, grpc.RpcMethodHandler]:
    """The same handlers, each unary-unary one answering unparseable bytes, or a large request of
    too many fields, with INVALID_ARGUMENT (and telling `on_refused`, for the metrics), and parsing
    large requests off the event loop."""
    out = {}
    for name, handler in handlers.items():
        message = _request_descriptor(service, name)
        if not handler.request_streaming and not handler.response_streaming:
            parse = _tolerant(handler.request_deserializer, message)
            handler = handler._replace(
                request_deserializer=_deferring(parse),
                unary_unary=_guarded(service, name, handler.unary_unary, parse, on_refused),
            )
        elif handler.request_streaming:
            handler = handler._replace(request_deserializer=_counted(handler.request_deserializer, message))
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
