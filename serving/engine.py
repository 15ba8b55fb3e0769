"""The request pipeline shared by every API: look up model, decode + preprocess, batch, decode.

Everything here runs on the server's event loop. One small image is decoded and preprocessed
right there (cheaper than handing it to a thread); several images, or a large one, go to the
worker threads (OpenCV releases the GIL, so they use the process's share of the cores; more cores
take more server processes, `serving.supervisor`). The model runs in each model's
`DynamicBatcher`. Failures become `RpcAbort(code, message)`, which the servicers turn into gRPC
statuses (or per-item errors in batch and stream calls).

Decoding memory is bounded per server process whatever `--workers` is: each of the W worker
threads takes only images whose decode peaks, by their header, under `DECODE_BUDGET_BYTES / W`,
and larger ones are decoded one at a time in one more thread, so the decodes of one process hold
at most about `DECODE_BUDGET_BYTES` plus one large image, and large images never hold up the
workers. The budget is per process: `--processes N` holds at most N times it.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from captcha import constants
from captcha.decoding import Prediction
from captcha.imageio import ImageDecodeError, read_header
from serving.batcher import BatcherClosedError, DynamicBatcher, QueueFullError, default_max_batch
from serving.metrics import Metrics
from serving.model import ServedModel

# A single image is decoded on the event loop only when it is small both encoded and decoded (a
# 35 KB PNG can hold 36M pixels of one colour: decoded inline it would stall every other call).
INLINE_MAX_BYTES = 64 * 1024
INLINE_MAX_PIXELS = 250_000
INLINE_MAX_DECODED_BYTES = 4 * INLINE_MAX_PIXELS  # as many 8-bit BGRA pixels

ECHO_MAX_CHARS = 100  # of a name, id or other text from a request that an error message repeats
MESSAGE_MAX_CHARS = 1000  # of any status message (its details travel in a size-limited header)


def decodes_inline(data: bytes) -> bool:
    """Whether one image is cheap enough to decode on the event loop (small encoded and decoded)."""
    if len(data) > INLINE_MAX_BYTES:
        return False
    header = read_header(data)
    return header is not None and header.pixels <= INLINE_MAX_PIXELS and header.decoded_bytes <= INLINE_MAX_DECODED_BYTES


def echo(value: object, limit: int = ECHO_MAX_CHARS) -> str:
    """A value from a request (a name, an id, a shape), as an error message repeats it: a string
    quoted, anything else as printed; cut to `limit` characters with an ellipsis and its length."""
    text = value if isinstance(value, str) else str(value)
    show = repr if isinstance(value, str) else str
    if len(text) <= limit:
        return show(text)
    return f"{show(text[:limit])}... ({len(text):,} characters)"


class RpcAbort(Exception):
    """A gRPC status to answer with; the message is cut to `MESSAGE_MAX_CHARS`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        if len(message) > MESSAGE_MAX_CHARS:
            message = message[: MESSAGE_MAX_CHARS - 3] + "..."
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Entry:
    model: ServedModel
    batcher: DynamicBatcher


class Engine:
    """Served models by name plus the preprocessing threads of one server process."""

    def __init__(self, metrics: Metrics, workers: int, max_batch: int, max_delay_s: float, max_queue: int,
                 decode_budget_bytes: int | None = None):
        self.metrics = metrics
        self.workers = max(1, workers)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="preprocess")
        budget = decode_budget_bytes or constants.DECODE_BUDGET_BYTES  # this process's: see the module's docstring
        self.worker_peak_bytes = budget // self.workers  # larger images go to `large_images`
        self.large_images = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-large")
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self.entries: dict[str, Entry] = {}
        self.default: str | None = None
        self.ready = threading.Event()

    async def add(self, model: ServedModel) -> None:
        """Serve `model` (the first added is the default); warms it up first. On the event loop."""
        max_batch = self.max_batch or default_max_batch(model.provider)
        await asyncio.get_running_loop().run_in_executor(None, model.warm_up, max_batch)
        batcher = DynamicBatcher(
            model.run, max_batch, self.max_delay_s, self.max_queue, name=model.name,
            on_batch=lambda n, name=model.name: self.metrics.observe("captcha_batch_size", n, model=name),
        )
        self.metrics.gauge("captcha_queue_depth", lambda b=batcher: b.depth, model=model.name)
        self.entries[model.name] = Entry(model, batcher)
        self.default = self.default or model.name

    def get(self, name: str) -> Entry:
        if not self.ready.is_set():
            raise RpcAbort(grpc.StatusCode.UNAVAILABLE, "models are still loading")
        entry = self.entries.get(name or self.default or "")
        if entry is None:
            raise RpcAbort(grpc.StatusCode.NOT_FOUND, f"unknown model {echo(name)}; served: {', '.join(self.entries)}")
        return entry

    def check_call_size(self, count: int) -> None:
        """Refuse a call of more images than could ever be queued whole, even on an idle server
        (checked before its images are read)."""
        if count > self.max_queue:
            raise RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, f"{count} images in one call; the server queues at most "
                           f"{self.max_queue} per model (--max-queue): send them in smaller calls")

    def _enqueue(self, entry: Entry, tensor: np.ndarray) -> asyncio.Future:
        try:
            return entry.batcher.submit(tensor)
        except QueueFullError as exc:
            raise RpcAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except BatcherClosedError as exc:
            raise RpcAbort(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    async def stage(self, entry: Entry, data: bytes, source: str) -> asyncio.Future:
        """Decode + preprocess one image and queue it; returns the batcher's future. Raises RpcAbort."""
        if decodes_inline(data):
            try:
                tensor = entry.model.preprocess(data, source)
            except ImageDecodeError as exc:
                raise RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            return self._enqueue(entry, tensor)
        staged = (await self.stage_many(entry, [data], [source]))[0]
        if isinstance(staged, RpcAbort):
            raise staged
        return staged

    async def stage_many(self, entry: Entry, images: list[bytes], sources: list[str]) -> list:
        """Decode + preprocess the images of one call off the event loop, then queue each.

        Returns, per image, the batcher's future or the `RpcAbort` that says why it was not
        queued (a bad image, a full queue), so one bad item does not fail the others.
        """
        if not images:
            return []
        self.check_call_size(len(images))
        spec = entry.model.spec
        args = (spec.preprocess, tuple(spec.input_size), spec.mean, spec.std)
        try:
            results = await self._preprocess(args, images, sources)
        except RuntimeError as exc:  # a pool shutting down
            abort = RpcAbort(grpc.StatusCode.UNAVAILABLE if "shutdown" in str(exc) else grpc.StatusCode.INTERNAL, f"preprocessing failed: {exc}")
            return [abort] * len(images)
        staged: list = []
        for tensor, error in results:
            if error is not None:
                staged.append(RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, error))
                continue
            try:
                staged.append(self._enqueue(entry, tensor))
            except RpcAbort as exc:
                staged.append(exc)
        return staged

    async def _preprocess(self, args: tuple, images: list[bytes], sources: list[str]) -> list:
        """(tensor, None) or (None, reason) per image: in the worker pool, then the images too large
        for a worker (by their header) one at a time in the `large_images` thread."""
        loop = asyncio.get_running_loop()
        size = -(-len(images) // min(self.workers, len(images)))  # contiguous chunks, one per worker thread
        chunks = [(images[i : i + size], sources[i : i + size]) for i in range(0, len(images), size)]
        parts = await asyncio.gather(*(loop.run_in_executor(self.pool, _preprocess_many, *args, imgs, srcs, self.worker_peak_bytes)
                                       for imgs, srcs in chunks))
        results = [r for part in parts for r in part]
        deferred = [i for i, (tensor, error) in enumerate(results) if tensor is None and error is None]
        large = await asyncio.gather(*(loop.run_in_executor(self.large_images, _preprocess_many, *args, [images[i]], [sources[i]], None)
                                       for i in deferred))
        for i, (result,) in zip(deferred, large):
            results[i] = result
        return results

    async def logits(self, staged: asyncio.Future) -> np.ndarray:
        """Wait for one image's logits row. A cancelled call (client gone, deadline passed)
        cancels the wait, and with it the queued image."""
        try:
            return await staged
        except BatcherClosedError as exc:
            raise RpcAbort(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - anything else is the server's fault
            raise RpcAbort(grpc.StatusCode.INTERNAL, f"inference failed: {exc}") from None

    async def predict(self, entry: Entry, staged: asyncio.Future) -> Prediction:
        row = await self.logits(staged)
        self.metrics.inc("captcha_images_total", model=entry.model.name)
        return entry.model.decode(row[None])[0]

    async def close(self) -> None:
        """Finish what is queued, then stop the batchers and the pools. On the event loop."""
        for entry in self.entries.values():
            await entry.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.large_images.shutdown(wait=False, cancel_futures=True)


def cancel_staged(items) -> None:
    """Drop queued images whose call has ended (the batcher skips cancelled futures)."""
    for item in items:
        if isinstance(item, asyncio.Future):
            item.cancel()


def _preprocess_many(name: str, size: tuple[int, int], mean: float, std: float, images: list[bytes], sources: list[str],
                     max_peak_bytes: int | None) -> list:
    """Pool task: decode + preprocess + normalise each image with the very
    functions `captcha predict` uses; (tensor, None) or (None, reason) each, or (None, None) for an
    image whose decode would peak over `max_peak_bytes` by its header (left to the caller)."""
    from captcha.imageio import decode_image
    from captcha.preprocess import get_preprocessor, normalize

    pre = get_preprocessor(name)
    out: list = []
    for data, source in zip(images, sources):
        header = read_header(data) if data else None
        if max_peak_bytes is not None and header is not None and header.peak_bytes > max_peak_bytes:
            out.append((None, None))
            continue
        try:
            out.append((normalize(pre(decode_image(data, source, header), size), mean, std), None))
        except ImageDecodeError as exc:
            out.append((None, str(exc)))
    return out
