"""Helpers that run inside the server's worker processes in tests (imported there by name).

`held_worker` is `serving.worker.run` behind a gate: while the file `hold-<slot>` exists in
`hold_dir`, the worker for that slot waits before it loads anything, so a test can keep one
process (or the replacement of a killed one) from becoming ready for as long as it needs.
`split_recording_worker` records where each worker splits KServe raw tensors.
"""

from __future__ import annotations

import time
from pathlib import Path


def held_worker(hold_dir: str, config, slot: int, conn, metrics_dir: str) -> None:
    hold = Path(hold_dir) / f"hold-{slot}"
    end = time.monotonic() + 120  # a test that forgets its gate does not leave a process behind
    while hold.exists() and time.monotonic() < end:
        time.sleep(0.02)
    from serving.worker import run

    run(config, slot, conn, metrics_dir)


def split_recording_worker(log_path: str, config, slot: int, conn, metrics_dir: str) -> None:
    """`serving.worker.run` with the KServe raw-tensor split (`serving.servicer._split_raw_bytes`)
    wrapped to append the name of the thread each call runs in to the file `log_path`, so a test
    can check, across processes, that it never runs on the event loop."""
    import threading

    from serving import servicer
    from serving.worker import run

    real = servicer._split_raw_bytes

    def split(raw: bytes, count: int) -> list[bytes]:
        with open(log_path, "a") as log:
            log.write(threading.current_thread().name + "\n")
        return real(raw, count)

    servicer._split_raw_bytes = split
    run(config, slot, conn, metrics_dir)
