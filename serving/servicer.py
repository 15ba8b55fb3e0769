"""gRPC servicers: captcha.v1.Recognizer and the KServe v2 `inference.GRPCInferenceService`.

Every handler is a coroutine on the server's event loop. Each is wrapped so that it records
request count, status code and latency, and turns an `RpcAbort` into the gRPC status. When a call
is cancelled or its deadline passes, gRPC cancels the handler; the wrapper records that as
CANCELLED or DEADLINE_EXCEEDED, and the images the call still had queued are dropped. Batch and
stream calls report a bad image in that item's `error` field and carry on with the rest. The
status codes each call can end with are listed in docs/serving-errors.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import time
from collections.abc import Callable

import grpc
import numpy as np

import captcha
from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving._proto.captcha.v1 import recognizer_pb2_grpc as pb_grpc
from serving._proto.inference import grpc_service_pb2 as kpb
from serving._proto.inference import grpc_service_pb2_grpc as kpb_grpc
from serving.engine import MESSAGE_MAX_CHARS, Engine, Entry, RpcAbort, cancel_staged, echo

log = logging.getLogger("captcha.serving")

_STREAM_WINDOW = 64  # images one stream may have in flight before reading more requests
# A call cancelled this close to its deadline was ended by the deadline (the client's timer fires
# a moment before the server's own).
_DEADLINE_SLACK_S = 0.05
# A client that goes away mid-stream ends its request stream too, and gRPC cancels the call a
# moment later: a stream whose requests end waits this long before answering OK, so that the call
# is counted CANCELLED, not OK.
_STREAM_END_SETTLE_S = 0.05
INFER_INPUT = "image"  # the one KServe v2 input: BYTES, one encoded image per element
INFER_OUTPUTS = ("text", "confidence")


def _observe(engine: Engine, method: str, code: grpc.StatusCode, started: float) -> None:
    engine.metrics.inc("captcha_requests_total", method=method, code=code.name)
    engine.metrics.observe("captcha_request_latency_seconds", time.perf_counter() - started, method=method)


def _ended_code(context) -> grpc.StatusCode:
    """Why gRPC cancelled a handler: its deadline passed, or the client went away."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= _DEADLINE_SLACK_S else grpc.StatusCode.CANCELLED


async def _settle_stream_end(context) -> None:
    """Wait `_STREAM_END_SETTLE_S` (less when the deadline is nearer) after a stream's requests
    ended: if its client went away, gRPC cancels the call meanwhile."""
    remaining = context.time_remaining()
    wait = _STREAM_END_SETTLE_S if remaining is None else min(_STREAM_END_SETTLE_S, remaining - 2 * _DEADLINE_SLACK_S)
    if wait > 0:
        await asyncio.sleep(wait)


def _rpc(method: str) -> Callable:
    """Wrap a coroutine handler (unary or reader/writer streaming): metrics and status codes."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def handler(self, request, context):
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                return await fn(self, request, context)
            except RpcAbort as exc:
                code = exc.code
                await context.abort(exc.code, exc.message)
            except asyncio.CancelledError:
                code = _ended_code(context)
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                await context.abort(code, f"internal error: {exc!r}"[:MESSAGE_MAX_CHARS])
            finally:
                _observe(self.engine, method, code, started)

        return handler

    return wrap


def _response(entry: Entry, prediction, request_id: str = "") -> pb.RecognizeResponse:
    return pb.RecognizeResponse(
        text=prediction.text, confidence=prediction.confidence, char_confidences=prediction.char_confidences,
        model=entry.model.name, model_version=entry.model.version, id=request_id,
    )


def _error_response(entry: Entry | None, exc: RpcAbort, request_id: str = "") -> pb.RecognizeResponse:
    return pb.RecognizeResponse(
        model=entry.model.name if entry else "", model_version=entry.model.version if entry else "", id=request_id,
        error=pb.ItemError(code=exc.code.value[0], message=exc.message),
    )


class RecognizerServicer(pb_grpc.RecognizerServicer):
    """captcha.v1.Recognizer."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def _item(self, entry: Entry | None, staged, request_id: str = "") -> pb.RecognizeResponse:
        """One item of a batch or stream: its prediction, or its error."""
        if isinstance(staged, RpcAbort):
            return _error_response(entry, staged, request_id)
        try:
            return _response(entry, await self.engine.predict(entry, staged), request_id)
        except RpcAbort as exc:
            return _error_response(entry, exc, request_id)

    @_rpc("Recognize")
    async def Recognize(self, request, context):  # noqa: N802 - gRPC method names
        entry = self.engine.get(request.model)
        staged = await self.engine.stage(entry, request.image, "request")
        return _response(entry, await self.engine.predict(entry, staged), request.id)

    @_rpc("RecognizeBatch")
    async def RecognizeBatch(self, request, context):  # noqa: N802
        entry = self.engine.get(request.model)
        self.engine.check_call_size(len(request.images))
        images = list(request.images)
        staged = await self.engine.stage_many(entry, images, [f"images[{i}]" for i in range(len(images))])
        try:
            results = await asyncio.gather(*(self._item(entry, s) for s in staged))
        finally:
            cancel_staged(staged)  # a no-op once answered; drops the queued rest if the call ended
        return pb.RecognizeBatchResponse(results=results)

    @_rpc("RecognizeStream")
    async def RecognizeStream(self, request_iterator, context):  # noqa: N802
        """Responses go out in request order; requests keep being read (up to a window of
        `_STREAM_WINDOW` images in flight) so that images overlap in the batcher."""
        pending: asyncio.Queue = asyncio.Queue(maxsize=_STREAM_WINDOW)
        reader = asyncio.ensure_future(self._read_stream(request_iterator, pending))
        try:
            while True:
                item = await pending.get()
                if item is None:
                    await _settle_stream_end(context)
                    break
                if isinstance(item, Exception):  # a message that is not a RecognizeRequest: say so, not OK
                    raise RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, f"unreadable stream message: {type(item).__name__}: {item}")
                request_id, entry, staged = item
                await context.write(await self._item(entry, staged, request_id))
        finally:
            reader.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if isinstance(item, tuple):
                    cancel_staged([item[2]])

    async def _read_stream(self, request_iterator, pending: asyncio.Queue) -> None:
        try:
            async for request in request_iterator:
                try:
                    entry = self.engine.get(request.model)
                    staged = await self.engine.stage(entry, request.image, f"stream item {echo(request.id)}" if request.id else "stream item")
                except RpcAbort as exc:
                    entry, staged = self.engine.entries.get(request.model or self.engine.default or ""), exc
                await pending.put((request.id, entry, staged))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client went away (the writer's answer then goes nowhere) or sent a bad message
            await pending.put(exc)
            return
        await pending.put(None)

    @_rpc("Classify")
    async def Classify(self, request, context):  # noqa: N802
        entry = self.engine.get(request.model)
        if entry.model.spec.task != "classification":
            raise RpcAbort(grpc.StatusCode.FAILED_PRECONDITION, f"model {entry.model.name!r} is a {entry.model.spec.task} model; use Recognize")
        if request.top_k < 0:  # checked before any work is done
            raise RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, f"top_k must be 0 (the default, 5) or more, got {request.top_k}")
        staged = await self.engine.stage(entry, request.image, "request")
        row = await self.engine.logits(staged)
        self.engine.metrics.inc("captcha_images_total", model=entry.model.name)
        labels = entry.model.top_k(row[None], request.top_k or 5)[0]
        return pb.ClassifyResponse(
            labels=[pb.Label(name=n, probability=p) for n, p in labels], model=entry.model.name, model_version=entry.model.version
        )

    def _info(self, entry: Entry) -> pb.ModelInfo:
        spec = entry.model.spec
        return pb.ModelInfo(
            name=entry.model.name, version=entry.model.version, task=spec.task, head=spec.head,
            alphabet=spec.labels if isinstance(spec.labels, str) else "",
            class_names=[] if isinstance(spec.labels, str) else [str(c) for c in spec.labels],
            length=spec.length or 0, input_size=list(spec.input_size), channels=spec.channels,
            preprocess=spec.preprocess, architecture=spec.architecture, captchakit_version=spec.captchakit_version,
            max_batch_size=entry.batcher.max_batch, provider=entry.model.provider,
            is_default=entry.model.name == self.engine.default,
            quantization=spec.quantization,
        )

    @_rpc("GetModelInfo")
    async def GetModelInfo(self, request, context):  # noqa: N802
        return self._info(self.engine.get(request.model))

    @_rpc("ListModels")
    async def ListModels(self, request, context):  # noqa: N802
        self.engine.get("")
        return pb.ListModelsResponse(models=[self._info(e) for e in self.engine.entries.values()])


def _invalid(message: str) -> RpcAbort:
    return RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, message)


def _infer_image_count(request, engine: Engine) -> int:
    """How many images a ModelInfer request carries, from its input tensor's metadata alone, checked
    as Triton checks it (one BYTES input, shape [N] or [N, 1], data in `contents` or in one
    `raw_input_contents` entry, never both) before any of its data is read."""
    if len(request.inputs) != 1:
        raise _invalid(f"expected one input tensor ({INFER_INPUT!r}, BYTES), got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name not in ("", INFER_INPUT):
        raise _invalid(f"unknown input {echo(tensor.name)}; this model takes {INFER_INPUT!r}")
    if tensor.datatype != "BYTES":
        raise _invalid(f"input {INFER_INPUT!r} is BYTES (encoded images), not {echo(tensor.datatype)}")
    shape = list(tensor.shape) if len(tensor.shape) <= 2 else [*tensor.shape[:3], "..."]
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or min(shape, default=-1) < 0:
        raise _invalid(f"input shape {echo(shape)} is not [N] or [N, 1] for N images (as Triton: every dimension given, none -1)")
    count = shape[0]
    if count == 0:
        raise _invalid("no images in the input tensor")
    engine.check_call_size(count)
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if request.raw_input_contents:
        if given:
            raise _invalid("contents must not be given when raw_input_contents is used")
        if len(request.raw_input_contents) != len(request.inputs):
            raise _invalid(f"{len(request.raw_input_contents)} raw_input_contents entries for {len(request.inputs)} input tensor")
    elif not given:
        raise _invalid(f"input {INFER_INPUT!r} has no data: give its images in bytes_contents or raw_input_contents")
    elif given != ["bytes_contents"]:
        raise _invalid(f"input {INFER_INPUT!r} takes its images in bytes_contents or raw_input_contents, not {', '.join(given)}")
    elif len(tensor.contents.bytes_contents) != count:
        raise _invalid(f"input shape {shape} does not match its {len(tensor.contents.bytes_contents)} element(s)")
    return count


def _split_raw_bytes(raw: bytes, count: int) -> list[bytes]:
    """A raw BYTES tensor's `count` elements, each 4-byte little-endian length-prefixed; reads no
    further than `count` + 1 elements, so a tensor of a million empty elements costs no more."""
    out, offset = [], 0
    while offset < len(raw):
        if len(out) == count:
            raise _invalid(f"raw_input_contents holds more than the {count} element(s) of the input shape")
        if offset + 4 > len(raw):
            raise _invalid(f"raw_input_contents: element {len(out)} has an incomplete 4-byte length")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise _invalid(f"raw_input_contents: element {len(out)} claims {n:,} bytes; {len(raw) - offset:,} remain")
        out.append(raw[offset : offset + n])
        offset += n
    if len(out) != count:
        raise _invalid(f"input shape [{count}] does not match its {len(out)} element(s)")
    return out


def _requested_outputs(request) -> list[str]:
    """The outputs a ModelInfer request asks for (all when it names none), each at most once."""
    if len(request.outputs) > len(INFER_OUTPUTS):
        raise _invalid(f"{len(request.outputs)} outputs requested; this model has {list(INFER_OUTPUTS)}, each at most once")
    wanted = [o.name for o in request.outputs] or list(INFER_OUTPUTS)
    unknown = [echo(n) for n in wanted if n not in INFER_OUTPUTS]
    if unknown:
        raise _invalid(f"unknown output(s) {', '.join(unknown[:5])}; this model has {list(INFER_OUTPUTS)}")
    if len(set(wanted)) != len(wanted):
        twice = next(n for n in wanted if wanted.count(n) > 1)
        raise _invalid(f"output {twice!r} is requested more than once")
    return wanted


def _serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


class InferenceServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 / Open Inference Protocol: BYTES "image" in, BYTES "text" + FP32 "confidence" out."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def _entry(self, name: str, version: str) -> Entry:
        """The served model `name` (empty: the default) at `version` (empty: the one served);
        another version is NOT_FOUND, as Triton answers: one version of each model is served."""
        entry = self.engine.get(name)
        if version and version != entry.model.version:
            raise RpcAbort(grpc.StatusCode.NOT_FOUND, f"model {entry.model.name!r} has no version {echo(version)}; served: {entry.model.version}")
        return entry

    @_rpc("ServerLive")
    async def ServerLive(self, request, context):  # noqa: N802
        return kpb.ServerLiveResponse(live=True)

    @_rpc("ServerReady")
    async def ServerReady(self, request, context):  # noqa: N802
        return kpb.ServerReadyResponse(ready=self.engine.ready.is_set())

    @_rpc("ModelReady")
    async def ModelReady(self, request, context):  # noqa: N802
        try:  # an empty name is the default model, as in ModelMetadata and ModelInfer
            self._entry(request.name, request.version)
        except RpcAbort:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=True)

    @_rpc("ServerMetadata")
    async def ServerMetadata(self, request, context):  # noqa: N802
        return kpb.ServerMetadataResponse(name="captchakit", version=captcha.__version__, extensions=[])

    @_rpc("ModelMetadata")
    async def ModelMetadata(self, request, context):  # noqa: N802
        entry = self._entry(request.name, request.version)
        meta = kpb.ModelMetadataResponse
        return meta(
            name=entry.model.name, versions=[entry.model.version], platform="captchakit_onnx",
            inputs=[meta.TensorMetadata(name=INFER_INPUT, datatype="BYTES", shape=[-1])],
            outputs=[meta.TensorMetadata(name=n, datatype=t, shape=[-1]) for n, t in zip(INFER_OUTPUTS, ("BYTES", "FP32"))],
        )

    @_rpc("ModelInfer")
    async def ModelInfer(self, request, context):  # noqa: N802
        entry = self._entry(request.model_name, request.model_version)
        count = _infer_image_count(request, self.engine)
        wanted = _requested_outputs(request)
        if request.raw_input_contents:  # split in a thread: the event loop keeps serving the others
            raw = request.raw_input_contents[0]
            images = await asyncio.get_running_loop().run_in_executor(None, _split_raw_bytes, raw, count)
        else:
            images = list(request.inputs[0].contents.bytes_contents)
        staged = await self.engine.stage_many(entry, images, [f"image[{i}]" for i in range(len(images))])
        try:
            failed = next((s for s in staged if isinstance(s, RpcAbort)), None)
            if failed is not None:  # one tensor in, one tensor out: a bad image fails the call
                raise failed
            predictions = await asyncio.gather(*(self.engine.predict(entry, s) for s in staged))
        finally:
            cancel_staged(staged)
        outputs = {
            "text": ("BYTES", _serialize_bytes([p.text.encode() for p in predictions])),
            "confidence": ("FP32", np.asarray([p.confidence for p in predictions], "<f4").tobytes()),
        }
        tensor = kpb.ModelInferResponse.InferOutputTensor
        return kpb.ModelInferResponse(
            model_name=entry.model.name, model_version=entry.model.version, id=request.id,
            outputs=[tensor(name=n, datatype=outputs[n][0], shape=[len(images)]) for n in wanted],
            raw_output_contents=[outputs[n][1] for n in wanted],
        )
