"""Dynamic batching: gather concurrent requests into one `session.run`.

A worker thread takes the first waiting item, then keeps collecting until it has `max_batch`
items or `max_delay` has passed since that first item, runs the model once and resolves each
item's future with its own row of logits. The queue is bounded: a full queue is refused at once
(the servicer answers RESOURCE_EXHAUSTED) instead of letting latency grow without limit. Items
whose caller has gone away (cancelled, deadline passed) are dropped before the model runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np


class QueueFullError(RuntimeError):
    """The batcher's queue is full; the caller should back off."""


class CallerGoneError(RuntimeError):
    """The caller was cancelled or its deadline passed before the model ran."""


class BatcherClosedError(RuntimeError):
    """The batcher was shut down."""


@dataclass
class _Item:
    tensor: np.ndarray
    future: Future
    is_active: Callable[[], bool]


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
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting to be batched."""
        return self._queue.qsize()

    def submit(self, tensor: np.ndarray, is_active: Callable[[], bool] = lambda: True) -> Future:
        """Queue one sample; the future resolves to its output row. Raises QueueFullError."""
        if self._closed:
            raise BatcherClosedError("the server is shutting down")
        future: Future = Future()
        try:
            self._queue.put_nowait(_Item(tensor, future, is_active))
        except queue.Full:
            raise QueueFullError(f"server busy: {self._queue.maxsize} images already queued") from None
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Finish queued work, then stop the worker."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        items, stop = [first], False
        deadline = time.monotonic() + self.max_delay
        while len(items) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                stop = True
                break
            items.append(item)
        return items, stop

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            items, stop = self._collect(first)
            live = [it for it in items if it.future.set_running_or_notify_cancel() and self._still_wanted(it)]
            if not live:
                continue
            try:
                outputs = self._run(np.stack([it.tensor for it in live]))
            except Exception as exc:  # noqa: BLE001 - every waiting caller must hear about it
                for it in live:
                    it.future.set_exception(exc)
                continue
            if self._on_batch:
                self._on_batch(len(live))
            for it, row in zip(live, outputs):
                it.future.set_result(row)
        self._fail_pending()

    @staticmethod
    def _still_wanted(item: _Item) -> bool:
        try:
            wanted = item.is_active()
        except Exception:  # noqa: BLE001
            wanted = True
        if not wanted:
            item.future.set_exception(CallerGoneError("the call ended before the model ran"))
        return wanted

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherClosedError("the server is shutting down"))
