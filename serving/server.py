"""Assemble and run the gRPC server: servicers, health, reflection, auth, TLS, metrics, drain.

Startup order: bind the port with health NOT_SERVING, load and warm up every model, then flip
health to SERVING. `stop()` flips health back, lets in-flight calls finish within `grace`
seconds (new calls are refused), then closes the batchers.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving._proto.captcha.v1 import recognizer_pb2, recognizer_pb2_grpc
from serving._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from serving.auth import TokenAuthInterceptor
from serving.engine import Engine
from serving.metrics import serve_metrics, server_metrics
from serving.model import ServedModel, parse_model_args
from serving.servicer import InferenceServicer, RecognizerServicer

log = logging.getLogger("captcha.serving")

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
    grpc_threads: int = 64
    ort_threads: int = 0  # ONNX Runtime intra-op threads; 0 = CPU count
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
        self.specs = parse_model_args(config.models)
        self.metrics = server_metrics()
        self.engine = Engine(self.metrics, config.workers or (os.cpu_count() or 1), config.max_batch, config.max_delay_ms / 1000.0, config.max_queue,
                             processes=config.preprocess_processes)
        limit = int(config.max_message_mb * 1024 * 1024)
        interceptors = [TokenAuthInterceptor(config.token)] if config.token else []
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", 0)],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        recognizer_pb2_grpc.add_RecognizerServicer_to_server(RecognizerServicer(self.engine), self.server)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.engine), self.server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{config.host}:{config.port}"
        if config.tls_cert or config.tls_key:
            if not (config.tls_cert and config.tls_key):
                raise ValueError("--tls-cert and --tls-key go together")
            creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise RuntimeError(f"cannot listen on {address}")
        self.metrics_http = None
        self._stopped = threading.Event()

    def _set_health(self, status) -> None:
        for name in ("", *SERVICES):
            self.health.set(name, status)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_http.server_address[1] if self.metrics_http else None

    def start(self) -> "CaptchaServer":
        """Listen, load and warm up the models, then report SERVING."""
        self.server.start()
        if self.config.metrics_port is not None:
            self.metrics_http = serve_metrics(self.metrics, self.config.host, self.config.metrics_port)
        for name, path in self.specs:
            model = ServedModel(name, path, self.config.device, self.config.ort_threads)
            self.engine.add(model)
            log.warning("serving %s (%s, version %s) from %s", name, model.spec.task, model.version, path)
        self.engine.warm_up_processes()
        self.engine.ready.set()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float | None = None) -> threading.Event:
        """Begin a graceful stop; returns an event set once the server has fully stopped."""
        if self._stopped.is_set():
            return self._stopped
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        done = self.server.stop(self.config.grace_s if grace is None else grace)

        def finish() -> None:
            done.wait()
            self.engine.close()
            if self.metrics_http:
                self.metrics_http.shutdown()
            self._stopped.set()

        threading.Thread(target=finish, name="drain", daemon=True).start()
        return self._stopped

    def wait(self) -> None:
        self.server.wait_for_termination()
        self._stopped.wait()
