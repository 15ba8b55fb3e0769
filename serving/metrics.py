"""Prometheus metrics with prometheus-client, for one server process or summed over several.

`Metrics` keeps the small interface the servicer and engine call (`inc`, `observe`, `gauge`)
over prometheus-client's Counter, Histogram and Gauge, in a registry of its own, so that several
servers in one process (tests) do not share counts.

Several processes (`captcha serve --processes N`): each worker process writes its values to files
in one shared directory (prometheus-client's multiprocess mode, chosen by PROMETHEUS_MULTIPROC_DIR
before the worker first imports prometheus_client: `use_directory`), and the supervisor reads them
back summed with `MultiProcessCollector` (`SummedMetrics`) for the one `/metrics` endpoint. A
worker cannot be asked for a value at scrape time, so there each gauge's function is sampled into
its file every `GAUGE_SAMPLE_S` seconds instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GAUGE_SAMPLE_S = 1.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# name: (kind, help, label names, buckets)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "captcha_requests_total": ("counter", "gRPC calls by method and status code", ("method", "code"), ()),
    "captcha_images_total": ("counter", "images recognised, by model", ("model",), ()),
    "captcha_request_latency_seconds": ("histogram", "gRPC call latency by method", ("method",), LATENCY_BUCKETS),
    "captcha_batch_size": ("histogram", "images per ONNX Runtime run, by model", ("model",), BATCH_BUCKETS),
    "captcha_queue_depth": ("gauge", "images waiting for the batcher, by model (summed over live processes)", ("model",), ()),
}


def use_directory(path: str | os.PathLike) -> None:
    """Make this process write its metrics under `path` for a supervisor to sum. Call it before
    anything imports prometheus_client (the library reads the variable on import)."""
    os.environ[MULTIPROC_ENV] = str(path)
    import prometheus_client.values as values

    if not getattr(values.ValueClass, "_multiprocess", False):  # imported earlier: switch it now
        values.ValueClass = values.MultiProcessValue()


def _multiprocess() -> bool:
    import prometheus_client.values as values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _value(registry, name: str, labels: dict[str, str]) -> float:
    """The sum of the samples called `name` whose labels are exactly `labels`."""
    return sum(s.value for family in registry.collect() for s in family.samples if s.name == name and s.labels == labels)


class Metrics:
    """The server's metric families, written by one process (maybe one of several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.multiprocess = _multiprocess()
        self._families = {}
        for name, (kind, text, labels, buckets) in FAMILIES.items():
            if kind == "counter":
                family = Counter(name, text, labels, registry=self.registry)
            elif kind == "histogram":
                family = Histogram(name, text, labels, buckets=buckets, registry=self.registry)
            else:
                family = Gauge(name, text, labels, registry=self.registry, multiprocess_mode="livesum")
            self._families[name] = family
        self._sampled: list[tuple[object, Callable[[], float]]] = []
        self._sampler: threading.Thread | None = None

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._families[name].labels(**labels).inc(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._families[name].labels(**labels).observe(value)

    def gauge(self, name: str, fn: Callable[[], float], **labels: str) -> None:
        """Report `fn()` as the gauge's value: read at scrape time, or sampled in a worker process."""
        child = self._families[name].labels(**labels)
        if not self.multiprocess:
            child.set_function(fn)
            return
        child.set(fn())
        self._sampled.append((child, fn))
        if self._sampler is None:
            self._sampler = threading.Thread(target=self._sample_gauges, name="metrics-gauges", daemon=True)
            self._sampler.start()

    def _sample_gauges(self) -> None:
        tick = threading.Event()
        while not tick.wait(GAUGE_SAMPLE_S):
            for child, fn in list(self._sampled):
                child.set(fn())

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value in this process (tests, benchmarks); 0 when never set."""
        return _value(self.registry, name, labels)

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


class SummedMetrics:
    """The metrics of every process that wrote to `directory`, summed (the supervisor's view)."""

    def __init__(self, directory: str | os.PathLike):
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = str(directory)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.directory)

    def value(self, name: str, **labels: str) -> float:
        return _value(self.registry, name, labels)

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def process_died(self, pid: int) -> None:
        """Drop a dead process's live gauges (its counters and histograms keep counting)."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.directory)


def server_metrics() -> Metrics:
    """The registry with the server's metric families."""
    return Metrics()


def serve_metrics(metrics: Metrics | SummedMetrics, host: str, port: int):
    """Serve `GET /metrics` on host:port from a daemon thread; returns the HTTP server
    (`server_address`, `shutdown()`). Raises OSError when the port is taken."""
    from prometheus_client import start_http_server

    httpd, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return httpd
