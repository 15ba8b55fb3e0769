"""A server process and the processes it started (`captcha serve --processes N` runs its workers
as children), read from Linux /proc: their CPU time and memory, for the serving benchmarks.
Elsewhere every figure is 0 or missing."""

from __future__ import annotations

import os
import re
from pathlib import Path


def pids(pid: int) -> list[int]:
    """`pid` and its live descendants (children of any of its threads: a supervisor may start a
    replacement worker from a thread of its own)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by `pid` and its live descendants."""
    total = 0.0
    for current in pids(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            continue
    return total


def memory(pid: int) -> dict[str, int]:
    """Resident memory of `pid` and its live descendants, in bytes: `VmRSS` (now, summed),
    `VmHWM` (each process's peak, summed: at least the tree's peak) and `max_VmHWM` (the largest
    one process reached). Empty where /proc is not there."""
    out: dict[str, int] = {}
    for current in pids(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for key, value in re.findall(r"(VmRSS|VmHWM):\s+(\d+) kB", status):
            out[key] = out.get(key, 0) + int(value) * 1024
            if key == "VmHWM":
                out["max_VmHWM"] = max(out.get("max_VmHWM", 0), int(value) * 1024)
    return out
