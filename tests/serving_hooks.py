"""Helpers that run inside the server's worker processes in tests (imported there by name).

`held_worker` is `serving.worker.run` behind a gate: while the file `hold-<slot>` exists in
`hold_dir`, the worker for that slot waits before it loads anything, so a test can keep one
process (or the replacement of a killed one) from becoming ready for as long as it needs.
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
