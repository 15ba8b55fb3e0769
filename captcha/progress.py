"""A dependency-free progress bar: drawn on a terminal, silent otherwise.

Without a terminal (CI, logs, pipes) the caller's one line per epoch is the progress report.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, enabled: bool | None = None):
        self.total = max(total, 1)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.count = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, n: int = 1, **postfix: float) -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and self.count < self.total:
            return
        self._last_draw = now
        frac = min(self.count / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = self.count / max(now - self.start, 1e-9)
        extra = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
        self.stream.write(f"\r{self.desc} [{bar}] {self.count}/{self.total} {rate:.1f}it/s {extra}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
