"""The request pipeline shared by every API: look up model, decode + preprocess, batch, decode.

Decode and preprocess run in a thread pool (OpenCV releases the GIL, so they use every core);
the model runs in its `DynamicBatcher`. Failures become `RpcAbort(code, message)`, which the
servicers turn into gRPC statuses (or per-item errors in batch and stream calls).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass

import grpc
import numpy as np

from captcha.decoding import Prediction
from captcha.imageio import ImageDecodeError
from serving.batcher import BatcherClosedError, CallerGoneError, DynamicBatcher, QueueFullError
from serving.metrics import Metrics
from serving.model import ServedModel

_POLL_S = 0.5  # how often a waiting call re-checks that its client is still there


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
    """Served models by name plus the preprocessing pool."""

    def __init__(self, metrics: Metrics, workers: int, max_batch: int, max_delay_s: float, max_queue: int, processes: int = 0):
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="preprocess")
        # Optional process pool for multi-image calls: the `denoise` preprocessor is mostly small
        # numpy calls that hold the GIL, so threads cannot spread it over the cores; processes can.
        # Started with "spawn" (never fork a process that runs gRPC threads).
        self.processes = max(0, processes)
        self.procs = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) if processes > 0 else None
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self.entries: dict[str, Entry] = {}
        self.default: str | None = None
        self.ready = threading.Event()

    def add(self, model: ServedModel) -> None:
        """Serve `model` (the first added is the default); warms it up first."""
        model.warm_up(self.max_batch)
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

    def _prepare(self, entry: Entry, data: bytes, source: str, context: grpc.ServicerContext) -> Future:
        """Decode + preprocess, then queue for the model; returns the batcher's future."""
        gone = _call_gone(context, "before its image was decoded")
        if gone:
            raise gone
        try:
            tensor = entry.model.preprocess(data, source)
        except ImageDecodeError as exc:
            raise RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            return entry.batcher.submit(tensor, context.is_active)
        except QueueFullError as exc:
            raise RpcAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except BatcherClosedError as exc:
            raise RpcAbort(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    def submit(self, entry: Entry, data: bytes, source: str, context: grpc.ServicerContext, inline: bool = False) -> Future:
        """Start one image; the future resolves to the batcher's future (two stages)."""
        if inline:
            f: Future = Future()
            try:
                f.set_result(self._prepare(entry, data, source, context))
            except RpcAbort as exc:
                f.set_exception(exc)
            return f
        return self.pool.submit(self._prepare, entry, data, source, context)

    def submit_many(self, entry: Entry, images: list[bytes], sources: list[str], context: grpc.ServicerContext) -> list[Future]:
        """Start several images of one call; like `submit` per image, but with a process pool the
        whole call's decode + preprocess is one task (one round of inter-process traffic)."""
        if self.procs is None or len(images) < 2:
            return [self.submit(entry, data, source, context) for data, source in zip(images, sources)]
        staged: list[Future] = [Future() for _ in images]
        spec = entry.model.spec
        try:
            task = self.procs.submit(_preprocess_many, spec.preprocess, tuple(spec.input_size), spec.mean, spec.std, images, sources)
        except RuntimeError:  # the pool is shutting down
            return [self.submit(entry, data, source, context) for data, source in zip(images, sources)]

        def distribute(done: Future) -> None:
            try:
                results = done.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker: every image of the call fails
                abort = RpcAbort(grpc.StatusCode.INTERNAL, f"preprocessing failed: {exc!r}")
                for f in staged:
                    f.set_exception(abort)
                return
            for f, (tensor, error) in zip(staged, results):
                if error is not None:
                    f.set_exception(RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, error))
                    continue
                try:
                    f.set_result(self._enqueue(entry, tensor, context))
                except RpcAbort as exc:
                    f.set_exception(exc)

        task.add_done_callback(distribute)
        return staged

    def _enqueue(self, entry: Entry, tensor: np.ndarray, context: grpc.ServicerContext) -> Future:
        gone = _call_gone(context, "before its image was queued")
        if gone:
            raise gone
        try:
            return entry.batcher.submit(tensor, context.is_active)
        except QueueFullError as exc:
            raise RpcAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except BatcherClosedError as exc:
            raise RpcAbort(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    def warm_up_processes(self) -> None:
        """Start every worker process now, not on the first request."""
        if self.procs is not None:
            list(self.procs.map(_preprocess_many, *zip(*[("gray", (8, 8), 0.0, 1.0, [], [])] * (2 * self.processes))))

    def logits(self, staged: Future, context: grpc.ServicerContext) -> np.ndarray:
        """Wait for one image's logits row, honouring the call's deadline and cancellation."""
        return _wait(_wait(staged, context), context)

    def predict(self, entry: Entry, staged: Future, context: grpc.ServicerContext) -> Prediction:
        row = self.logits(staged, context)
        self.metrics.inc("captcha_images_total", model=entry.model.name)
        return entry.model.decode(row[None])[0]

    def close(self) -> None:
        for entry in self.entries.values():
            entry.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.procs is not None:
            self.procs.shutdown(wait=False, cancel_futures=True)


def _preprocess_many(name: str, size: tuple[int, int], mean: float, std: float, images: list[bytes], sources: list[str]) -> list:
    """Process-pool task: decode + preprocess + normalise each image with the very functions the
    threads use (`captcha.imageio`, `captcha.preprocess`); (tensor, None) or (None, reason) each."""
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


def _call_gone(context: grpc.ServicerContext, when: str) -> RpcAbort | None:
    """DEADLINE_EXCEEDED once the call's deadline has passed, CANCELLED once the client went away."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return RpcAbort(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed {when}")
    if not context.is_active():
        return RpcAbort(grpc.StatusCode.CANCELLED, f"the call was cancelled {when}")
    return None


def _wait(future: Future, context: grpc.ServicerContext):
    """The future's result; polls so a cancelled call or a passed deadline stops the wait.

    Waits with `future.result(timeout)` - one condition variable per future - rather than
    `concurrent.futures.wait`, whose per-call waiter objects cost the batcher thread a lock and an
    event per image when it resolves a batch.
    """
    while True:
        gone = None if future.done() else _call_gone(context, "while waiting for the model")
        if gone:
            future.cancel()
            raise gone
        remaining = context.time_remaining()
        try:
            return future.result(timeout=_POLL_S if remaining is None else min(_POLL_S, remaining))
        except FutureTimeoutError as exc:
            if not future.done():
                continue
            raise RpcAbort(grpc.StatusCode.INTERNAL, f"inference failed: {exc!r}") from None
        except CancelledError:
            raise RpcAbort(grpc.StatusCode.CANCELLED, "the call ended before the model ran") from None
        except RpcAbort:
            raise
        except BatcherClosedError as exc:
            raise RpcAbort(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        except CallerGoneError as exc:
            raise RpcAbort(grpc.StatusCode.CANCELLED, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - anything else is the server's fault
            raise RpcAbort(grpc.StatusCode.INTERNAL, f"inference failed: {exc}") from None
