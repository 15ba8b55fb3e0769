"""The gRPC server under adverse conditions, for real on a loopback port: TLS, deadlines, a full
queue shedding load, and messages over the size limit. After each, a good call must still work.

Slow paths are made deterministic by holding the model behind a gate (`ModelGate`), never by
sleeping and hoping; no test asserts a wall-clock time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from captcha.export import export_onnx
from captcha.inference import Predictor
from serving import cli as serving_cli
from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving._proto.inference import grpc_service_pb2 as kpb
from serving._proto.inference import grpc_service_pb2_grpc as kpb_grpc
from serving.batcher import CPU_MAX_BATCH
from serving.client import RecognizerClient, open_channel
from serving.health_probe import check as health_check
from serving.health_probe import main as health_probe_main
from serving.model import ServedModel
from serving.server import CaptchaServer, ServeConfig
from serving.supervisor import Supervisor, create_server
from serving_hooks import split_recording_worker

WAIT_S = 20  # upper bound for waiting on a condition (never an expected duration)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict:
    from captcha.generate import GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    tmp = tmp_path_factory.mktemp("robust")
    generate_dataset(tmp / "data", GeneratorConfig(splits={"train": 64, "val": 16, "test": 16}, seed=11))
    fit(TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), epochs=1, cache_dir=str(tmp / "cache")), log=lambda s: None)
    onnx_path = export_onnx(tmp / "run", tmp / "captcha.onnx", verify_images=4, log=lambda s: None).path
    images = sorted((tmp / "data" / "test").glob("*.png"))[:4]
    return {"run": tmp / "run", "onnx": onnx_path, "images": images, "tmp": tmp}


def _until(condition, what: str) -> None:
    end = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class ModelGate:
    """Wraps `ServedModel.run`: records every batch's size and, while closed, holds the model."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        real = ServedModel.run

        def run(model: ServedModel, batch: np.ndarray) -> np.ndarray:
            self.batches.append(len(batch))
            self.entered.set()
            assert self.opened.wait(60), "the test never opened the model gate"
            return real(model, batch)

        monkeypatch.setattr(ServedModel, "run", run)

    def close(self) -> None:
        self.entered.clear()
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def gated(monkeypatch, artifacts):
    """Start a server (config overrides as kwargs) whose model runs behind a `ModelGate`."""
    gate = ModelGate(monkeypatch)
    servers: list[CaptchaServer] = []

    def start(**overrides) -> tuple[CaptchaServer, RecognizerClient]:
        config = ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, grace_s=1, **overrides)
        srv = CaptchaServer(config).start()
        servers.append(srv)
        gate.batches.clear()  # forget the warm-up runs
        channel = open_channel(f"127.0.0.1:{srv.port}")
        srv._test_channel = channel
        return srv, RecognizerClient(channel)

    yield gate, start
    gate.open()
    for srv in servers:
        srv._test_channel.close()
        srv.stop(0).wait(10)


def _expected(artifacts, paths) -> list[str]:
    return [p.text for p in Predictor.from_run(artifacts["run"], "cpu").predict_paths(paths)]


# --------------------------------------------------------------------------------------------- TLS


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed cert for localhost / 127.0.0.1: with `cryptography` if importable, else openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("TLS test needs a self-signed certificate: neither the `cryptography` package nor the `openssl` CLI is available")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def tls_server(artifacts, tmp_path_factory, request):
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    srv = create_server(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, processes=request.param,
                                    tls_cert=str(cert), tls_key=str(key), grace_s=1)).start()
    yield srv, cert
    srv.stop(0).wait(10)


def test_tls_serves_trusted_clients(artifacts, tls_server) -> None:
    srv, cert = tls_server
    paths = artifacts["images"]
    for host in ("localhost", "127.0.0.1"):  # the cert names both
        with open_channel(f"{host}:{srv.port}", tls_ca=str(cert)) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            texts = [RecognizerClient(channel).recognize(p.read_bytes()).text for p in paths]
            assert texts == _expected(artifacts, paths)
    assert health_check(f"localhost:{srv.port}", tls_ca=str(cert), timeout=10)
    # the certificate is checked against --tls-name when given: the name it carries passes, another fails
    assert health_check(f"127.0.0.1:{srv.port}", tls_ca=str(cert), tls_name="localhost", timeout=10)
    assert not health_check(f"127.0.0.1:{srv.port}", tls_ca=str(cert), tls_name="captcha.example.com", timeout=10)


def test_the_health_probe_takes_its_tls_settings_from_the_environment(tls_server, monkeypatch, capsys) -> None:
    srv, cert = tls_server  # the image's one HEALTHCHECK command, for a server started with --tls-cert
    assert health_probe_main(["--address", f"127.0.0.1:{srv.port}", "--timeout", "10"]) == 1  # plaintext
    monkeypatch.setenv("CAPTCHA_HEALTH_TLS_CA", str(cert))
    monkeypatch.setenv("CAPTCHA_HEALTH_TLS_NAME", "localhost")
    assert health_probe_main(["--address", f"127.0.0.1:{srv.port}", "--timeout", "10"]) == 0
    plaintext, tls = capsys.readouterr().out.splitlines()
    assert plaintext.startswith(f"cannot connect to 127.0.0.1:{srv.port}: ") and "add --tls or --tls-ca" in plaintext
    assert tls == "SERVING"
    monkeypatch.setenv("CAPTCHA_HEALTH_TLS_CA", str(cert) + ".missing")
    with pytest.raises(SystemExit):
        health_probe_main(["--address", f"127.0.0.1:{srv.port}"])
    assert "no such file" in capsys.readouterr().err


def test_tls_refuses_plaintext_and_untrusted_clients(artifacts, tls_server) -> None:
    srv, _cert = tls_server
    image = artifacts["images"][0].read_bytes()
    for tls in (False, True):  # plaintext, and TLS that trusts only the system roots
        with open_channel(f"localhost:{srv.port}", tls=tls) as channel:
            with pytest.raises(grpc.RpcError) as err:
                RecognizerClient(channel, timeout=10).recognize(image)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not health_check(f"localhost:{srv.port}", timeout=5)


def test_tls_cli_client(artifacts, tls_server, capsys) -> None:
    srv, cert = tls_server
    parser = argparse.ArgumentParser()
    serving_cli.register(parser.add_subparsers())
    paths = artifacts["images"][:2]
    args = parser.parse_args(["client", *map(str, paths), "--address", f"localhost:{srv.port}", "--tls-ca", str(cert), "--timeout", "30"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == _expected(artifacts, paths)


def test_tls_needs_cert_and_key(artifacts, tls_server) -> None:
    _srv, cert = tls_server
    with pytest.raises(ValueError, match="go together"):
        CaptchaServer(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, tls_cert=str(cert)))


# --------------------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize("method", ["Recognize", "RecognizeBatch"])
def test_deadline_exceeded_then_next_call_is_served(artifacts, gated, method: str) -> None:
    gate, start = gated
    srv, client = start(max_batch=1, max_delay_ms=0)
    image = artifacts["images"][0].read_bytes()
    gate.close()
    first = client.stub.Recognize.future(pb.RecognizeRequest(image=image), timeout=60)  # holds the model
    assert gate.entered.wait(WAIT_S)
    with pytest.raises(grpc.RpcError) as err:  # queued behind it; its deadline passes first
        if method == "Recognize":
            client.stub.Recognize(pb.RecognizeRequest(image=image), timeout=0.5)
        else:
            client.stub.RecognizeBatch(pb.RecognizeBatchRequest(images=[image, image]), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server itself noticed the deadline (not just the client) and answered the call
    _until(lambda: srv.metrics.value("captcha_requests_total", method=method, code="DEADLINE_EXCEEDED") == 1, "the server to end the call")
    gate.open()
    assert first.result(timeout=WAIT_S).text
    text = client.recognize(image).text  # the server keeps serving
    assert text == _expected(artifacts, artifacts["images"][:1])[0]
    assert sum(gate.batches) == 2  # the expired call's images were dropped before the model ran


def test_stream_deadline_then_next_call_is_served(artifacts, gated) -> None:
    gate, start = gated
    srv, client = start(max_batch=1, max_delay_ms=0)
    image = artifacts["images"][0].read_bytes()
    gate.close()
    responses = client.recognize_stream([image, image, image], timeout=0.5)
    assert gate.entered.wait(WAIT_S)
    with pytest.raises(grpc.RpcError) as err:
        list(responses)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _until(lambda: srv.metrics.value("captcha_requests_total", method="RecognizeStream", code="DEADLINE_EXCEEDED") == 1, "the server to end the stream")
    gate.open()
    assert client.recognize(image).text
    _until(lambda: sum(gate.batches) == 2, "the good call")
    assert sum(gate.batches) == 2  # the one image already in the model, then the good call; the rest were skipped


# ------------------------------------------------------------------------------ load shedding


def test_full_queue_sheds_load_then_recovers(artifacts, gated) -> None:
    gate, start = gated
    srv, client = start(max_batch=1, max_delay_ms=0, max_queue=2, workers=1)
    batcher = srv.engine.entries["captcha"].batcher
    images = [p.read_bytes() for p in artifacts["images"]]
    gate.close()
    held = client.stub.Recognize.future(pb.RecognizeRequest(image=images[0]), timeout=60)
    assert gate.entered.wait(WAIT_S)  # the model is busy with the first image ...
    queued = [client.stub.Recognize.future(pb.RecognizeRequest(image=img), timeout=60) for img in images[1:3]]
    _until(lambda: batcher.depth == 2, "two images queued")  # ... and the queue (2) is full
    with pytest.raises(grpc.RpcError) as err:
        client.recognize(images[3])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "busy" in err.value.details() and "2 images" in err.value.details()
    batch = client.recognize_batch(images[:2])  # batch items are shed one by one, the call itself is OK
    assert [r.error.code for r in batch] == [grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]] * 2
    assert all("busy" in r.error.message for r in batch)
    gate.open()
    texts = [f.result(timeout=WAIT_S).text for f in (held, *queued)]
    expected = _expected(artifacts, artifacts["images"])
    assert texts == expected[:3]  # everything accepted was answered
    assert client.recognize(images[3]).text == expected[3]  # and the server serves again
    assert srv.metrics.value("captcha_requests_total", method="Recognize", code="RESOURCE_EXHAUSTED") == 1


# -------------------------------------------------------------------------- oversized messages


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def small_limit_server(artifacts, request, tmp_path_factory):
    config = ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, processes=request.param, max_message_mb=0.25, grace_s=1)
    if request.param == 1:
        srv = create_server(config).start()
        srv.split_log = None
    else:  # its workers record where they split KServe raw tensors (test_kserve_counts_items_...)
        split_log = tmp_path_factory.mktemp("split") / "threads.txt"
        srv = Supervisor(config, worker_main=functools.partial(split_recording_worker, str(split_log))).start()
        srv.split_log = split_log
    with open_channel(f"127.0.0.1:{srv.port}") as channel:  # the client itself allows 64 MiB
        yield srv, channel
    srv.stop(0).wait(10)


def _assert_too_large(err: pytest.ExceptionInfo) -> None:
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()  # the reason, with both sizes


def test_oversized_messages_are_refused_with_a_reason(artifacts, small_limit_server) -> None:
    _srv, channel = small_limit_server
    client = RecognizerClient(channel, timeout=30)
    good = artifacts["images"][0].read_bytes()
    big = b"\x89PNG" + b"\x00" * (300 * 1024)  # over 0.25 MiB
    with pytest.raises(grpc.RpcError) as err:
        client.recognize(big)
    _assert_too_large(err)
    with pytest.raises(grpc.RpcError) as err:  # small images, too many of them in one message
        client.recognize_batch([good] * (2 + 300 * 1024 // len(good)))
    _assert_too_large(err)
    with pytest.raises(grpc.RpcError) as err:  # one oversized stream message ends that stream
        list(client.recognize_stream([good, big, good], timeout=30))
    _assert_too_large(err)
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(kpb.ModelInferRequest(model_name="captcha", inputs=[tensor], raw_input_contents=[big]), timeout=30)
    _assert_too_large(err)
    assert client.recognize(good).text == _expected(artifacts, artifacts["images"][:1])[0]  # still serving


def test_under_the_limit_but_not_an_image_is_invalid_argument(artifacts, small_limit_server) -> None:
    _srv, channel = small_limit_server
    client = RecognizerClient(channel, timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        client.recognize(b"\x89PNG" + b"\x00" * (200 * 1024))  # fits the limit, decodes to nothing
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details()
    assert client.recognize(artifacts["images"][0].read_bytes()).text


# ------------------------------------------------------------------- several server processes


def test_several_server_processes_give_the_same_answers(artifacts) -> None:
    """`--processes 2`: calls decode + preprocess in the worker processes, same functions, same
    answers as `captcha predict`; a bad item still gets its own INVALID_ARGUMENT."""
    srv = create_server(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, processes=2, grace_s=1)).start()
    try:
        with open_channel(f"127.0.0.1:{srv.port}") as channel:
            client = RecognizerClient(channel, timeout=60)
            paths = artifacts["images"]
            payloads = [p.read_bytes() for p in paths]
            expected = Predictor.from_run(artifacts["run"], "cpu").predict_paths(paths)
            results = client.recognize_batch([*payloads, b"not an image"])
            assert [r.text for r in results[:-1]] == [e.text for e in expected]
            for r, e in zip(results, expected):
                assert r.confidence == pytest.approx(e.confidence, rel=1e-3, abs=1e-6)
            assert results[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and results[-1].error.message
            stub = kpb_grpc.GRPCInferenceServiceStub(channel)
            tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[len(payloads)])
            reply = stub.ModelInfer(kpb.ModelInferRequest(model_name="captcha", inputs=[tensor], raw_input_contents=[
                b"".join(len(b).to_bytes(4, "little") + b for b in payloads)]), timeout=60)
            raw = reply.raw_output_contents[[o.name for o in reply.outputs].index("text")]
            texts, offset = [], 0
            while offset < len(raw):
                n = int.from_bytes(raw[offset : offset + 4], "little")
                texts.append(raw[offset + 4 : offset + 4 + n].decode())
                offset += 4 + n
            assert texts == [e.text for e in expected]
    finally:
        srv.stop(0).wait(10)


# ------------------------------------------------------------------- malformed calls


def test_malformed_calls_get_invalid_argument_and_the_server_goes_on(artifacts, small_limit_server) -> None:
    srv, channel = small_limit_server
    checks_refused = srv.metrics.value("captcha_requests_total", method="Check", code="INVALID_ARGUMENT")
    client = RecognizerClient(channel, timeout=30)
    assert list(client.recognize_batch([])) == []  # an empty batch is an empty answer, not INTERNAL
    # a stream message that is not a RecognizeRequest ends the stream with a reason, not OK
    raw_stream = channel.stream_stream("/captcha.v1.Recognizer/RecognizeStream", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        list(raw_stream(iter([b"\n\xff"]), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unreadable stream message" in err.value.details()
    # a unary call whose bytes are not a message is the caller's error, not UNKNOWN / a server traceback
    for method in ("/captcha.v1.Recognizer/Recognize", "/inference.GRPCInferenceService/ModelInfer", "/grpc.health.v1.Health/Check"):
        raw_call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            raw_call(b"\n\xff", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value.details())
        assert f"{method.lstrip('/')}: unreadable request (DecodeError" in err.value.details()
    assert srv.metrics.value("captcha_requests_total", method="Check", code="INVALID_ARGUMENT") == checks_refused + 1
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    good = artifacts["images"][0].read_bytes()
    tensor = kpb.ModelInferRequest.InferInputTensor
    for bad, reason in ((tensor(name="foo", datatype="BYTES", shape=[1]), "unknown input 'foo'"),
                        (tensor(name="image", datatype="BYTES", shape=[5]), "does not match its 1 element")):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(kpb.ModelInferRequest(model_name="captcha", inputs=[bad], raw_input_contents=[struct.pack("<I", len(good)) + good]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in err.value.details()
    as_triton = tensor(name="image", datatype="BYTES", shape=[1, 1])  # [N, 1], as Triton clients send it
    reply = stub.ModelInfer(kpb.ModelInferRequest(model_name="captcha", inputs=[as_triton], raw_input_contents=[struct.pack("<I", len(good)) + good]), timeout=30)
    assert list(reply.outputs[0].shape) == [1]
    assert client.recognize(good).text == _expected(artifacts, artifacts["images"][:1])[0]


def test_an_image_header_over_pillows_own_limit_is_refused_by_ours(artifacts, small_limit_server) -> None:
    # a JPEG header claiming 15000 x 15000 pixels (Pillow refuses past ~179M pixels itself)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 15000, 15000, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    bomb = b"\xff\xd8" + sof + b"\xff\xd9"
    client = RecognizerClient(small_limit_server[1], timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        client.recognize(bomb)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the limit" in err.value.details()


def test_serving_a_file_that_is_not_onnx_is_an_error_line(artifacts, capsys) -> None:
    from captcha.cli import main

    assert main(["serve", str(artifacts["run"] / "best.pt"), "--port", "0"]) == 2
    assert "best.pt: not a loadable ONNX model" in capsys.readouterr().err


def test_client_names_a_file_over_the_message_limit_and_reads_the_rest(artifacts, small_limit_server, tmp_path, capsys) -> None:
    from captcha.cli import main

    srv, _channel = small_limit_server
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (300 * 1024))
    first, last = (str(p) for p in artifacts["images"][:2])
    assert main(["client", first, str(big), last, "--address", f"127.0.0.1:{srv.port}", "--max-message-mb", "0.25"]) == 1
    out, err = capsys.readouterr()
    assert "big.png: 0.29 MB, over the 0.25 MB limit (--max-message-mb" in err and first in out and last in out


def test_the_cli_client_reads_folders_and_checks_the_certificate_name(artifacts, tls_server, tmp_path, capsys) -> None:
    from captcha.cli import main

    srv, cert = tls_server
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in artifacts["images"][:2]:
        shutil.copy(p, folder / p.name)
    address = ["--address", f"127.0.0.1:{srv.port}", "--tls-ca", str(cert), "--timeout", "30"]
    assert main(["client", str(folder), *address, "--tls-name", "localhost"]) == 0  # the name the certificate carries
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == _expected(artifacts, sorted(folder.glob("*.png")))
    assert main(["client", str(folder), *address, "--tls-name", "captcha.example.com"]) == 2  # another name fails
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_a_call_larger_than_the_queue_is_named_and_nonsense_limits_are_refused(artifacts, gated) -> None:
    _gate, start = gated
    _srv, client = start(max_queue=3)
    assert client.model_info().max_batch_size == CPU_MAX_BATCH  # --max-batch 0: the CPU's batch size
    images = [p.read_bytes() for p in artifacts["images"]]
    with pytest.raises(grpc.RpcError) as err:  # an idle server: not "busy", the call itself is too large
        client.recognize_batch(images[:4])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4 images in one call; the server queues at most 3 per model (--max-queue)" in err.value.details()
    assert [r.text for r in client.recognize_batch(images[:3])] == _expected(artifacts, artifacts["images"][:3])
    for bad, message in (({"max_queue": 0}, "--max-queue must be at least 1"), ({"max_message_mb": 0}, "--max-message-mb must be positive"),
                         ({"max_batch": -1}, r"--max-batch must be 0 \(automatic\) or more"), ({"grace_s": -1}, "--grace must be zero or more")):
        with pytest.raises(ValueError, match=message):
            CaptchaServer(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, **bad))


def test_a_busy_metrics_port_is_one_error_line(artifacts, capsys) -> None:
    import socket

    from captcha.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(artifacts["onnx"]), "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(port)]) == 2
    assert f"error: cannot serve metrics on 127.0.0.1:{port}:" in capsys.readouterr().err


# ------------------------------------------------------------------ hostile input (issue #32)

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"


import hostile.make_hostile as hostile  # noqa: E402 - tests/ is on the path, as for serving_hooks


def test_hostile_files_get_an_answer_or_invalid_argument_and_the_server_goes_on(artifacts, small_limit_server) -> None:
    _srv, channel = small_limit_server
    client = RecognizerClient(channel, timeout=60)
    good = artifacts["images"][0].read_bytes()
    expected = _expected(artifacts, artifacts["images"][:1])[0]
    cases = {**{n: (c, (HOSTILE_DIR / n).read_bytes()) for n, c in hostile.HOSTILE.items()},
             **{n: (c, c.make()) for n, c in hostile.LARGE.items()}}
    for name, (case, data) in cases.items():
        if case.shape:
            assert client.recognize(data).text, name
        else:
            with pytest.raises(grpc.RpcError) as err:
                client.recognize(data)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and case.refused in err.value.details(), name
        assert client.recognize(good).text == expected, name


def test_large_images_decode_one_at_a_time_beside_the_workers(artifacts, monkeypatch) -> None:
    """Images whose decode would peak over DECODE_BUDGET_BYTES / --workers go one at a time to one
    extra thread: memory does not grow with --workers, and small images keep the workers (old:
    four workers each held a large image and a small batch waited for them)."""
    from captcha import constants, imageio

    monkeypatch.setattr(constants, "DECODE_BUDGET_BYTES", 8 * 2**20)  # 2 MiB a worker: the images below are large
    large = cv2.imencode(".png", np.zeros((1000, 1000), np.uint8))[1].tobytes()
    real_decode, held = imageio.decode_image, threading.Event()
    entered, active, most = threading.Event(), [0], [0]

    def decode(data, source="<bytes>", header=None):
        if data != large:
            return real_decode(data, source, header)
        active[0] += 1
        most[0] = max(most[0], active[0])
        entered.set()
        held.wait(60)
        active[0] -= 1
        return real_decode(data, source, header)

    monkeypatch.setattr(imageio, "decode_image", decode)
    srv = CaptchaServer(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, workers=4, grace_s=1)).start()
    try:
        with open_channel(f"127.0.0.1:{srv.port}") as channel:
            client = RecognizerClient(channel, timeout=20)
            big = client.stub.RecognizeBatch.future(pb.RecognizeBatchRequest(images=[large] * 4), timeout=60)
            assert entered.wait(WAIT_S)
            small = artifacts["images"][:2]
            assert [r.text for r in client.recognize_batch([p.read_bytes() for p in small])] == _expected(artifacts, small)
            held.set()
            assert [r.HasField("error") for r in big.result(timeout=WAIT_S).results] == [False] * 4
    finally:
        held.set()
        srv.stop(0).wait(10)
    assert most[0] == 1


def _infer(stub, inputs, raw=None, outputs=(), **kw):
    request = kpb.ModelInferRequest(model_name="captcha", inputs=inputs, raw_input_contents=raw or [],
                                    outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs], **kw)
    return stub.ModelInfer(request, timeout=30)


def _raw(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def test_kserve_refuses_what_triton_refuses(artifacts, small_limit_server) -> None:
    _srv, channel = small_limit_server
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    good = artifacts["images"][0].read_bytes()
    tensor, contents = kpb.ModelInferRequest.InferInputTensor, kpb.InferTensorContents
    image = dict(name="image", datatype="BYTES")
    refused = [
        ([tensor(**image, shape=[1], contents=contents(bytes_contents=[good]))], [_raw(good)], (), "contents must not be given"),
        ([tensor(**image, shape=[1])], [_raw(good), _raw(good)], (), "2 raw_input_contents entries for 1 input"),
        ([tensor(**image, shape=[-1, -1])], [_raw(good)], (), "is not [N] or [N, 1]"),
        ([tensor(**image, shape=[-1])], [_raw(good)], (), "is not [N] or [N, 1]"),
        ([tensor(**image, shape=[])], [_raw(good)], (), "is not [N] or [N, 1]"),
        ([tensor(**image, shape=[1, 2])], [_raw(good)], (), "is not [N] or [N, 1]"),
        ([tensor(**image, shape=[1]), tensor(**image, shape=[1])], [_raw(good)] * 2, (), "expected one input tensor"),
        ([tensor(name="image", datatype="FP32", shape=[1])], [_raw(good)], (), "is BYTES (encoded images), not 'FP32'"),
        ([tensor(**image, shape=[1])], [_raw(good)], ("text", "text"), "'text' is requested more than once"),
        ([tensor(**image, shape=[1])], [_raw(good)], ("nope",), "unknown output(s) 'nope'"),
        ([tensor(**image, shape=[1], contents=contents(int_contents=[1]))], [], (), "not int_contents"),
        ([tensor(**image, shape=[1])], [], (), "has no data"),
        ([tensor(**image, shape=[2])], [_raw(good)], (), "input shape [2] does not match its 1 element(s)"),
        ([tensor(**image, shape=[1])], [_raw(good, good)], (), "more than the 1 element(s)"),
        ([tensor(**image, shape=[1])], [_raw(good)[:-1]], (), f"claims {len(good):,} bytes"),
    ]
    for inputs, raw, outputs, reason in refused:
        with pytest.raises(grpc.RpcError) as err:
            _infer(stub, inputs, raw, outputs)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in err.value.details(), (reason, err.value.details())
    reply = _infer(stub, [tensor(**image, shape=[2], contents=contents(bytes_contents=[good, good]))], outputs=("confidence",))
    assert [o.name for o in reply.outputs] == ["confidence"] and list(reply.outputs[0].shape) == [2]


def test_kserve_counts_items_before_reading_them_and_splits_off_the_event_loop(artifacts, small_limit_server, monkeypatch) -> None:
    from serving import servicer

    srv, channel = small_limit_server
    recorded: list[str] = []
    if srv.split_log is None:  # the server runs here
        real_split = servicer._split_raw_bytes
        monkeypatch.setattr(servicer, "_split_raw_bytes", lambda raw, n: (recorded.append(threading.current_thread().name), real_split(raw, n))[1])
    else:  # in its worker processes, which write to srv.split_log
        srv.split_log.unlink(missing_ok=True)

    def threads() -> list[str]:
        return recorded if srv.split_log is None or not srv.split_log.exists() else srv.split_log.read_text().split()

    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    empties = _raw(b"") * 50_000  # 200 KB of zero-length items
    tensor = kpb.ModelInferRequest.InferInputTensor
    with pytest.raises(grpc.RpcError) as err:  # more than could ever be queued: refused from the shape alone
        _infer(stub, [tensor(name="image", datatype="BYTES", shape=[50_000])], [empties])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "50000 images in one call" in err.value.details()
    assert threads() == []
    with pytest.raises(grpc.RpcError) as err:  # the split stops after the elements the shape names
        _infer(stub, [tensor(name="image", datatype="BYTES", shape=[2])], [empties])
    assert "more than the 2 element(s)" in err.value.details()
    good = artifacts["images"][0].read_bytes()
    reply = _infer(stub, [tensor(name="image", datatype="BYTES", shape=[1])], [_raw(good)])
    assert list(reply.outputs[0].shape) == [1]
    assert len(threads()) == 2 and "grpc-aio" not in threads()  # never on the server's event loop


def test_large_requests_are_parsed_off_the_event_loop_and_counted_first() -> None:
    """A request over INLINE_PARSE_MAX_BYTES is parsed in a worker thread, small ones at once; one
    of more than MAX_REQUEST_FIELDS fields (a 4 MB message of two million empty items takes
    protobuf a GIL-holding parse long enough to stall every other call) is refused unparsed."""
    from serving.request_decoding import INLINE_PARSE_MAX_BYTES, MAX_REQUEST_FIELDS, UnreadableRequest, guard_handlers

    parsed_in: list[str] = []

    def parse(data: bytes):
        parsed_in.append(threading.current_thread().name)
        return pb.RecognizeBatchRequest.FromString(data)

    async def behavior(request, context):
        return len(request.images)

    handler = grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=parse)
    guarded = guard_handlers("captcha.v1.Recognizer", {"RecognizeBatch": handler})["RecognizeBatch"]
    small = pb.RecognizeBatchRequest(images=[b""] * 10).SerializeToString()
    large = pb.RecognizeBatchRequest(images=[b"x" * 100] * 1000).SerializeToString()
    crowded = pb.RecognizeBatchRequest(images=[b""] * 2_000_000).SerializeToString()
    refused: list[tuple] = []

    class Context:
        async def abort(self, code, details):
            refused.append((code, details))
            raise grpc.RpcError(details)

    async def call(data: bytes) -> int:
        return await guarded.unary_unary(guarded.request_deserializer(data), Context())

    assert len(large) > INLINE_PARSE_MAX_BYTES
    assert asyncio.run(call(small)) == 10 and asyncio.run(call(large)) == 1000
    main = threading.current_thread().name
    assert parsed_in[0] == main and parsed_in[1] != main
    with pytest.raises(grpc.RpcError):
        asyncio.run(call(crowded))
    assert len(parsed_in) == 2  # never parsed
    assert refused == [(grpc.StatusCode.INVALID_ARGUMENT, f"captcha.v1.Recognizer/RecognizeBatch: more than {MAX_REQUEST_FIELDS:,} "
                                                          "fields (repeated items included) in one RecognizeBatchRequest; send fewer per call")]
    assert not isinstance(guarded.request_deserializer(small), UnreadableRequest)


def test_messages_of_too_many_fields_are_refused_unparsed(artifacts, small_limit_server) -> None:
    # 200 KB of one field repeated 66,000 times (or of unknown fields): protobuf would parse each
    srv, channel = small_limit_server
    client = RecognizerClient(channel, timeout=30)
    repeated_image = b"\x0a\x01x" * 66_000  # RecognizeRequest.image, again and again (the last one wins)
    unknown = b"\x98\x06\x00" * 66_000  # field 99, which RecognizeRequest lacks
    raw = channel.unary_unary("/captcha.v1.Recognizer/Recognize", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    for data in (repeated_image, unknown):
        with pytest.raises(grpc.RpcError) as err:
            raw(data, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than 67 fields (repeated items included) in one RecognizeRequest" in err.value.details()
    raw_stream = channel.stream_stream("/captcha.v1.Recognizer/RecognizeStream", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        list(raw_stream(iter([unknown]), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than 67 fields" in err.value.details()
    assert client.recognize(artifacts["images"][0].read_bytes()).text


def test_echoed_names_are_cut_short_so_the_status_survives(artifacts, small_limit_server) -> None:
    # a 20,000-character model name used to be echoed whole in the status details, over gRPC's
    # header limit: the client got RESOURCE_EXHAUSTED "Stream removed" instead of NOT_FOUND
    _srv, channel = small_limit_server
    client = RecognizerClient(channel, timeout=30)
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    long = "m" * 20_000
    good = artifacts["images"][0].read_bytes()
    tensor = kpb.ModelInferRequest.InferInputTensor
    calls = [
        (lambda: client.stub.Recognize(pb.RecognizeRequest(image=good, model=long), timeout=30), grpc.StatusCode.NOT_FOUND),
        (lambda: client.stub.RecognizeBatch(pb.RecognizeBatchRequest(images=[good], model=long), timeout=30), grpc.StatusCode.NOT_FOUND),
        (lambda: client.stub.GetModelInfo(pb.GetModelInfoRequest(model=long), timeout=30), grpc.StatusCode.NOT_FOUND),
        (lambda: client.stub.Classify(pb.ClassifyRequest(image=good, model=long), timeout=30), grpc.StatusCode.NOT_FOUND),
        (lambda: _infer(stub, [tensor(name="image", datatype="BYTES", shape=[1])], [_raw(good)], model_version=long), grpc.StatusCode.NOT_FOUND),
        (lambda: _infer(stub, [tensor(name=long, datatype="BYTES", shape=[1])], [_raw(good)]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: _infer(stub, [tensor(name="image", datatype=long, shape=[1])], [_raw(good)]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: _infer(stub, [tensor(name="image", datatype="BYTES", shape=[1])], [_raw(good)], outputs=(long,)), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code and "... (20,000 characters)" in err.value.details(), err.value.details()[:200]
        assert len(err.value.details()) < 400
    item = list(client.stub.RecognizeStream(iter([pb.RecognizeRequest(image=b"junk", id=long)]), timeout=30))[0]
    assert item.id == long and item.error.message.startswith("stream item 'mmm") and len(item.error.message) < 400
    assert client.recognize(good).text


_DYING_CLIENT = """
import sys, threading, time
from serving.client import RecognizerClient, open_channel
address, image, count = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3])
client, answered = RecognizerClient(open_channel(address)), threading.Semaphore(0)

def stream():
    def requests():
        yield image
        time.sleep(600)  # the stream stays open until this process is killed
    for _ in client.recognize_stream(requests()):
        answered.release()

for _ in range(count):
    threading.Thread(target=stream, daemon=True).start()
for _ in range(count):
    answered.acquire()
time.sleep(0.5)  # idle open streams, the case the old server counted OK most often
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-processes"])
def test_streams_whose_client_dies_are_counted_cancelled(artifacts, processes) -> None:
    """A client killed with streams open: every stream is CANCELLED in captcha_requests_total
    (old: most were counted OK, the end of their requests taken for a normal one); with several
    processes, in the sum the supervisor reads from the workers' prometheus-client files."""
    count = 30
    srv = create_server(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, processes=processes, grace_s=1)).start()
    child = subprocess.Popen([sys.executable, "-c", _DYING_CLIENT, f"127.0.0.1:{srv.port}", str(artifacts["images"][0]), str(count)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.kill()
        child.wait(WAIT_S)

        def ended() -> float:
            return sum(srv.metrics.value("captcha_requests_total", method="RecognizeStream", code=c.name) for c in grpc.StatusCode)

        _until(lambda: ended() == count, "every stream to end")
        assert srv.metrics.value("captcha_requests_total", method="RecognizeStream", code="CANCELLED") == count
    finally:
        child.kill()
        srv.stop(0).wait(10)


def test_the_health_probe_says_what_failed(artifacts, tls_server, small_limit_server, capsys) -> None:
    import socket

    from serving.health_probe import probe

    tls_srv, cert = tls_server
    plain_srv, _channel = small_limit_server
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{unused.getsockname()[1]}"
    ok, outcome = probe(closed, timeout=10)
    assert not ok and outcome.startswith(f"cannot connect to {closed}: ") and "Connection refused" in outcome
    ok, outcome = probe(f"127.0.0.1:{plain_srv.port}", tls_ca=str(cert), timeout=10)  # TLS to a plaintext server
    assert not ok and outcome.startswith(f"TLS handshake with 127.0.0.1:{plain_srv.port} failed: ")
    ok, outcome = probe(f"127.0.0.1:{tls_srv.port}", tls=True, timeout=10)  # a certificate the system does not trust
    assert not ok and outcome.startswith("TLS handshake with") and "CERTIFICATE_VERIFY_FAILED" in outcome
    assert probe(f"127.0.0.1:{plain_srv.port}", timeout=10) == (True, "SERVING")
    assert health_probe_main(["--address", closed, "--timeout", "10"]) == 1
    assert capsys.readouterr().out.startswith(f"cannot connect to {closed}")


def test_predict_and_client_refuse_pipes_and_devices_unread(artifacts, small_limit_server, tmp_path, capsys) -> None:
    from captcha.cli import main
    from captcha.imageio import ImageDecodeError

    srv, _channel = small_limit_server
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = str(artifacts["images"][0])

    def feed() -> None:  # only for code that would wait on the pipe: it then reads this and goes on
        with open(fifo, "wb") as pipe:
            pipe.write(b"not an image")

    feeder = threading.Timer(5.0, feed)
    feeder.start()
    try:
        with pytest.raises(ImageDecodeError, match="a named pipe, not an image file"):
            Predictor.from_run(artifacts["run"], "cpu").predict_paths([fifo])
        assert main(["predict", str(artifacts["run"]), str(fifo), "/dev/null", good, "--device", "cpu"]) == 1
        out, err = capsys.readouterr()
        assert "pipe.png: a named pipe, not an image file" in err and "/dev/null: a device, not an image file" in err and good in out
        assert main(["client", str(fifo), "/dev/null", good, "--address", f"127.0.0.1:{srv.port}"]) == 1
        out, err = capsys.readouterr()
        assert "pipe.png: a named pipe, not an image file" in err and "/dev/null: a device, not an image file" in err and good in out
    finally:
        feeder.cancel()
