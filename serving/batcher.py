"""Dynamic batching on the server's event loop: gather concurrent requests into one model run.

`submit` queues one sample and returns an asyncio future. A collector task takes the first
waiting item, keeps collecting until it has `max_batch` items or `max_delay` has passed since
that first item, then runs the model once - in the batcher's own thread, so that the event loop
goes on serving calls while ONNX Runtime works - and resolves each item's future with its row.

The queue is bounded: a full queue is refused at once (`QueueFullError`; the servicer answers
RESOURCE_EXHAUSTED) instead of letting latency grow without limit. When a call is cancelled or
its deadline passes, gRPC cancels the handler and with it the future it awaits; such items are
dropped before the model runs.

Everything except `depth` must be called on the event loop that created the batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class QueueFullError(RuntimeError):
    """The batcher's queue is full; the caller should back off."""


class BatcherClosedError(RuntimeError):
    """The batcher was shut down."""


_Item = tuple[np.ndarray, asyncio.Future]


class DynamicBatcher:
    """Batch `run_fn(float32 [B, ...]) -> [B, ...]` over concurrent `submit` calls."""

    def __init__(
        self,
        run_fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 32,
        max_delay: float = 0.002,
        max_queue: int = 1024,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("--max-batch must be at least 1")
        self._run = run_fn
        self.max_batch = max_batch
        self.max_delay = max(0.0, max_delay)
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._task = self._loop.create_task(self._collect_and_run(), name=f"batcher-{name}")

    @property
    def depth(self) -> int:
        """Items waiting to be batched (safe to read from any thread)."""
        return self._queue.qsize()

    def submit(self, tensor: np.ndarray) -> asyncio.Future:
        """Queue one sample; the future resolves to its output row. Raises QueueFullError."""
        if self._closed:
            raise BatcherClosedError("the server is shutting down")
        future = self._loop.create_future()
        try:
            self._queue.put_nowait((tensor, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"server busy: {self.max_queue} images already queued") from None
        return future

    async def close(self, timeout: float = 5.0) -> None:
        """Finish queued work, then stop the collector and the model thread."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._queue.put(None), timeout)
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            self._task.cancel()
        self._fail_pending()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        items, stop = [first], False
        deadline = self._loop.time() + self.max_delay
        while len(items) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if item is None:
                stop = True
                break
            items.append(item)
        return items, stop

    async def _collect_and_run(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            items, stop = await self._collect(first)
            live = [(tensor, future) for tensor, future in items if not future.done()]  # cancelled: caller gone
            if not live:
                continue
            try:
                outputs = await self._loop.run_in_executor(self._executor, self._run, np.stack([tensor for tensor, _ in live]))
            except Exception as exc:  # noqa: BLE001 - every waiting caller must hear about it
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._on_batch:
                self._on_batch(len(live))
            for (_, future), row in zip(live, outputs):
                if not future.done():
                    future.set_result(row)

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not None and not item[1].done():
                item[1].set_exception(BatcherClosedError("the server is shutting down"))
