"""A small Python client for the captcha.v1 API (used by `captcha client`, tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc

from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving._proto.captcha.v1 import recognizer_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def open_channel(address: str, tls_ca: str | None = None, tls: bool = False, tls_name: str | None = None) -> grpc.Channel:
    """An insecure channel, or a TLS one (system roots, or `tls_ca` for a private CA; `tls_name`,
    which implies TLS, is the host name to check the certificate against instead of `address`'s)."""
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if tls or tls_ca or tls_name:
        options += [("grpc.ssl_target_name_override", tls_name)] if tls_name else []
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
        return grpc.secure_channel(address, creds, options=options)
    return grpc.insecure_channel(address, options=options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class RecognizerClient:
    """Thin wrapper over the generated stub that adds the bearer token to every call."""

    def __init__(self, channel: grpc.Channel, token: str | None = None, timeout: float | None = 30.0):
        self.stub = pb_grpc.RecognizerStub(channel)
        self.metadata = auth_metadata(token)
        self.timeout = timeout

    def recognize(self, image: bytes, model: str = "") -> pb.RecognizeResponse:
        return self.stub.Recognize(pb.RecognizeRequest(image=image, model=model), metadata=self.metadata, timeout=self.timeout)

    def recognize_batch(self, images: list[bytes], model: str = "") -> list[pb.RecognizeResponse]:
        reply = self.stub.RecognizeBatch(pb.RecognizeBatchRequest(images=images, model=model), metadata=self.metadata, timeout=self.timeout)
        return list(reply.results)

    def recognize_stream(self, images: Iterable[bytes], model: str = "", timeout: float | None = None) -> Iterator[pb.RecognizeResponse]:
        requests = (pb.RecognizeRequest(image=img, model=model, id=str(i)) for i, img in enumerate(images))
        return self.stub.RecognizeStream(requests, metadata=self.metadata, timeout=timeout)

    def model_info(self, model: str = "") -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(model=model), metadata=self.metadata, timeout=self.timeout)


def response_dict(path: str, response: pb.RecognizeResponse) -> dict:
    """The fields `captcha predict --json` prints: path, text, confidence, char_confidences."""
    return {
        "path": path,
        "text": response.text,
        "confidence": response.confidence,
        "char_confidences": [round(c, 6) for c in response.char_confidences],
    }
