"""Per-item CPU work (drawing CAPTCHAs, preprocessing them) spread over worker processes, with the
results in task order.

`ordered_map` is `map` over a process pool that keeps at most `ahead` tasks in flight, so an
endless stream of tasks never piles up results faster than they are consumed. Workers start with
the spawn method (a fork of a process that holds torch threads or a CUDA context is unsafe) and run
OpenCV on one thread each: the processes are the parallelism.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor


def worker_count(requested: int) -> int:
    """`requested` worker processes, or one per core for 0; negative numbers are refused."""
    if requested < 0:
        raise ValueError(f"--workers must be 0 (one per core) or more, not {requested}")
    return requested or os.cpu_count() or 1


def _one_opencv_thread() -> None:
    import cv2

    cv2.setNumThreads(1)


def ordered_map(fn: Callable, tasks: Iterable[tuple], workers: int = 1, ahead: int | None = None) -> Iterator:
    """`fn(*task)` for every task, yielded in task order. `workers` processes do the work (1: this
    process, without a pool); `fn` and the tasks must pickle. At most `ahead` tasks (default: two
    per worker) are in flight; closing the iterator early cancels the ones not started."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if workers == 1:
        return (fn(*task) for task in tasks)
    return _pooled(fn, iter(tasks), workers, ahead or 2 * workers)


def _pooled(fn: Callable, tasks: Iterator[tuple], workers: int, ahead: int) -> Iterator:
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_opencv_thread)
    try:
        pending = deque(pool.submit(fn, *task) for task in itertools.islice(tasks, ahead))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, *task) for task in itertools.islice(tasks, 1))  # keep the pool busy
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
