"""`captcha serve`'s settings, declared once.

`ServeConfig` is both the server's Python API and the source of its command line: each field is a
`captcha.options.option` carrying its help text (and any argparse detail), so a new server option
is one new field. `captcha.options.add_options` builds the flags from the fields and
`config_from_args` turns the parsed flags back into a config, as for the training verbs; `check`
refuses nonsense with one line naming the flag, and `resolved` fills in the automatic values
(processes, threads) for the machine it runs on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from captcha.options import check_choices, option

# `--processes 0` (automatic) starts one process per available CPU, but no more than this:
# past it, memory grows (one ONNX Runtime session and decode pool per process) for little gain.
MAX_AUTO_PROCESSES = 32

# How a stop ends, whatever is still running: after --grace a server process exits by itself within
# EXIT_MARGIN_S, the supervisor kills a worker still there KILL_AFTER_S later, and `captcha serve`
# is gone EXIT_AFTER_GRACE_S after the grace at the latest.
EXIT_MARGIN_S = 0.5
KILL_AFTER_S = 0.3
EXIT_AFTER_GRACE_S = 1.0


@dataclass
class ServeConfig:
    """Everything `captcha serve` can set."""

    models: list[str] = option(help="models to serve, as PATH or NAME=PATH; the first is the default", metavar="MODEL.onnx")
    host: str = option("0.0.0.0", "listen address for gRPC and metrics")
    port: int = option(50051, "gRPC port (0: any free port)")
    processes: int = option(0, "server processes sharing the gRPC port, each with its own batcher and ONNX Runtime session "
                            f"(0: one per available CPU, at most {MAX_AUTO_PROCESSES}; 1: one process)")
    device: str = option("auto", "where ONNX Runtime runs the model (auto: the GPU when onnxruntime-gpu finds one)",
                         choices=("auto", "cpu", "cuda"))
    max_batch: int = option(0, "largest batch one ONNX Runtime run takes (0: 8 on the CPU, 32 on CUDA)")
    max_delay_ms: float = option(0.0, "how long an idle model waits after an image arrives for more to fill its batch (0: it runs "
                                 "what has arrived; under load images gather while it runs)")
    max_queue: int = option(1024, "queued images per model and process before RESOURCE_EXHAUSTED")
    workers: int = option(0, "decode/preprocess threads per process for multi-image calls (0: the process's share of the CPUs)")
    ort_threads: int = option(0, "ONNX Runtime intra-op threads per process (0: with one process, CPU count - 1, leaving a "
                              "core to the event loop; with several, the process's share of the CPUs)")
    token: str | None = option(None, "require `authorization: Bearer TOKEN` on every call but health", env="CAPTCHA_TOKEN")
    tls_cert: str | None = option(None, "PEM certificate chain (enables TLS)")
    tls_key: str | None = option(None, "PEM private key (unencrypted)")
    metrics_port: int | None = option(None, "serve Prometheus metrics on this HTTP port (0: any free port), summed over the processes")
    max_message_mb: float = option(4.0, "largest request accepted, in MiB")
    max_connection_age_s: float = option(0.0, "ask each client to reconnect after this many seconds (calls in flight finish first), so "
                                         "long-lived connections spread again over processes and replicas that came up since; 0: never",
                                         flag="--max-connection-age")
    grace_s: float = option(10.0, "on SIGTERM, seconds calls in flight get to finish; the server is gone within about a second more",
                            flag="--grace")

    def check(self) -> None:
        """Refuse settings that cannot work, with one line naming the flag."""
        check_choices(self)  # --device, for configs made in Python (the command line refuses it first)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token is empty (--token \"\" or CAPTCHA_TOKEN set but empty): give a token, "
                             "or leave out both to serve without authentication")
        if self.max_queue < 1:
            raise ValueError(f"--max-queue must be at least 1, not {self.max_queue}")
        for flag, value in (("--processes", self.processes), ("--workers", self.workers), ("--ort-threads", self.ort_threads),
                            ("--max-batch", self.max_batch)):
            if value < 0:
                raise ValueError(f"{flag} must be 0 (automatic) or more, not {value}")
        if not self.max_message_mb > 0:
            raise ValueError(f"--max-message-mb must be positive, not {self.max_message_mb:g}")
        for flag, value in (("--max-delay-ms", self.max_delay_ms), ("--grace", self.grace_s), ("--max-connection-age", self.max_connection_age_s)):
            if not value >= 0:
                raise ValueError(f"{flag} must be zero or more, not {value:g}")
        for flag, value in (("--port", self.port), ("--metrics-port", self.metrics_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{flag} must be a port number from 0 to 65535, not {value}")

    def resolved(self, cpus: int | None = None) -> "ServeConfig":
        """A copy with the automatic (0) process and thread counts worked out for `cpus` CPUs
        (default: those this process may use)."""
        cpus = cpus or available_cpus()
        processes = self.processes or min(cpus, MAX_AUTO_PROCESSES)
        share = max(1, cpus // processes)
        return replace(
            self,
            processes=processes,
            workers=self.workers or (share if processes > 1 else cpus),
            ort_threads=self.ort_threads or (share if processes > 1 else max(1, cpus - 1)),
        )


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    `--cpus`, a Kubernetes CPU limit), which `os.cpu_count()` does not see."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 `cpu.max`, or v1's cfs files), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        return None if quota < 0 else quota / int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
