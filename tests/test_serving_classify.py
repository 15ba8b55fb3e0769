"""Classifier export and serving agreement: a tiny classifier trained on generated shapes is
exported with `captcha export`, ONNX Runtime must match torch, and the server's Classify RPC must
give, image for image, the top-k labels and probabilities that `captcha classify evaluate`'s
torch path computes for the same files.

Two tiny runs (RGB `original` and 1-channel `gray` preprocessors), a few seconds each on CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from captcha.checkpoint import load_model
from captcha.classify.recipes import build_recipe
from captcha.classify.shapes import SHAPES, write_shapes
from captcha.classify.evaluate import evaluate_run, load_run_data, predict
from captcha.classify.train import train_classifier
from captcha.models.classifiers import META_MEAN, META_STD
from captcha.decoding import softmax
from captcha.export import INPUT_NAME, OUTPUT_NAME, register
from captcha.inference import Predictor
from serving._proto.captcha.v1 import recognizer_pb2 as pb
from serving.client import RecognizerClient, open_channel
from serving.server import CaptchaServer, ServeConfig


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    # train/val/test class folders, PNG and JPEG mixed: the test split has 10 images (2 per class)
    return write_shapes(tmp_path_factory.mktemp("cls_shapes"), per_class=8, size=36, splits=True, mixed_formats=True)


@pytest.fixture(scope="module", params=[3, 1], ids=["rgb", "gray"])
def exported(request, tmp_path_factory, shapes) -> dict:
    channels = request.param
    tmp = tmp_path_factory.mktemp(f"cls_run{channels}")
    recipe = build_recipe("default", model="cnn", epochs=[2], input_size=(32, 32), lr=[3e-3], batch_size=16, channels=channels)
    train_classifier(shapes, tmp / "run", recipe, device="cpu", log=lambda _line: None, cache_dir=False)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", str(tmp / "run"), "--out", str(tmp / "classifier.onnx"), "--verify-images", "10"])
    assert args.func(args) == 0
    return {"run": tmp / "run", "onnx": tmp / "classifier.onnx", "channels": channels}


@pytest.fixture(scope="module")
def torch_side(exported, shapes) -> dict:
    """What `captcha classify evaluate` computes: the run's test split, read the way it was trained."""
    model, meta = load_model(exported["run"], "cpu")
    data = load_run_data(meta, shapes, cache_dir=False)
    split = data.splits["test"]
    return {"meta": meta, "split": split, "logits": predict(model, split), "class_names": data.class_names}


@pytest.fixture(scope="module")
def client(exported):
    srv = CaptchaServer(ServeConfig(models=[f"shapes={exported['onnx']}"], host="127.0.0.1", port=0, max_batch=4, max_delay_ms=2, grace_s=1)).start()
    with open_channel(f"127.0.0.1:{srv.port}") as channel:
        client = RecognizerClient(channel)
        client.server = srv  # the tests read its metrics
        yield client
    srv.stop(0).wait(10)


def test_export_carries_classifier_facts(exported, capsys) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert props["task"] == "classification" and props["length"] == "1"
    assert props["preprocess"] == ("original" if exported["channels"] == 3 else "gray")
    assert props["channels"] == str(exported["channels"])
    assert "class_names" in props and "alphabet" not in props


def test_onnx_matches_torch_on_the_test_split(exported, torch_side) -> None:
    split = torch_side["split"]
    assert len(split) == 2 * len(SHAPES)
    x = (split.images.numpy().astype(np.float32) / 255.0 - META_MEAN) / META_STD
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
    assert got.shape == (len(split), 1, len(SHAPES))
    np.testing.assert_allclose(got[:, 0, :], torch_side["logits"], atol=1e-4, rtol=1e-4)
    assert np.array_equal(got[:, 0, :].argmax(1), torch_side["logits"].argmax(1))


def test_classify_rpc_agrees_with_torch_image_for_image(client, torch_side) -> None:
    split, names = torch_side["split"], torch_side["class_names"]
    probs = softmax(torch_side["logits"].astype(np.float64))
    k = 3
    for path, p in zip(split.paths, probs):
        reply = client.stub.Classify(pb.ClassifyRequest(image=Path(path).read_bytes(), top_k=k), timeout=30)
        assert reply.model == "shapes" and len(reply.labels) == k
        assert reply.labels[0].name == names[int(p.argmax())], path  # top-1 identical, image for image
        got = [label.probability for label in reply.labels]
        assert got == sorted(got, reverse=True)
        assert got == pytest.approx(sorted(p, reverse=True)[:k], abs=1e-4)
        for label in reply.labels:  # each name carries its own class's probability
            assert label.probability == pytest.approx(p[names.index(label.name)], abs=1e-4)


def test_server_accuracy_equals_classify_evaluate(exported, shapes, client, torch_side) -> None:
    split, names = torch_side["split"], torch_side["class_names"]
    served = [client.stub.Classify(pb.ClassifyRequest(image=Path(p).read_bytes(), top_k=1), timeout=30).labels[0].name for p in split.paths]
    truth = [names[int(t)] for t in split.targets]
    metrics = evaluate_run(exported["run"], shapes, device="cpu", cache_dir=False)
    assert metrics["split"] == "test"
    assert np.mean([a == b for a, b in zip(served, truth)]) == pytest.approx(metrics["top1"])


def test_recognize_and_predict_name_the_same_class(exported, client, torch_side) -> None:
    paths = torch_side["split"].paths[:4]
    expected = [p.text for p in Predictor.from_run(exported["run"], "cpu").predict_paths(paths)]  # `captcha predict`
    assert [client.recognize(Path(p).read_bytes()).text for p in paths] == expected
    assert [client.stub.Classify(pb.ClassifyRequest(image=Path(p).read_bytes()), timeout=30).labels[0].name for p in paths] == expected


def test_classify_top_k_bounds_and_model_info(client, torch_side) -> None:
    image = Path(torch_side["split"].paths[0]).read_bytes()
    default = client.stub.Classify(pb.ClassifyRequest(image=image), timeout=30)
    assert len(default.labels) == len(SHAPES)  # top_k 0 means 5; this model has 5 classes
    everything = client.stub.Classify(pb.ClassifyRequest(image=image, top_k=50), timeout=30)
    assert sorted(label.name for label in everything.labels) == sorted(SHAPES)
    assert sum(label.probability for label in everything.labels) == pytest.approx(1.0, abs=1e-5)
    info = client.model_info()
    assert info.task == "classification" and list(info.class_names) == torch_side["class_names"] and info.length == 1
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Classify(pb.ClassifyRequest(image=b"not an image"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    images = client.server.metrics.value("captcha_images_total", model="shapes")
    with pytest.raises(grpc.RpcError) as err:  # refused before the model reads the image
        client.stub.Classify(pb.ClassifyRequest(image=image, top_k=-1), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in err.value.details()
    assert client.server.metrics.value("captcha_images_total", model="shapes") == images
    client.stub.Classify(pb.ClassifyRequest(image=image), timeout=30)  # each classified image counts
    assert client.server.metrics.value("captcha_images_total", model="shapes") == images + 1
