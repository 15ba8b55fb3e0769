"""The same measurement as `load_generator.py`, made by `h2load` (nghttp2's HTTP/2 load tester, in C).

    H2LoadGenerator(clients, payloads, metrics_address=...).measure(address, "unary", 64, 4.0)

A gRPC call is an HTTP/2 POST whose body is length-prefixed protobuf messages, so `h2load` can
send our calls without a gRPC library: each call costs the client a small fraction of what a Python
client spends, which leaves more of a small machine to the server. `clients` becomes h2load's
threads, each call in flight has a connection of its own (`-c concurrency -m 1`, as the Python
generator does), every request carries the same image (h2load sends one body), and latencies come
from its per-request log. h2load sees HTTP statuses only, while gRPC reports failures in trailers,
so errors are read from the server's own `captcha_requests_total` (start it with `--metrics-port`;
the calls h2load cancels when its time is up are not errors).
Unary and batch calls only: h2load times a stream as a whole, not each image's reply.

Install: `apt-get install nghttp2-client` (Debian/Ubuntu) or `brew install nghttp2`.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import struct
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from load_generator import METHODS

MODES = ("unary", "batch")
WARM_UP_MS = 1000  # calls before the clock starts: connections made, the server warm (not counted nor logged)
STATUS_LINE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
NOT_ERRORS = ("OK", "CANCELLED")  # h2load cancels the calls still in flight when its time is up
REQUESTS_TOTAL = re.compile(r'^captcha_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message on the wire: an uncompressed flag, its length (big-endian), the bytes."""
    return b"\0" + struct.pack(">I", len(message)) + message


def request_body(mode: str, payload: bytes, batch: int) -> bytes:
    """The HTTP/2 body of one call of `mode` carrying `payload` (once, or `batch` times)."""
    from serving._proto.captcha.v1 import recognizer_pb2 as pb

    if mode == "unary":
        return grpc_frame(pb.RecognizeRequest(image=payload, id="0").SerializeToString())
    if mode == "batch":
        return grpc_frame(pb.RecognizeBatchRequest(images=[payload] * batch).SerializeToString())
    raise ValueError(f"h2load measures {' and '.join(MODES)} calls, not {mode!r} (it times a stream as a whole)")


def failed_calls(metrics_address: str | None) -> float | None:
    """Calls the server answered with a gRPC status other than OK, by its /metrics (None: not known)."""
    if not metrics_address:
        return None
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    return sum(float(m["value"]) for m in REQUESTS_TOTAL.finditer(text) if not any(f'code="{c}"' in m["labels"] for c in NOT_ERRORS))


class H2LoadGenerator:
    """`clients` h2load threads sending the first of `payloads` (encoded images)."""

    def __init__(self, clients: int, payloads: list[bytes], metrics_address: str | None = None, h2load: str | None = None):
        self.h2load = h2load or shutil.which("h2load")
        if self.h2load is None:
            raise RuntimeError("h2load is not installed (apt-get install nghttp2-client)")
        self.clients = max(1, clients)
        self.payload = payloads[0]
        self.metrics_address = metrics_address
        self.tmp = tempfile.TemporaryDirectory(prefix="h2load-")

    def measure(self, address: str, mode: str, concurrency: int, seconds: float, batch: int = 16, token: str | None = None) -> dict:
        """Keep `concurrency` calls in flight for `seconds`; images/s, p50/p99 ms, errors, client CPU."""
        body, log = Path(self.tmp.name) / f"{mode}.bin", Path(self.tmp.name) / "requests.log"
        body.write_bytes(request_body(mode, self.payload, batch))
        log.unlink(missing_ok=True)
        headers = ["content-type: application/grpc", "te: trailers"] + ([f"authorization: Bearer {token}"] if token else [])
        cmd = [self.h2load, "-c", str(concurrency), "-m", "1", "-t", str(min(self.clients, concurrency)),
               "--warm-up-time", f"{WARM_UP_MS}ms", "-D", f"{round(seconds * 1000)}ms",
               "-d", str(body), "--log-file", str(log), *(a for h in headers for a in ("-H", h)), f"http://{address}{METHODS[mode]}"]
        before_errors, before_cpu = failed_calls(self.metrics_address), _children_cpu()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + WARM_UP_MS / 1000 + 60, env={**os.environ, "LC_ALL": "C"})
        cpu, loaded = _children_cpu() - before_cpu, seconds + WARM_UP_MS / 1000
        status = STATUS_LINE.search(out.stdout)
        if out.returncode != 0 or status is None:
            raise RuntimeError(f"h2load failed ({out.returncode}): {(out.stderr or out.stdout)[-2000:]}")
        _total, _started, _done, succeeded, failed, errored, timeout = map(int, status.groups())
        latencies = _latencies_ms(log)
        after_errors = failed_calls(self.metrics_address)
        grpc_errors = after_errors - before_errors if after_errors is not None and before_errors is not None else 0
        images = (succeeded - grpc_errors) * (batch if mode == "batch" else 1)
        return {
            "images_per_s": images / seconds,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
            "errors": int(failed + errored + timeout + grpc_errors),
            "client_cpu_ms_per_image": 1000 * cpu / max(1, images * loaded / seconds),
            "loaded_s": loaded,  # the warm-up loads the server too: its CPU is spread over this time's images
        }

    def close(self) -> None:
        self.tmp.cleanup()

    def __enter__(self) -> "H2LoadGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _latencies_ms(log: Path) -> np.ndarray:
    """Each request's time to its whole response, from h2load's log (start µs, status, duration µs)."""
    if not log.exists():
        return np.zeros(0)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    return np.asarray([int(r[2]) / 1000 for r in rows if len(r) >= 3 and r[1].startswith("2")], dtype=float)
