"""Prometheus text-format metrics without a dependency, served over HTTP by `http.server`.

Counters, gauges and fixed-bucket histograms, labelled; `render()` writes the text exposition
format (version 0.0.4) that Prometheus scrapes from `GET /metrics`.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + body + "}"


def _fmt(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class Metrics:
    """A small thread-safe metric registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._gauges: dict[str, dict[Labels, Callable[[], float]]] = defaultdict(dict)

    def describe(self, name: str, kind: str, text: str, buckets: tuple[float, ...] = ()) -> None:
        self._help[name] = (kind, text)
        if buckets:
            self._buckets[name] = buckets

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        buckets = self._buckets[name]
        with self._lock:
            series = self._hist[name].setdefault(key, [0.0] * (len(buckets) + 3))
            series[bisect.bisect_left(buckets, value)] += 1  # per-bucket count, made cumulative on render
            series[-2] += value
            series[-1] += 1

    def gauge(self, name: str, fn: Callable[[], float], **labels: str) -> None:
        """Register a gauge read from `fn` at scrape time."""
        self._gauges[name][tuple(sorted(labels.items()))] = fn

    def value(self, name: str, **labels: str) -> float:
        """Current counter value (tests, benchmarks)."""
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            names = sorted(set(self._counters) | set(self._hist) | set(self._gauges))
            for name in names:
                kind, text = self._help.get(name, ("untyped", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                for key, v in sorted(self._counters.get(name, {}).items()):
                    lines.append(f"{name}{_fmt_labels(key)} {_fmt(v)}")
                for key, fn in sorted(self._gauges.get(name, {}).items()):
                    lines.append(f"{name}{_fmt_labels(key)} {_fmt(fn())}")
                buckets = self._buckets.get(name, ())
                for key, series in sorted(self._hist.get(name, {}).items()):
                    cumulative = 0.0
                    for bound, count in zip((*buckets, float("inf")), series[: len(buckets) + 1]):
                        cumulative += count
                        lines.append(f"{name}_bucket{_fmt_labels(key, (('le', _fmt(bound) if bound != float('inf') else '+Inf'),))} {_fmt(cumulative)}")
                    lines.append(f"{name}_sum{_fmt_labels(key)} {_fmt(series[-2])}")
                    lines.append(f"{name}_count{_fmt_labels(key)} {_fmt(series[-1])}")
        return "\n".join(lines) + "\n"


def server_metrics() -> Metrics:
    """The registry with the server's metric families described."""
    m = Metrics()
    m.describe("captcha_requests_total", "counter", "gRPC calls by method and status code")
    m.describe("captcha_images_total", "counter", "images recognised, by model")
    m.describe("captcha_request_latency_seconds", "histogram", "gRPC call latency by method", LATENCY_BUCKETS)
    m.describe("captcha_batch_size", "histogram", "images per ONNX Runtime run, by model", BATCH_BUCKETS)
    m.describe("captcha_queue_depth", "gauge", "images waiting for the batcher, by model")
    return m


def serve_metrics(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve `GET /metrics` on host:port from a daemon thread; returns the HTTP server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep scrapes out of the logs
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
