"""Property-based fuzzing of the gRPC server with Hypothesis: image bytes, protobuf fields and
bytes, KServe tensors.

One server per module and process count (an untrained ONNX model built without torch, loopback
port 0): in this process (`--processes 1`), and as two worker processes under a supervisor
(`--processes 2`), whose every check must hold in each worker. Every fuzzed call must end with OK
or a status code that docs/serving-errors.md lists for its method (the table there is read here),
a normal call must succeed right after it, no worker process may have died (the supervisor would
replace it quietly), and each server process's resident memory must stay within
`RSS_GROWTH_BOUND` (the decode budget is per process) of what it was when the server started.
Fixed example budgets keep the module to about a minute on two cores; no example database is
written.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captcha.constants import DEFAULT_ALPHABET, DEFAULT_LENGTH, INPUT_SIZE, NORM_MEAN, NORM_STD
from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving._proto.captcha.v1 import recognizer_pb2_grpc as pb_grpc
from serving._proto.inference import grpc_service_pb2 as kpb
from serving._proto.inference import grpc_service_pb2_grpc as kpb_grpc
from serving.client import open_channel
from serving.server import CaptchaServer, ServeConfig
from serving.supervisor import Supervisor, create_server

ROOT = Path(__file__).resolve().parent.parent
import fuzz_strategies as fuzz  # noqa: E402 - tests/ is on the path, as for serving_hooks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on corrupt metadata, by design here
RSS_GROWTH_BOUND = 256 * 2**20  # the decode budget: what a server process may add to its memory while fuzzed
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def documented_codes() -> dict[str, set[str]]:
    """docs/serving-errors.md's table: method -> the status codes it may end with (OK added)."""
    codes: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "serving-errors.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.search(r"`([^`]+)`", cells[0]) if len(cells) == 2 else None
        if name:
            codes[name.group(1)] = {"OK", *re.findall(r"[A-Z_]{2,}", cells[1])}
    codes["items"] = codes.pop("RecognizeResponse.error.code", set())  # the row of batch and stream items
    return codes


DOCUMENTED = documented_codes()
ITEM_CODES = {grpc.StatusCode[name].value[0] for name in DOCUMENTED["items"] if name != "OK"}


def tiny_onnx_model(path: Path) -> Path:
    """An untrained recognizer as an ONNX graph (mean colour -> one linear layer -> logits
    [B, length, alphabet]) with captchakit's metadata, built in a moment without torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from captcha.export import INPUT_NAME, OUTPUT_NAME, metadata_from_meta

    classes, length = len(DEFAULT_ALPHABET), DEFAULT_LENGTH
    weight = np.random.default_rng(0).normal(size=(3, length * classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weight"], ["scores"]), helper.make_node("Reshape", ["scores", "shape"], [OUTPUT_NAME])],
        "tiny", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, *INPUT_SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", length, classes])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(np.array([-1, length, classes], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # as ONNX Runtime reads it
    meta = {"task": "recognition", "head": "fixed", "length": length, "input_size": list(INPUT_SIZE), "channels": 3,
            "preprocess": "original", "normalization": {"mean": NORM_MEAN, "std": NORM_STD}, "alphabet": DEFAULT_ALPHABET,
            "model": {"name": "tiny", "args": {}}}
    for key, value in metadata_from_meta(meta).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def resident_bytes(pid: int | str = "self") -> int | None:
    """A process's resident memory now (Linux), or None where /proc is not there."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


class Served:
    """The fuzzed server, its stubs, and the checks run after every call."""

    def __init__(self, server: CaptchaServer | Supervisor, channel: grpc.Channel):
        self.server, self.channel = server, channel
        self.recognizer = pb_grpc.RecognizerStub(channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
        self.good = cv2.imencode(".png", np.full((*INPUT_SIZE, 3), 200, np.uint8))[1].tobytes()
        self.version = self.kserve.ModelMetadata(kpb.ModelMetadataRequest(name="captcha"), timeout=30).versions[0]
        self.workers = server.worker_pids() if isinstance(server, Supervisor) else None
        self.baseline = self.resident()

    def resident(self) -> dict[str, int | None]:
        """The resident memory of each server process: this one, or each worker."""
        if self.workers is None:
            return {"this process": resident_bytes()}
        return {f"worker {slot} (pid {pid})": resident_bytes(pid) for slot, pid in self.workers.items()}

    def outcome(self, method: str, call) -> tuple[str, object]:
        """Run `call`; its status code must be documented for `method`. Returns (code, reply)."""
        try:
            reply, code = call(), "OK"
        except grpc.RpcError as exc:
            reply, code = None, exc.code().name
        assert code in DOCUMENTED[method], f"{method} ended with {code}, which docs/serving-errors.md does not list for it"
        return code, reply

    def still_serving(self) -> None:
        reply = self.recognizer.Recognize(pb.RecognizeRequest(image=self.good), timeout=30)
        assert len(reply.text) == DEFAULT_LENGTH and not reply.HasField("error")
        if self.workers is not None:
            assert self.server.worker_pids() == self.workers, "a server process died and was replaced"
        for name, now in self.resident().items():
            before = self.baseline[name]
            if now is not None and before is not None:
                assert now - before < RSS_GROWTH_BOUND, f"{name} grew by {(now - before) / 2**20:.0f} MiB"


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def served(tmp_path_factory, request):
    model = tiny_onnx_model(tmp_path_factory.mktemp("fuzz") / "captcha.onnx")
    server = create_server(ServeConfig(models=[str(model)], host="127.0.0.1", port=0, processes=request.param, max_message_mb=1,
                                       max_queue=16, workers=2, grace_s=0)).start()
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        yield Served(server, channel)
    server.stop(0).wait(10)


# Model names and ids: the served one, the default, text, and names long enough that echoing them
# whole overflowed gRPC's header limit.
names = st.sampled_from(["", "captcha"]) | st.text(max_size=40) | st.integers(200, 30_000).map(lambda n: "m" * n)
# Image bytes, one in twenty a real 16-bit image near the decoded-bytes limit (made once).
_large = {name: case.make() for name, case in fuzz.load_hostile().LARGE.items()}
images = st.integers(0, 19).flatmap(lambda i: st.sampled_from(sorted(_large.values())) if i == 0 else fuzz.image_bytes())


def known_model(name: str) -> bool:
    return name in ("", "captcha")


def _items_ok(results) -> None:
    for item in results:
        assert not item.HasField("error") or item.error.code in ITEM_CODES, item.error


@FUZZ
@given(image=images, model=names, request_id=names)
def test_recognize(served, image, model, request_id) -> None:
    code, reply = served.outcome("Recognize", lambda: served.recognizer.Recognize(
        pb.RecognizeRequest(image=image, model=model, id=request_id), timeout=30))
    if not known_model(model):
        assert code == "NOT_FOUND"
    if code == "OK":
        assert len(reply.text) == DEFAULT_LENGTH and reply.id == request_id
    served.still_serving()


@FUZZ
@given(batch=st.lists(images, max_size=6), model=names)
def test_recognize_batch(served, batch, model) -> None:
    code, reply = served.outcome("RecognizeBatch", lambda: served.recognizer.RecognizeBatch(
        pb.RecognizeBatchRequest(images=batch, model=model), timeout=30))
    if not known_model(model):
        assert code == "NOT_FOUND"
    if code == "OK":
        assert len(reply.results) == len(batch)
        _items_ok(reply.results)
    served.still_serving()


@FUZZ
@given(requests=st.lists(st.builds(pb.RecognizeRequest, image=images, model=names, id=names), max_size=5))
def test_recognize_stream(served, requests) -> None:
    code, replies = served.outcome("RecognizeStream", lambda: list(served.recognizer.RecognizeStream(iter(requests), timeout=30)))
    if code == "OK":
        assert [r.id for r in replies] == [r.id for r in requests]
        _items_ok(replies)
    served.still_serving()


@FUZZ
@given(image=images, model=names, top_k=st.integers(-(2**31), 2**31 - 1))
def test_classify(served, image, model, top_k) -> None:
    code, _ = served.outcome("Classify", lambda: served.recognizer.Classify(pb.ClassifyRequest(image=image, model=model, top_k=top_k), timeout=30))
    assert code == ("FAILED_PRECONDITION" if known_model(model) else "NOT_FOUND")  # the served model recognizes, not classifies
    served.still_serving()


# Unary methods by their full path, with a valid request of each to mutate.
UNARY = {
    "/captcha.v1.Recognizer/Recognize": pb.RecognizeRequest(image=b"\x89PNG\r\n\x1a\n", model="captcha", id="1"),
    "/captcha.v1.Recognizer/RecognizeBatch": pb.RecognizeBatchRequest(images=[b"a", b"b"], model="captcha"),
    "/captcha.v1.Recognizer/Classify": pb.ClassifyRequest(image=b"x", model="captcha", top_k=3),
    "/captcha.v1.Recognizer/GetModelInfo": pb.GetModelInfoRequest(model="captcha"),
    "/captcha.v1.Recognizer/ListModels": pb.ListModelsRequest(),
    "/inference.GRPCInferenceService/ModelInfer": kpb.ModelInferRequest(
        model_name="captcha", inputs=[kpb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", 1) + b"x"]),
    "/inference.GRPCInferenceService/ModelMetadata": kpb.ModelMetadataRequest(name="captcha"),
    "/inference.GRPCInferenceService/ModelReady": kpb.ModelReadyRequest(name="captcha"),
    "/inference.GRPCInferenceService/ServerMetadata": kpb.ServerMetadataRequest(),
    "/grpc.health.v1.Health/Check": b"",
}


@st.composite
def message_bytes(draw) -> tuple[str, bytes]:
    """(method path, request bytes): junk, or a valid request with bytes flipped, cut or added."""
    path = draw(st.sampled_from(sorted(UNARY)))
    valid = UNARY[path] if isinstance(UNARY[path], bytes) else UNARY[path].SerializeToString()
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
    return path, bytes(draw(st.binary(max_size=64)) if draw(st.booleans()) else data)


@FUZZ
@given(message=message_bytes())
def test_raw_protobuf_bytes(served, message) -> None:
    path, data = message
    call = served.channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    served.outcome(path.rsplit("/", 1)[1], lambda: call(data, timeout=30))
    served.still_serving()


_FAULTS = ["name", "datatype", "shape", "both", "extra raw", "other contents", "no data", "lying lengths", "junk raw",
           "outputs", "inputs", "model", "version"]
_RAW_FAULTS = {"extra raw", "lying lengths", "junk raw"}


@st.composite
def infer_requests(draw) -> tuple[kpb.ModelInferRequest, set[str]]:
    """(request, its faults): a well-formed ModelInfer request of a few readable images (in raw or
    in contents) given up to two faults of the kinds clients make, each one sure to make it wrong."""
    items = draw(st.lists(fuzz.encoded_images().map(lambda e: e[2]), min_size=1, max_size=4))
    n = len(items)
    faults = set(draw(st.lists(st.sampled_from(_FAULTS), max_size=2)))
    text = st.text(max_size=40) | st.integers(200, 30_000).map(lambda k: "m" * k)
    tensor = kpb.ModelInferRequest.InferInputTensor(name=draw(st.sampled_from(["image", ""])), datatype="BYTES",
                                                    shape=draw(st.sampled_from([[n], [n, 1]])))
    if "name" in faults:
        tensor.name = draw(text.filter(lambda t: t not in ("", "image")))
    if "datatype" in faults:
        tensor.datatype = draw((st.sampled_from(["FP32", "INT8", "bytes", ""]) | text).filter(lambda t: t != "BYTES"))
    if "shape" in faults:
        bad = [[], [-1], [-1, -1], [n, 2], [n + 1], [0], [2**40], [n, 1, 1], [1, n + 1], [-n]]
        tensor.shape[:] = draw(st.sampled_from(bad) | st.lists(st.integers(-3, 6), max_size=4).filter(lambda d: d not in ([n], [n, 1])))
    raw = b"".join(struct.pack("<I", len(x)) + x for x in items)
    if "lying lengths" in faults:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]  # cut short: a length claims more than is left, or elements are missing
    if "junk raw" in faults:
        raw = struct.pack("<I", 2**31) + draw(st.binary(max_size=64))
    in_raw = draw(st.booleans()) or bool(faults & _RAW_FAULTS) or "both" in faults
    if not in_raw or "both" in faults:
        tensor.contents.bytes_contents.extend(items)
    if "other contents" in faults:
        tensor.contents.int_contents.extend([1, 2])
    raws = [raw] * (2 if "extra raw" in faults else 1) if in_raw else []
    if "no data" in faults:
        tensor.ClearField("contents")
        raws = []
    outputs = draw(st.lists(st.sampled_from(["text", "confidence"]), max_size=2, unique=True))
    if "outputs" in faults:  # one the model lacks, or one asked for twice
        outputs.append(draw(st.sampled_from(["text", "confidence"]) | text.filter(lambda t: t not in ("text", "confidence"))))
        if len(set(outputs)) == len(outputs) and set(outputs) <= {"text", "confidence"}:
            outputs.append(outputs[0])
    request = kpb.ModelInferRequest(
        model_name=draw(text.filter(lambda t: t not in ("", "captcha"))) if "model" in faults else draw(st.sampled_from(["", "captcha"])),
        model_version=draw(text.filter(bool)) if "version" in faults else "",
        inputs=[tensor] * (draw(st.sampled_from([0, 2])) if "inputs" in faults else 1), raw_input_contents=raws,
        outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
    )
    return request, faults


@settings(FUZZ, max_examples=80)
@given(case=infer_requests())
def test_kserve_model_infer(served, case) -> None:
    request, faults = case
    code, reply = served.outcome("ModelInfer", lambda: served.kserve.ModelInfer(request, timeout=30))
    assert (code == "OK") == (not faults), f"{sorted(faults)} answered {code}"
    if "model" in faults or "version" in faults:
        assert code == "NOT_FOUND"
    if code == "OK":  # then the request was well formed: one input of [N] or [N, 1] BYTES, outputs asked once
        assert len(request.inputs) == 1 and request.inputs[0].datatype == "BYTES" and len(request.raw_input_contents) <= 1
        shape = list(request.inputs[0].shape)
        assert shape[1:] in ([], [1]) and shape[0] > 0
        asked = [o.name for o in request.outputs] or ["text", "confidence"]
        assert [o.name for o in reply.outputs] == asked and len(set(asked)) == len(asked)
        assert all(list(o.shape) == shape[:1] for o in reply.outputs) and len(reply.raw_output_contents) == len(asked)
    served.still_serving()


@FUZZ
@given(name=names, version=st.sampled_from(["", "1"]) | st.text(max_size=300))
def test_model_lookups(served, name, version) -> None:
    found = known_model(name) and version in ("", served.version)
    code, _ = served.outcome("GetModelInfo", lambda: served.recognizer.GetModelInfo(pb.GetModelInfoRequest(model=name), timeout=30))
    assert code == ("OK" if known_model(name) else "NOT_FOUND")
    code, _ = served.outcome("ModelMetadata", lambda: served.kserve.ModelMetadata(kpb.ModelMetadataRequest(name=name, version=version), timeout=30))
    assert code == ("OK" if found else "NOT_FOUND")
    code, reply = served.outcome("ModelReady", lambda: served.kserve.ModelReady(kpb.ModelReadyRequest(name=name, version=version), timeout=30))
    assert code == "OK" and reply.ready == found
    served.still_serving()


def test_the_documented_table_covers_every_method() -> None:
    from serving._proto.captcha.v1 import recognizer_pb2
    from serving._proto.inference import grpc_service_pb2

    methods = {m.name for m in recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].methods}
    methods |= {m.name for m in grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert methods | {"Check", "items"} <= set(DOCUMENTED), sorted(methods - set(DOCUMENTED))
    assert all("INTERNAL" not in codes and "UNKNOWN" not in codes for name, codes in DOCUMENTED.items() if name != "items")
    assert json.dumps(sorted(DOCUMENTED["items"]))  # the item row was found
