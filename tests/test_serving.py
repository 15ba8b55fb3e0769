"""The gRPC server, for real, on a loopback port: APIs, agreement with `captcha predict`, bad
input, auth, graceful shutdown, KServe v2 and metrics (the generated stubs: tests/test_packaging.py).
Every test that starts a server runs against one process and against two processes sharing the port."""

from __future__ import annotations

import struct
import urllib.request
import zlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from captcha.export import export_onnx
from captcha.inference import Predictor
from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving._proto.inference import grpc_service_pb2 as kpb
from serving._proto.inference import grpc_service_pb2_grpc as kpb_grpc
from serving.client import RecognizerClient, open_channel, response_dict
from serving.server import ServeConfig
from serving.supervisor import create_server

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from captcha.generate import GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    tmp = tmp_path_factory.mktemp("serving")
    generate_dataset(tmp / "data", GeneratorConfig(splits={"train": 200, "val": 50, "test": 50}))
    fit(TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), epochs=2, cache_dir=str(tmp / "cache")), log=lambda s: None)
    onnx_path = export_onnx(tmp / "run", tmp / "captcha.onnx", verify_images=8, log=lambda s: None).path
    images = sorted((tmp / "data" / "test").glob("*.png"))[:24]
    return {"run": tmp / "run", "onnx": onnx_path, "images": images}


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def processes(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def server(artifacts, processes):
    config = ServeConfig(
        models=[str(artifacts["onnx"]), f"second={artifacts['onnx']}"], host="127.0.0.1", port=0, processes=processes,
        max_batch=8, max_delay_ms=2, token=TOKEN, metrics_port=0, max_message_mb=1, grace_s=2,
    )
    srv = create_server(config).start()
    yield srv
    srv.stop(0).wait(10)


@pytest.fixture(scope="module")
def channel(server):
    with open_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def client(channel):
    return RecognizerClient(channel, TOKEN)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_health_is_serving(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "captcha.v1.Recognizer", "inference.GRPCInferenceService"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_unary_batch_stream_agree_with_predict(artifacts, client) -> None:
    paths = artifacts["images"]
    expected = [{"path": str(p), **pred.as_dict()} for p, pred in zip(paths, Predictor.from_run(artifacts["run"], "cpu").predict_paths(paths))]
    payloads = [p.read_bytes() for p in paths]
    unary = [response_dict(str(p), client.recognize(b)) for p, b in zip(paths, payloads)]
    batch = [response_dict(str(p), r) for p, r in zip(paths, client.recognize_batch(payloads))]
    stream = [response_dict(str(p), r) for p, r in zip(paths, client.recognize_stream(payloads, timeout=30))]
    for got in (unary, batch, stream):
        assert [g["text"] for g in got] == [e["text"] for e in expected]
        for g, e in zip(got, expected):
            assert g["confidence"] == pytest.approx(e["confidence"], rel=1e-3, abs=1e-6)
            assert g["char_confidences"] == pytest.approx(e["char_confidences"], abs=1e-4)
            assert list(g) == list(e)  # same JSON fields as `captcha predict --json`


def test_named_models_and_info(artifacts, client) -> None:
    image = artifacts["images"][0].read_bytes()
    assert client.recognize(image, "second").model == "second"
    assert client.recognize(image).model == "captcha"  # first model is the default
    info = client.model_info()
    assert info.task == "recognition" and info.is_default and info.provider == "CPUExecutionProvider" and info.quantization == ""
    assert list(info.input_size) == list(Predictor.from_run(artifacts["run"], "cpu").meta["input_size"])


def _png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "case, code",
    [
        ("empty", grpc.StatusCode.INVALID_ARGUMENT),
        ("garbage", grpc.StatusCode.INVALID_ARGUMENT),
        ("truncated", grpc.StatusCode.INVALID_ARGUMENT),
        ("bomb", grpc.StatusCode.INVALID_ARGUMENT),
        ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("unknown_model", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_bad_input_then_good_request(artifacts, client, case: str, code: grpc.StatusCode) -> None:
    good = artifacts["images"][0].read_bytes()
    bad, model = {
        "empty": (b"", ""),
        "garbage": (b"this is not an image" * 10, ""),
        "truncated": (good[: len(good) // 2], ""),
        "bomb": (_png_bomb(), ""),
        "oversized": (b"\x00" * (2 * 1024 * 1024), ""),  # the server's limit is 1 MiB
        "unknown_model": (good, "nope"),
    }[case]
    assert _code(lambda: client.recognize(bad, model)) == code
    assert client.recognize(good).text  # the server keeps serving


def test_batch_reports_bad_items_and_goes_on(artifacts, client) -> None:
    good = artifacts["images"][0].read_bytes()
    results = client.recognize_batch([good, b"", good])
    assert results[0].text and results[2].text
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "empty" in results[1].error.message


def test_token_is_required(artifacts, server, channel) -> None:
    image = artifacts["images"][0].read_bytes()
    denied_before = server.metrics.value("captcha_requests_total", method="Recognize", code="UNAUTHENTICATED")
    for token in (None, "wrong"):
        assert _code(lambda: RecognizerClient(channel, token).recognize(image)) == grpc.StatusCode.UNAUTHENTICATED
    # refused before any handler ran, and still counted
    assert server.metrics.value("captcha_requests_total", method="Recognize", code="UNAUTHENTICATED") == denied_before + 2


def test_kserve_model_infer(artifacts, channel) -> None:
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    md = (("authorization", f"Bearer {TOKEN}"),)
    assert stub.ServerReady(kpb.ServerReadyRequest(), metadata=md).ready
    assert stub.ModelReady(kpb.ModelReadyRequest(name="captcha"), metadata=md).ready
    meta = stub.ModelMetadata(kpb.ModelMetadataRequest(name="captcha"), metadata=md)
    assert meta.inputs[0].datatype == "BYTES"
    paths = artifacts["images"][:3]
    raw = b"".join(struct.pack("<I", len(b)) + b for b in (p.read_bytes() for p in paths))  # tritonclient's BYTES layout
    request = kpb.ModelInferRequest(model_name="captcha", inputs=[kpb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[len(paths)])], raw_input_contents=[raw])
    reply = stub.ModelInfer(request, metadata=md)
    text_raw = reply.raw_output_contents[[o.name for o in reply.outputs].index("text")]
    texts, offset = [], 0
    while offset < len(text_raw):
        (n,) = struct.unpack_from("<I", text_raw, offset)
        texts.append(text_raw[offset + 4 : offset + 4 + n].decode())
        offset += 4 + n
    assert texts == [p.text for p in Predictor.from_run(artifacts["run"], "cpu").predict_paths(paths)]


def test_kserve_versions_the_default_model_and_counted_calls(server, channel) -> None:
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    md = (("authorization", f"Bearer {TOKEN}"),)
    version = stub.ModelMetadata(kpb.ModelMetadataRequest(name="captcha"), metadata=md).versions[0]
    ready = lambda **kw: stub.ModelReady(kpb.ModelReadyRequest(**kw), metadata=md).ready  # noqa: E731
    assert ready(name="captcha", version=version) and ready(name="") and not ready(name="captcha", version="999") and not ready(name="nope")
    assert _code(lambda: stub.ModelMetadata(kpb.ModelMetadataRequest(name="captcha", version="999"), metadata=md)) == grpc.StatusCode.NOT_FOUND
    request = kpb.ModelInferRequest(model_name="captcha", model_version="999",
                                    inputs=[kpb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1], contents=kpb.InferTensorContents(bytes_contents=[b"x"]))])
    assert _code(lambda: stub.ModelInfer(request, metadata=md)) == grpc.StatusCode.NOT_FOUND
    before = server.metrics.value("captcha_requests_total", method="ServerLive", code="OK")
    assert stub.ServerLive(kpb.ServerLiveRequest(), metadata=md).live
    assert server.metrics.value("captcha_requests_total", method="ServerLive", code="OK") == before + 1


def test_metrics_endpoint(server, client, artifacts) -> None:
    client.recognize(artifacts["images"][0].read_bytes())
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'captcha_requests_total{code="OK",method="Recognize"}' in text
    for family in ("captcha_request_latency_seconds_bucket", "captcha_batch_size_bucket", "captcha_queue_depth", 'code="INVALID_ARGUMENT"'):
        assert family in text


def test_graceful_shutdown_finishes_call_in_flight(artifacts, processes) -> None:
    srv = create_server(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, processes=processes, grace_s=10)).start()
    image = artifacts["images"][0].read_bytes()
    with open_channel(f"127.0.0.1:{srv.port}") as ch:
        client = RecognizerClient(ch)
        requests: list = [pb.RecognizeRequest(image=image, id="0")]
        gate = __import__("queue").Queue()

        def feed():
            yield requests[0]
            second = gate.get(timeout=30)  # sent only after the stop has begun
            if second is not None:
                yield second

        responses = client.stub.RecognizeStream(feed(), timeout=30)
        assert next(responses).text  # the call is established and in flight
        stopped = srv.stop(grace=10)
        gate.put(pb.RecognizeRequest(image=image, id="1"))
        last = next(responses)
        assert last.id == "1" and last.text  # finished during the drain
        assert list(responses) == []
        assert stopped.wait(15)
        assert _code(lambda: client.recognize(image)) == grpc.StatusCode.UNAVAILABLE


def test_calls_sent_just_before_a_stop_are_answered_not_cancelled(artifacts, processes) -> None:
    # Many calls at once, then stop at once: some still wait in gRPC's transport, not yet handed to a
    # handler, and a bare `server.stop(grace)` cancelled those (about 175 of 200 here before the drain).
    srv = create_server(ServeConfig(models=[str(artifacts["onnx"])], host="127.0.0.1", port=0, processes=processes, grace_s=10)).start()
    images = [p.read_bytes() for p in artifacts["images"]]
    with open_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = RecognizerClient(ch).stub
        calls = [stub.Recognize.future(pb.RecognizeRequest(image=images[i % len(images)]), timeout=60) for i in range(200)]
        stopped = srv.stop()
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
        assert stopped.wait(30)
    assert codes.count(grpc.StatusCode.OK) == len(calls), {c.name: codes.count(c) for c in set(codes)}
