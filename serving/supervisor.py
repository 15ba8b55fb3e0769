"""Several server processes on one port: `captcha serve --processes N`.

One Python process answers about one core's worth of calls (its asyncio event loop), so on a
many-core machine the server runs N worker processes (`serving.worker`), each a whole
`CaptchaServer` with its own event loop, dynamic batcher and ONNX Runtime session (sharing the GPU
when there is one). They all bind the same port with SO_REUSEPORT, and the kernel spreads the
incoming connections over them; this is the pattern of grpc's `examples/python/multiprocessing`.
The supervisor (this process) runs no gRPC server itself:

- it holds the port (a socket bound with SO_REUSEPORT that never listens) so that `--port 0`
  has one number for every worker and a busy port fails at once;
- it starts the workers with "spawn" (never `fork`), waits until every one has loaded and warmed
  its models, then tells them all to report SERVING: health, which any one process may answer,
  says SERVING only when all are ready;
- it restarts a worker that dies (logged, with a growing pause if it keeps dying); the others
  keep answering meanwhile, and the replacement binds the port only once it is warm;
- it serves the one `/metrics`, the sum over every worker's prometheus-client files;
- `stop(grace)` tells every worker to drain, and kills any still there shortly after the grace.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait

from serving.config import EXIT_MARGIN_S, KILL_AFTER_S, ServeConfig
from serving.metrics import SummedMetrics, serve_metrics
from serving.model import parse_model_args
from serving.tls import load_key_pair

log = logging.getLogger("captcha.serving")
STABLE_S = 10.0  # a worker that ran this long before dying is restarted at once; sooner, after a growing pause
MAX_PAUSE_S = 30.0


@dataclass
class _Worker:
    slot: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    started: float
    ready: bool = False


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT that never listens: it holds the port (port 0:
    picks one) for the workers, which bind it too. Raises RuntimeError when the port is taken."""
    family, address = _bind_address(host, port)
    if port:  # a socket without SO_REUSEPORT fails to bind where anything else already listens
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _dual_stack(probe)
            try:
                probe.bind(address)
            except OSError as exc:
                raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    _dual_stack(sock)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _bind_address(host: str, port: int) -> tuple[int, tuple]:
    """The socket family and address gRPC binds for `host`: both IPv4 and IPv6 for a wildcard."""
    if host in ("", "0.0.0.0", "::", "[::]") and socket.has_ipv6:
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
            return socket.AF_INET6, ("::", port)
        except OSError:
            return socket.AF_INET, ("0.0.0.0", port)
    try:
        family, _, _, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return family, address


def _dual_stack(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """`config.processes` `CaptchaServer` worker processes on one port, with the same blocking
    API as `CaptchaServer` (`start`, `stop`, `wait`, `port`, `metrics`, `metrics_port`, `specs`).

    `worker_main(config, slot, conn, metrics_dir)` is what each worker process runs (tests wrap it).
    """

    def __init__(self, config: ServeConfig, worker_main=None):
        config.check()
        self.config = config = config.resolved()
        self.specs = parse_model_args(config.models)
        if config.tls_cert:
            load_key_pair(config.tls_cert, config.tls_key)  # a bad file is named here, not by N workers
        self._reserved = reserve_port(config.host, config.port)
        self.port: int = self._reserved.getsockname()[1]
        self._worker_config = replace(config, port=self.port, processes=1, metrics_port=None)
        if worker_main is None:
            from serving.worker import run as worker_main
        self._worker_main = worker_main
        self._metrics_dir = tempfile.mkdtemp(prefix="captcha-metrics-")
        self.metrics = SummedMetrics(self._metrics_dir)
        self.metrics_http = None
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._deaths: dict[int, int] = {}  # slot -> quick deaths in a row
        self._restart_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._serving = False
        self._stopped = threading.Event()
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        self._monitor: threading.Thread | None = None

    # ----------------------------------------------------------------------------- public API

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_http.server_address[1] if self.metrics_http else None

    def worker_pids(self) -> dict[int, int]:
        """slot -> pid of each worker process now running."""
        with self._lock:
            return {slot: w.process.pid for slot, w in self._workers.items()}

    def ready_slots(self) -> list[int]:
        """Slots whose worker has loaded its models and listens."""
        with self._lock:
            return sorted(slot for slot, w in self._workers.items() if w.ready)

    def start(self) -> "Supervisor":
        """Start every worker, wait until all are warm, then have them all report SERVING."""
        try:
            self._start_metrics()
            for slot in range(self.config.processes):
                self._spawn(slot)
            lines = self._wait_all_ready()
            for line in lines:
                log.warning("%s", line)
            log.warning("%d processes answer on port %d", self.config.processes, self.port)
            with self._lock:
                self._serving = True
                for w in self._workers.values():
                    w.conn.send("serve")
        except BaseException:
            self.stop(0).wait(30)
            raise
        self._monitor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._monitor.start()
        return self

    def stop(self, grace: float | None = None) -> threading.Event:
        """Begin draining every worker (from any thread); returns an event set once all are gone."""
        with self._lock:
            if self._stopping:
                return self._stopped
            self._stopping = True
        grace = self.config.grace_s if grace is None else grace
        threading.Thread(target=self._shutdown, args=(grace,), name="supervisor-stop", daemon=True).start()
        return self._stopped

    def wait(self) -> None:
        self._stopped.wait()

    # ------------------------------------------------------------------------------ workers

    def _start_metrics(self) -> None:
        if self.config.metrics_port is None:
            return
        try:
            self.metrics_http = serve_metrics(self.metrics, self.config.host, self.config.metrics_port)
        except OSError as exc:
            raise RuntimeError(f"cannot serve metrics on {self.config.host}:{self.config.metrics_port}: {exc.strerror or exc}") from None

    def _spawn(self, slot: int) -> None:
        """Start the worker for `slot` (under the lock, so that a stop cannot miss it)."""
        with self._lock:
            if self._stopping:
                return
            parent_end, child_end = self._context.Pipe()
            process = self._context.Process(target=self._worker_main, args=(self._worker_config, slot, child_end, self._metrics_dir),
                                            name=f"captcha-serve-{slot}", daemon=True)
            process.start()
            child_end.close()
            self._workers[slot] = _Worker(slot, process, parent_end, time.monotonic())

    def _wait_all_ready(self) -> list[str]:
        """Block until every worker said "ready"; the first one's description of what it serves."""
        lines: list[str] | None = None
        while not all(w.ready for w in self._workers.values()):
            waiting = [w for w in self._workers.values() if not w.ready]
            wait([x for w in waiting for x in (w.conn, w.process.sentinel)])
            for w in waiting:
                message = self._receive(w)
                if message and message[0] == "ready":
                    w.ready = True
                    lines = lines or message[1]
                elif message and message[0] == "error":
                    raise RuntimeError(message[1])
                elif not w.process.is_alive():
                    raise RuntimeError(f"server process {w.slot} exited with {_exit_text(w.process.exitcode)} while loading the models")
        return lines or []

    @staticmethod
    def _receive(w: _Worker):
        try:
            return w.conn.recv() if w.conn.poll() else None
        except (EOFError, OSError):
            return None

    def _watch(self) -> None:
        """Restart workers that die; tell replacements to serve once they are ready."""
        while not self._stopping:
            with self._lock:
                workers = list(self._workers.values())
            pause = min((t - time.monotonic() for t in self._restart_at.values()), default=1.0)
            wait([self._wake_reader, *(x for w in workers for x in (w.conn, w.process.sentinel))], timeout=max(0.0, min(1.0, pause)))
            if self._stopping:
                return
            for w in workers:
                message = self._receive(w)
                if message and message[0] == "ready":
                    self._ready_again(w)
                elif message and message[0] == "error":
                    log.warning("server process %d could not start: %s", w.slot, message[1])
                if not w.process.is_alive() and not self._stopping:
                    self._replace(w)
            now = time.monotonic()
            for slot, when in list(self._restart_at.items()):
                if when <= now and not self._stopping:
                    del self._restart_at[slot]
                    self._spawn(slot)

    def _ready_again(self, w: _Worker) -> None:
        with self._lock:
            w.ready = True
            if self._serving:
                w.conn.send("serve")
        log.warning("server process %d (pid %d) is ready again", w.slot, w.process.pid)

    def _replace(self, w: _Worker) -> None:
        """A worker died: forget it (and its live gauges), and start another in its slot."""
        w.process.join(0)
        with self._lock:
            self._workers.pop(w.slot, None)
        w.conn.close()
        self.metrics.process_died(w.process.pid)
        quick = time.monotonic() - w.started < STABLE_S
        self._deaths[w.slot] = self._deaths.get(w.slot, 0) + 1 if quick else 0
        pause = 0.0 if not quick else min(MAX_PAUSE_S, 2.0 ** (self._deaths[w.slot] - 1))
        log.warning("server process %d (pid %d) exited with %s; starting another%s", w.slot, w.process.pid,
                    _exit_text(w.process.exitcode), f" in {pause:g} s" if pause else "")
        self._restart_at[w.slot] = time.monotonic() + pause

    def _shutdown(self, grace: float) -> None:
        deadline = time.monotonic() + grace + EXIT_MARGIN_S + KILL_AFTER_S
        try:
            self._wake_writer.send(None)
            with self._lock:
                workers = list(self._workers.values())
            for w in workers:
                try:
                    w.conn.send(("stop", grace))
                except (OSError, ValueError):
                    pass
            for w in workers:
                w.process.join(max(0.0, deadline - time.monotonic()))
                if w.process.is_alive():
                    log.warning("server process %d (pid %d) did not stop within the grace; killing it", w.slot, w.process.pid)
                    w.process.kill()
                    w.process.join(5)
            if self.metrics_http:
                self.metrics_http.shutdown()
                self.metrics_http.server_close()
        finally:
            self._reserved.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._stopped.set()


def create_server(config: ServeConfig):
    """The server `config` asks for: a `CaptchaServer` in this process for `--processes 1`, else
    a `Supervisor` of that many (automatic: one per CPU). Both bind at once; call `start()`."""
    if config.resolved().processes == 1:
        from serving.server import CaptchaServer

        return CaptchaServer(config)
    return Supervisor(config)
