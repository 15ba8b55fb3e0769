"""`serving.batcher.DynamicBatcher` on its own: the batch that queued while the model ran, the wait
for a fuller batch, dropped callers, the queue bound, a failing model and draining on close."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batcher import CPU_MAX_BATCH, GPU_MAX_BATCH, BatcherClosedError, DynamicBatcher, QueueFullError, default_max_batch


class GatedModel:
    """`run_fn` that records each batch's rows and holds the first batch until `release()`."""

    def __init__(self):
        self.batches: list[list[float]] = []
        self.entered = threading.Event()
        self._gate = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch[:, 0].tolist())
        self.entered.set()
        assert self._gate.wait(10), "the test never released the model"
        return batch * 2

    def release(self) -> None:
        self._gate.set()


async def _until(condition, what: str) -> None:
    end = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def _row(value: float) -> np.ndarray:
    return np.full((1,), value, np.float32)


async def _model_busy(max_batch: int, max_queue: int = 8) -> tuple[GatedModel, DynamicBatcher, asyncio.Future]:
    """A batcher whose model is held running a first batch (the image 1); its future."""
    model = GatedModel()
    batcher = DynamicBatcher(model, max_batch=max_batch, max_delay=0.0, max_queue=max_queue)
    first = batcher.submit(_row(1))
    await _until(model.entered.is_set, "the first batch to run")
    return model, batcher, first


def test_the_next_batch_is_what_queued_while_the_model_ran() -> None:
    async def scenario() -> None:
        model, batcher, first = await _model_busy(2)
        rest = [batcher.submit(_row(v)) for v in (2, 3, 4)]
        assert batcher.depth == 3
        model.release()
        results = await asyncio.gather(first, *rest)
        assert [float(r[0]) for r in results] == [2, 4, 6, 8]
        assert model.batches == [[1], [2, 3], [4]]
        assert batcher.depth == 0
        await batcher.close()

    asyncio.run(scenario())


def test_an_idle_model_waits_max_delay_for_a_fuller_batch() -> None:
    seen: list[int] = []

    def model(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch

    async def scenario() -> None:
        batcher = DynamicBatcher(model, max_batch=4, max_delay=0.3, max_queue=8)
        first = batcher.submit(_row(1))
        await asyncio.sleep(0.05)  # within the delay: joins the first item's batch
        second = batcher.submit(_row(2))
        await asyncio.gather(first, second)
        full = [batcher.submit(_row(v)) for v in range(4)]  # a full batch does not wait
        started = time.monotonic()
        await asyncio.gather(*full)
        assert time.monotonic() - started < 0.3
        await batcher.close()

    asyncio.run(scenario())
    assert seen == [2, 4]


def test_a_caller_gone_while_its_image_waits_is_dropped_before_the_model_runs() -> None:
    async def scenario() -> None:
        model, batcher, first = await _model_busy(2)
        gone, kept = batcher.submit(_row(2)), batcher.submit(_row(3))
        gone.cancel()  # what gRPC does to a call whose deadline passed
        model.release()
        assert float((await kept)[0]) == 6 and float((await first)[0]) == 2
        assert model.batches == [[1], [3]]
        await batcher.close()

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        model, batcher, running = await _model_busy(1, max_queue=2)
        waiting = [batcher.submit(_row(2)), batcher.submit(_row(3))]
        assert batcher.depth == 2
        with pytest.raises(QueueFullError, match="2 images"):
            batcher.submit(_row(4))
        model.release()
        assert [float(r[0]) for r in await asyncio.gather(running, *waiting)] == [2, 4, 6]
        await batcher.close()

    asyncio.run(scenario())


def test_close_finishes_what_is_queued_then_refuses() -> None:
    async def scenario() -> None:
        model, batcher, first = await _model_busy(1)
        futures = [first, batcher.submit(_row(2))]
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        model.release()
        await closing
        assert [float(f.result()[0]) for f in futures] == [2, 4]
        with pytest.raises(BatcherClosedError):
            batcher.submit(_row(3))

    asyncio.run(scenario())


def test_a_failing_model_fails_its_batch_only() -> None:
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return batch

    async def scenario() -> None:
        batcher = DynamicBatcher(flaky, max_batch=4, max_delay=0.0, max_queue=8)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(_row(1))
        assert float((await batcher.submit(_row(5)))[0]) == 5
        await batcher.close()

    asyncio.run(scenario())


def test_the_batch_size_cap_by_where_the_model_runs() -> None:
    assert default_max_batch("CPUExecutionProvider") == CPU_MAX_BATCH
    assert default_max_batch("CUDAExecutionProvider") == GPU_MAX_BATCH
    assert CPU_MAX_BATCH < GPU_MAX_BATCH
