"""Assemble and run the gRPC server: servicers, health, reflection, auth, TLS, metrics, drain.

The server is `grpc.aio`: every call is a coroutine on one event loop, which runs in its own
thread so that `CaptchaServer` keeps a plain blocking API (`start`, `stop`, `wait`) for the CLI
and for tests. Compared with a thread per call, this keeps the cores for decoding and the model
instead of for switching between threads (`benchmarks/serve_bench.py`).

Startup order: bind the port with health NOT_SERVING, load and warm up every model, then flip
health to SERVING. `stop()` flips health back, lets in-flight calls finish within `grace`
seconds (new calls are refused), then closes the batchers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving._proto.captcha.v1 import recognizer_pb2, recognizer_pb2_grpc
from serving._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from serving import request_decoding
from serving.auth import TokenAuthInterceptor
from serving.engine import Engine
from serving.metrics import serve_metrics, server_metrics
from serving.model import ServedModel, parse_model_args
from serving.servicer import InferenceServicer, RecognizerServicer

log = logging.getLogger("captcha.serving")
DRAIN_S = 1.0  # on stop, seconds the server keeps taking calls after health turns NOT_SERVING (at most the grace)

SERVICES = (
    recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


@dataclass
class ServeConfig:
    """Everything `captcha serve` can set."""

    models: list[str]
    host: str = "0.0.0.0"
    port: int = 50051
    device: str = "auto"
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 1024
    workers: int = 0  # decode/preprocess threads; 0 = CPU count
    preprocess_processes: int = 0  # >0: decode/preprocess multi-image calls in this many processes
    ort_threads: int = 0  # ONNX Runtime intra-op threads; 0 = CPU count - 1 (one core is the event loop's)
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int | None = None
    max_message_mb: float = 4.0
    grace_s: float = 10.0


class CaptchaServer:
    """A running (after `start()`) captchakit gRPC server."""

    def __init__(self, config: ServeConfig):
        self.config = config
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        for flag, value in (("--max-batch", config.max_batch), ("--max-queue", config.max_queue)):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, not {value}")
        if not config.max_message_mb > 0:
            raise ValueError(f"--max-message-mb must be positive, not {config.max_message_mb:g}")
        for flag, value in (("--max-delay-ms", config.max_delay_ms), ("--grace", config.grace_s)):
            if not value >= 0:
                raise ValueError(f"{flag} must be zero or more, not {value:g}")
        self.specs = parse_model_args(config.models)
        self.metrics = server_metrics()
        self.engine = Engine(self.metrics, config.workers or (os.cpu_count() or 1), config.max_batch, config.max_delay_ms / 1000.0, config.max_queue,
                             processes=config.preprocess_processes)
        self.metrics_http = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="grpc-aio", daemon=True)
        self._thread.start()
        try:
            self.port = self._call(self._bind())
        except BaseException:
            self.stop(0).wait(10)
            raise

    # ------------------------------------------------------------------ the event loop's thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _call(self, coro):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _count_refused(self, method: str, code: grpc.StatusCode) -> None:
        """Calls refused before a handler ran (bad token, unreadable bytes) count like the rest."""
        self.metrics.inc("captcha_requests_total", method=method, code=code.name)

    async def _bind(self) -> int:
        config = self.config
        limit = int(config.max_message_mb * 1024 * 1024)
        self.server = grpc.aio.server(
            interceptors=[TokenAuthInterceptor(config.token, self._count_refused)] if config.token else [],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", 0)],
        )
        self.health = health.aio.HealthServicer()
        for add_servicer, servicer in ((health_pb2_grpc.add_HealthServicer_to_server, self.health),
                                       (recognizer_pb2_grpc.add_RecognizerServicer_to_server, RecognizerServicer(self.engine)),
                                       (grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(self.engine))):
            request_decoding.register(add_servicer, servicer, self.server, self._count_refused)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{config.host}:{config.port}"
        try:
            if config.tls_cert:
                creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
                port = self.server.add_secure_port(address, creds)
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen on {address}: {exc}") from None
        if not port:
            raise RuntimeError(f"cannot listen on {address}")
        return port

    async def _set_health(self, status) -> None:
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    # ------------------------------------------------------------------------------ public API

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_http.server_address[1] if self.metrics_http else None

    def start(self) -> "CaptchaServer":
        """Listen, load and warm up the models, then report SERVING."""
        self._call(self.server.start())
        if self.config.metrics_port is not None:
            try:
                self.metrics_http = serve_metrics(self.metrics, self.config.host, self.config.metrics_port)
            except OSError as exc:
                raise RuntimeError(f"cannot serve metrics on {self.config.host}:{self.config.metrics_port}: {exc.strerror or exc}") from None
        for name, path in self.specs:
            threads = self.config.ort_threads or max(1, (os.cpu_count() or 1) - 1)
            model = ServedModel(name, path, self.config.device, threads)  # here: the loop keeps answering health
            self._call(self.engine.add(model))
            log.warning("serving %s (%s, version %s) from %s", name, model.spec.task, model.version, path)
        self.engine.warm_up_processes()
        self.engine.ready.set()
        self._call(self._set_health(health_pb2.HealthCheckResponse.SERVING))
        return self

    def stop(self, grace: float | None = None) -> threading.Event:
        """Begin a graceful stop (from any thread); returns an event set once the server has fully stopped."""
        with self._stop_lock:
            if self._stopping:
                return self._stopped
            self._stopping = True
        asyncio.run_coroutine_threadsafe(self._stop(self.config.grace_s if grace is None else grace), self._loop)
        return self._stopped

    async def _stop(self, grace: float) -> None:
        try:
            if hasattr(self, "health"):
                await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            if hasattr(self, "server"):
                # Calls already sent may still wait in gRPC's transport, not yet handed to a handler:
                # `server.stop` would cancel those. Answering a little longer (health already says
                # NOT_SERVING, so balancers stop sending) lets them start; they then finish in `grace`.
                await asyncio.sleep(min(grace, DRAIN_S))
                await self.server.stop(grace)
            await self.engine.close()
            if self.metrics_http:
                await asyncio.get_running_loop().run_in_executor(None, self.metrics_http.shutdown)
        finally:
            self._stopped.set()
            self._loop.call_soon(self._loop.stop)

    def wait(self) -> None:
        """Block until the server has stopped (after `stop()`, e.g. from a signal handler)."""
        self._stopped.wait()
