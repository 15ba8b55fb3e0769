"""Dynamic batching: gather concurrent requests into one model run.

`submit` (on the event loop) queues one sample and returns an asyncio future. The batcher's own
model thread takes what has queued up, up to `max_batch` samples, runs the model once on them -
outside the event loop, so that the loop goes on serving calls while ONNX Runtime works - and hands
each row back to the loop, which resolves the item's future. While the model runs, the next
requests queue up, and the thread takes them the moment it is free: under load each batch is what
arrived during the one before, and the model never waits for the event loop to gather a batch.
When the thread finds fewer than `max_batch` samples it waits up to `max_delay` after the first of
them for more.

The queue is bounded: a full queue is refused at once (`QueueFullError`; the servicer answers
RESOURCE_EXHAUSTED) instead of letting latency grow without limit. When a call is cancelled or
its deadline passes, gRPC cancels the handler and with it the future it awaits; such items are
dropped when their batch is taken, before the model runs.

`submit` and `close` must be called on the event loop that created the batcher; `depth` may be
read from any thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np


# Largest batch one model run takes when the user leaves --max-batch at 0, by where the model runs.
# On the CPU small batches keep the model and the event loop busy at once (docs/serving.md#batching);
# a GPU wants larger ones.
CPU_MAX_BATCH = 8
GPU_MAX_BATCH = 32


def default_max_batch(provider: str) -> int:
    """The batch size cap for a model that runs on ONNX Runtime's `provider`."""
    return CPU_MAX_BATCH if provider == "CPUExecutionProvider" else GPU_MAX_BATCH


class QueueFullError(RuntimeError):
    """The batcher's queue is full; the caller should back off."""


class BatcherClosedError(RuntimeError):
    """The batcher was shut down."""


_Item = tuple[np.ndarray, asyncio.Future, float]  # the sample, its caller's future, when it arrived (time.monotonic)


class DynamicBatcher:
    """Batch `run_fn(float32 [B, ...]) -> [B, ...]` over concurrent `submit` calls."""

    def __init__(
        self,
        run_fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = CPU_MAX_BATCH,
        max_delay: float = 0.0,
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
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._arrived = threading.Condition()  # guards `_queue` and `_closed`; notified on submit and close
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name=f"model-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting to be batched."""
        return len(self._queue)

    def submit(self, tensor: np.ndarray) -> asyncio.Future:
        """Queue one sample; the future resolves to its output row. Raises QueueFullError."""
        with self._arrived:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"server busy: {self.max_queue} images already queued")
            future = self._loop.create_future()
            self._queue.append((tensor, future, time.monotonic()))
            self._arrived.notify()
        return future

    async def close(self, timeout: float = 5.0) -> None:
        """Finish queued work, then stop the model thread; what is left after `timeout` fails."""
        with self._arrived:
            if self._closed:
                return
            self._closed = True
            self._arrived.notify()
        await self._loop.run_in_executor(None, self._thread.join, timeout)
        self._fail_pending()

    # ------------------------------------------------------------------ the model thread

    def _serve(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            live = [(tensor, future) for tensor, future, _ in items if not future.done()]  # cancelled: caller gone
            if not live:
                continue
            try:
                outputs, error = self._run(np.stack([tensor for tensor, _ in live])), None
            except Exception as exc:  # noqa: BLE001 - every waiting caller must hear about it
                outputs, error = None, exc
            try:
                self._loop.call_soon_threadsafe(self._deliver, live, outputs, error)
            except RuntimeError:  # the event loop is closed: nobody is left to answer
                return

    def _take(self) -> list[_Item] | None:
        """The next batch: what has queued, up to `max_batch`, waiting for a full one until
        `max_delay` after the oldest item arrived (under load it has waited that long already, for
        the batch before). None once closed and drained."""
        with self._arrived:
            while not self._queue:
                if self._closed:
                    return None
                self._arrived.wait()
            deadline = self._queue[0][2] + self.max_delay
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._arrived.wait(remaining):
                    break
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    # ------------------------------------------------------------------ back on the event loop

    def _deliver(self, live: list[tuple[np.ndarray, asyncio.Future]], outputs: np.ndarray | None, error: Exception | None) -> None:
        if error is not None:
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        if self._on_batch:
            self._on_batch(len(live))
        for (_, future), row in zip(live, outputs):
            if not future.done():
                future.set_result(row)

    def _fail_pending(self) -> None:
        with self._arrived:
            left, self._queue = list(self._queue), deque()
        for _, future, _ in left:
            if not future.done():
                future.set_exception(BatcherClosedError("the server is shutting down"))
