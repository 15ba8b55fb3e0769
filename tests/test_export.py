"""ONNX export: a valid file that carries its metadata and predicts like torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from captcha.export import INPUT_NAME, OUTPUT_NAME, export_onnx, register
from captcha.inference import Predictor


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from captcha.generate import GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    tmp = tmp_path_factory.mktemp("export")
    generate_dataset(tmp / "data", GeneratorConfig(splits={"train": 200, "val": 50, "test": 50}))
    fit(TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), epochs=2, cache_dir=str(tmp / "cache")), log=lambda s: None)
    return tmp / "run"


@pytest.fixture(scope="module")
def exported(run_dir: Path):
    return export_onnx(run_dir, run_dir / "model.onnx", verify_images=16, log=lambda s: None)


def test_export_is_valid_and_verified(exported) -> None:
    onnx.checker.check_model(onnx.load(str(exported.path)), full_check=True)
    assert exported.agree and exported.verified_images == 16
    assert exported.max_abs_diff < 1e-3


def test_metadata_holds_every_serving_fact(exported, run_dir: Path) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    meta = Predictor.from_run(run_dir, "cpu").meta
    assert props["task"] == "recognition"
    assert json.loads(props["alphabet"]) == meta["alphabet"]
    assert int(props["length"]) == meta["length"]
    assert json.loads(props["input_size"]) == list(meta["input_size"])
    assert int(props["channels"]) == meta["channels"]
    assert props["preprocess"] == meta["preprocess"]
    assert json.loads(props["normalization"]) == {"mean": meta["normalization"]["mean"], "std": meta["normalization"]["std"]}
    assert props["model_name"] == meta["model"]["name"] and props["head"] == meta.get("head", "fixed")
    assert int(props["tta"]) == meta["tta"] == 5  # the default's test-time views, inside the graph
    assert float(props["label_smoothing"]) == meta["config"]["label_smoothing"] == 0.2  # confidences are rescaled by it
    assert props["captchakit_version"]


def test_dynamic_batch_matches_torch(exported, run_dir: Path) -> None:
    predictor = Predictor.from_run(run_dir, "cpu")
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    paths = sorted((run_dir.parent / "data" / "test").glob("*.png"))[:7]
    images = np.stack([predictor.preprocess_bytes(p.read_bytes(), str(p)) for p in paths])
    norm = predictor.meta["normalization"]
    x = ((images.astype(np.float32) / 255.0 - norm["mean"]) / norm["std"]).astype(np.float32)
    for batch in (x[:1], x):
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        want = predictor.logits(images[: len(batch)])
        assert got.shape == want.shape
        assert [p.text for p in predictor.decode(got)] == [p.text for p in predictor.decode(want)]


def test_export_can_drop_the_test_time_views(run_dir: Path, tmp_path: Path) -> None:
    import torch

    from captcha.checkpoint import load_model

    single = export_onnx(run_dir, tmp_path / "one-view.onnx", verify_images=8, log=lambda s: None, tta=1)
    assert single.agree
    assert {p.key: p.value for p in onnx.load(str(single.path)).metadata_props}["tta"] == "1"
    model, meta = load_model(run_dir)
    model.test_shifts = ()
    x = np.random.default_rng(0).standard_normal((3, 1, *meta["input_size"])).astype(np.float32)
    session = ort.InferenceSession(str(single.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], want, atol=1e-3)


def test_cli_export(run_dir: Path, tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", str(run_dir), "--out", str(tmp_path / "m.onnx"), "--verify-images", "4"])
    assert args.func(args) == 0
    assert (tmp_path / "m.onnx").is_file()
    assert "max abs logit difference" in capsys.readouterr().out


def test_classifier_verification_images_come_from_every_class(tmp_path: Path) -> None:
    """ImageFolder trees (`split/<class>/<image>`) and MNIST IDX folders give export real images to check."""
    import gzip
    import struct

    from captcha.classify.shapes import SHAPES, write_shapes
    from captcha.export import verification_images

    tree = write_shapes(tmp_path / "shapes", per_class=8, size=20, splits=True)
    meta = {"task": "classification", "config": {"data": str(tree)}}
    files = verification_images(meta, 7, tmp_path / "work")
    assert len(files) == 7 and all(f.parent.parent.name == "test" for f in files)
    assert {f.parent.name for f in files} == set(SHAPES)  # round-robin over the classes

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    for name, array in (("train-images-idx3-ubyte", images), ("t10k-images-idx3-ubyte", images[:3])):
        header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        with gzip.open(mnist / f"{name}.gz", "wb") as f:
            f.write(header + array.tobytes())
    files = verification_images({"task": "classification", "config": {"data": str(mnist)}}, 8, tmp_path / "work2")
    assert len(files) == 3 and all(f.suffix == ".png" for f in files)  # the test file's images, as PNGs

    with pytest.raises(ValueError, match="no-verify"):
        verification_images({"task": "classification", "config": {"data": str(tmp_path / "gone")}}, 4, tmp_path / "w3")


def test_export_mistakes_are_named_and_an_unverified_file_is_not_left(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    for kwargs, message in (({"out": tmp_path}, "a folder; name the .onnx file"), ({"opset": 30}, "--opset 30: this torch exports opsets"),
                            ({"verify_images": -3}, "--verify-images must be 0 or more")):
        with pytest.raises(ValueError, match=message):
            export_onnx(run_dir, **{"out": tmp_path / "m.onnx", **kwargs}, log=lambda s: None)
    import captcha.export

    def no_images(*args, **kwargs):
        raise ValueError("cannot verify the export: the run's data folder (gone) is not there")

    monkeypatch.setattr(captcha.export, "verification_images", no_images)
    with pytest.raises(ValueError, match="cannot verify"):
        export_onnx(run_dir, tmp_path / "unverified.onnx", verify_images=4, log=lambda s: None)
    assert not (tmp_path / "unverified.onnx").exists()


def test_int8_export_reads_like_the_float_model_and_says_what_it_is(exported, run_dir: Path, tmp_path: Path, capsys) -> None:
    from serving.model import ServedModel

    lines: list[str] = []
    # The fixture's run has trained two epochs, so its readings sit near the boundaries that int8's
    # rounding moves: this test checks the mechanics; benchmarks/int8.py measures agreement on real runs.
    result = export_onnx(run_dir, verify_images=16, log=lines.append, quantize="int8", calibration_images=32, min_agreement=0.0)
    assert result.path == run_dir / "model.int8.onnx" and result.quantization == "int8"
    assert 0 <= result.agreeing <= result.verified_images == 16
    assert "ONNX Runtime (int8) and torch" in lines[0]
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["quantization"]) == {"type": "int8", "format": "QDQ", "weights": "int8 per channel",
                                                 "activations": "uint8", "calibration_images": 32}
    served = ServedModel("m", result.path, "cpu", 1)
    assert served.spec.quantization == "int8" and ServedModel("f", exported.path, "cpu", 1).spec.quantization == ""
    assert served.spec.input_size == tuple(json.loads(props["input_size"]))  # the same float32 input as the float export

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", str(run_dir), "--out", str(tmp_path / "q.onnx"), "--quantize", "int8", "--calibration-images", "8",
                              "--no-verify", "--tta", "1"])  # the wiring; the check is the call above
    assert args.func(args) == 0
    assert "int8 for the CPU provider" in capsys.readouterr().out
    for kwargs, message in (({"quantize": "int4"}, "--quantize takes int8"), ({"quantize": "int8", "calibration_images": 0}, "--calibration-images")):
        with pytest.raises(ValueError, match=message):
            export_onnx(run_dir, tmp_path / "bad.onnx", log=lambda s: None, **kwargs)


def test_an_int8_export_that_reads_too_differently_is_refused_and_removed(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import captcha.export

    monkeypatch.setattr(captcha.export, "_verify", lambda *args: (3.0, 10))  # 10 of 16 alike
    with pytest.raises(RuntimeError, match="10 of 16|6 of 16"):
        export_onnx(run_dir, tmp_path / "q.onnx", verify_images=16, log=lambda s: None, quantize="int8", calibration_images=8)
    assert not (tmp_path / "q.onnx").exists()


def test_int8_benchmark_prints_both_exports_side_by_side(run_dir: Path, benchmark_script, capsys) -> None:
    bench = benchmark_script("int8")
    assert bench.main(["--run", str(run_dir), "--limit", "8", "--batches", "1", "2", "--repeats", "1", "--calibration-images", "16"]) == 0
    out = capsys.readouterr().out
    assert "Machine:" in out
    row = next(line for line in out.splitlines() if line.startswith(f"| {run_dir.name} | 1 |")).split("|")[1:-1]
    assert len(row) == 6 + 2 * 2 and row[2].strip() == "8"  # run, views, images, two accuracies, alike, a float/int8 pair per batch
    assert all(float(cell) > 0 for cell in row[6:])


def test_a_file_whose_quantization_metadata_is_not_ours_is_refused_by_name() -> None:
    from serving.model import ModelSpec

    props = {"task": "recognition", "preprocess": "gray", "alphabet": '"ab"', "input_size": "[50, 130]", "channels": "1"}
    assert ModelSpec.from_props(props, "m.onnx").quantization == ""
    assert ModelSpec.from_props({**props, "quantization": '{"type": "int8"}'}, "m.onnx").quantization == "int8"
    for bad in ("not json", "5", '{"type": 8}'):
        with pytest.raises(ValueError, match="m.onnx: its 'quantization' metadata"):
            ModelSpec.from_props({**props, "quantization": bad}, "m.onnx")
