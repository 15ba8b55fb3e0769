"""The request pipeline shared by every API: look up model, decode + preprocess, batch, decode.

Everything here runs on the server's event loop. One small image is decoded and preprocessed
right there (cheaper than handing it to a thread); several images, or a large one, go to the
worker threads (OpenCV releases the GIL, so they use every core) or, with `processes`, to worker
processes. The model runs in each model's `DynamicBatcher`. Failures become
`RpcAbort(code, message)`, which the servicers turn into gRPC statuses (or per-item errors in
batch and stream calls).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from captcha.decoding import Prediction
from captcha.imageio import ImageDecodeError, header_pixels
from serving.batcher import BatcherClosedError, DynamicBatcher, QueueFullError
from serving.metrics import Metrics
from serving.model import ServedModel

# A single image is decoded on the event loop only when it is small both encoded and decoded (a
# 35 KB PNG can hold 36M pixels of one colour: decoded inline it would stall every other call).
INLINE_MAX_BYTES = 64 * 1024
INLINE_MAX_PIXELS = 250_000


def decodes_inline(data: bytes) -> bool:
    """Whether one image is cheap enough to decode on the event loop (small encoded and decoded)."""
    return len(data) <= INLINE_MAX_BYTES and (header_pixels(data) or INLINE_MAX_PIXELS + 1) <= INLINE_MAX_PIXELS


class RpcAbort(Exception):
    """A gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Entry:
    model: ServedModel
    batcher: DynamicBatcher


class Engine:
    """Served models by name plus the preprocessing pools."""

    def __init__(self, metrics: Metrics, workers: int, max_batch: int, max_delay_s: float, max_queue: int, processes: int = 0):
        self.metrics = metrics
        self.workers = max(1, workers)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="preprocess")
        # Optional process pool for multi-image calls: the `denoise` preprocessor is mostly small
        # numpy calls that hold the GIL, so threads cannot spread it over the cores; processes can.
        # Started with "spawn" (never fork a process that runs gRPC threads).
        self.processes = max(0, processes)
        self.procs = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) if processes > 0 else None
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self.entries: dict[str, Entry] = {}
        self.default: str | None = None
        self.ready = threading.Event()

    async def add(self, model: ServedModel) -> None:
        """Serve `model` (the first added is the default); warms it up first. On the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, model.warm_up, self.max_batch)
        batcher = DynamicBatcher(
            model.run, self.max_batch, self.max_delay_s, self.max_queue, name=model.name,
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
            raise RpcAbort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; served: {', '.join(self.entries)}")
        return entry

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
        if len(images) > self.max_queue:  # could never be queued whole, even on an idle server
            raise RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(images)} images in one call; the server queues at most "
                           f"{self.max_queue} per model (--max-queue): send them in smaller calls")
        spec = entry.model.spec
        args = (spec.preprocess, tuple(spec.input_size), spec.mean, spec.std)
        loop = asyncio.get_running_loop()
        try:
            if self.procs is not None and len(images) > 1:
                results = await loop.run_in_executor(self.procs, _preprocess_many, *args, images, sources)
            else:  # contiguous chunks, one per worker thread
                size = -(-len(images) // min(self.workers, len(images)))
                chunks = [(images[i : i + size], sources[i : i + size]) for i in range(0, len(images), size)]
                parts = await asyncio.gather(*(loop.run_in_executor(self.pool, _preprocess_many, *args, imgs, srcs) for imgs, srcs in chunks))
                results = [r for part in parts for r in part]
        except RuntimeError as exc:  # a pool shutting down, or a dead worker process
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

    def warm_up_processes(self) -> None:
        """Start every worker process now, not on the first request."""
        if self.procs is not None:
            list(self.procs.map(_preprocess_many, *zip(*[("gray", (8, 8), 0.0, 1.0, [], [])] * (2 * self.processes))))

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
        if self.procs is not None:
            self.procs.shutdown(wait=False, cancel_futures=True)


def cancel_staged(items) -> None:
    """Drop queued images whose call has ended (the batcher skips cancelled futures)."""
    for item in items:
        if isinstance(item, asyncio.Future):
            item.cancel()


def _preprocess_many(name: str, size: tuple[int, int], mean: float, std: float, images: list[bytes], sources: list[str]) -> list:
    """Pool task (thread or process): decode + preprocess + normalise each image with the very
    functions `captcha predict` uses; (tensor, None) or (None, reason) each."""
    from captcha.imageio import decode_image
    from captcha.preprocess import get_preprocessor, normalize

    pre = get_preprocessor(name)
    out: list = []
    for data, source in zip(images, sources):
        try:
            out.append((normalize(pre(decode_image(data, source), size), mean, std), None))
        except ImageDecodeError as exc:
            out.append((None, str(exc)))
    return out
