"""One gRPC server process: servicers, health, reflection, auth, TLS, metrics, drain.

The server is `grpc.aio`: every call is a coroutine on one event loop, which runs in its own
thread so that `CaptchaServer` keeps a plain blocking API (`start`, `stop`, `wait`) for the CLI
and for tests. Compared with a thread per call, this keeps the cores for decoding and the model
instead of for switching between threads (`benchmarks/serve_bench.py`). One event loop is one
core's worth of calls: `serving.supervisor` runs several of these processes on one port.

Startup order (`start`): bind the port with health NOT_SERVING, load and warm up every model,
then flip health to SERVING. A worker of a multi-process server takes the steps itself in
another order (`load_models`, `bind`, `listen`, then `set_serving` once every worker is warm), so
that a replacement worker never takes a call before it is ready. `stop()` flips health back,
keeps taking calls for a moment, lets calls in flight finish, and is done within `grace` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import replace
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import request_decoding
from serving._proto.captcha.v1 import recognizer_pb2, recognizer_pb2_grpc
from serving._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from serving.auth import TokenAuthInterceptor
from serving.config import ServeConfig
from serving.engine import Engine
from serving.metrics import serve_metrics, server_metrics
from serving.model import ServedModel, parse_model_args
from serving.servicer import InferenceServicer, RecognizerServicer
from serving.tls import load_key_pair

__all__ = ["CaptchaServer", "ServeConfig", "exit_now"]

log = logging.getLogger("captcha.serving")
DRAIN_S = 1.0  # on stop, seconds the server keeps taking calls after health turns NOT_SERVING (at most half the grace)

SERVICES = (
    recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


def exit_now(code: int = 0) -> NoReturn:
    """End the process at once, after flushing output: threads still decoding an image or running
    the model are not waited for (Python would join them at exit, past any grace)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class CaptchaServer:
    """A captchakit gRPC server in this process (running after `start()`).

    `config.processes` is not this class's business: it is one process (see `serving.supervisor`).
    `reuse_port` lets several processes bind the same port; `bind=False` leaves binding to `bind()`.
    """

    def __init__(self, config: ServeConfig, *, reuse_port: bool = False, bind: bool = True):
        config.check()
        self.config = config = replace(config, processes=1).resolved()
        self.specs = parse_model_args(config.models)
        self._key_pair = load_key_pair(config.tls_cert, config.tls_key) if config.tls_cert else None
        self.reuse_port = reuse_port
        self.metrics = server_metrics()
        self.engine = Engine(self.metrics, config.workers, config.max_batch, config.max_delay_ms / 1000.0, config.max_queue)
        self.metrics_http = None
        self.port: int | None = None
        self.server = self.health = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="grpc-aio", daemon=True)
        self._thread.start()
        if bind:
            self.bind()

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
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", int(self.reuse_port))]
        if config.max_connection_age_s > 0:  # a GOAWAY after this age: the client opens a new connection for its next calls
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)))
        self.server = grpc.aio.server(
            interceptors=[TokenAuthInterceptor(config.token, self._count_refused)] if config.token else [], options=options,
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
            if self._key_pair:
                port = self.server.add_secure_port(address, grpc.ssl_server_credentials([self._key_pair]))
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

    def bind(self) -> int:
        """Create the gRPC server and bind its port (health NOT_SERVING); returns the port."""
        try:
            self.port = self._call(self._bind())
        except BaseException:
            self.stop(0).wait(10)
            raise
        return self.port

    def load_models(self) -> list[str]:
        """Load and warm up every model; returns the lines that say what is served and where."""
        lines: list[str] = []
        for name, path in self.specs:
            model = ServedModel(name, path, self.config.device, self.config.ort_threads)  # here: the loop keeps answering health
            self._call(self.engine.add(model))
            lines.append(f"serving {name} ({model.spec.task}, version {model.version}) from {path}")
            if model.fallback:
                lines.append(model.fallback)
            elif f"ONNX Runtime runs on {model.provider}" not in lines:
                lines.append(f"ONNX Runtime runs on {model.provider}")
            if model.spec.quantization and model.provider != "CPUExecutionProvider":
                lines.append(f"{name} is an {model.spec.quantization} export, made for the CPU provider: on {model.provider} the float export "
                             "(`captcha export RUN` without --quantize) runs faster")
        self.engine.ready.set()
        return lines

    def listen(self) -> None:
        """Start taking calls (and serving metrics, when this process has a metrics port)."""
        self._call(self.server.start())
        if self.config.metrics_port is not None:
            try:
                self.metrics_http = serve_metrics(self.metrics, self.config.host, self.config.metrics_port)
            except OSError as exc:
                raise RuntimeError(f"cannot serve metrics on {self.config.host}:{self.config.metrics_port}: {exc.strerror or exc}") from None

    def set_serving(self) -> None:
        self._call(self._set_health(health_pb2.HealthCheckResponse.SERVING))

    def start(self) -> "CaptchaServer":
        """Listen, load and warm up the models, then report SERVING."""
        self.listen()
        for line in self.load_models():
            log.warning("%s", line)
        self.set_serving()
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
        deadline = time.monotonic() + grace
        try:
            if self.health is not None:
                await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            if self.server is not None:
                # Calls already sent may still wait in gRPC's transport, not yet handed to a handler:
                # `server.stop` would cancel those. Answering a little longer (health already says
                # NOT_SERVING, so balancers stop sending) lets them start; they then finish in `grace`.
                await asyncio.sleep(min(grace / 2, DRAIN_S))
                await self.server.stop(max(0.0, deadline - time.monotonic()))
            try:  # queued work was cancelled with its calls; a model run still going is not waited for
                await asyncio.wait_for(self.engine.close(), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            if self.metrics_http:
                await asyncio.get_running_loop().run_in_executor(None, self.metrics_http.shutdown)
        finally:
            self._stopped.set()
            self._loop.call_soon(self._loop.stop)

    def wait(self) -> None:
        """Block until the server has stopped (after `stop()`, e.g. from a signal handler)."""
        self._stopped.wait()
