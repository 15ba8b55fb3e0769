"""The image-classification track: data readers, metrics vs scikit-learn, every recipe end to end,
ImageNet weight loading, freezing, the SVM path, the CLI and the checkpoint contract.

Tiny real runs (32x32 images, one epoch per stage) on generated shapes, CPU only.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from captcha.checkpoint import load_model
from captcha.classify import cli as classify_cli
from captcha.classify.data import load_data, load_image_folder, load_mnist
from captcha.metrics import classification_metrics, format_report
from captcha.models.classifiers import load_pretrained
from captcha.classify.recipes import build_recipe
from captcha.classify.svm import svm_compare
from captcha.classify.evaluate import evaluate_run, predict
from captcha.classify.train import train_classifier
from captcha.classify.shapes import SHAPES, write_shapes
from captcha.data import DataError
from captcha.models import create_model, list_models

CLASSES = SHAPES
QUIET = {"log": lambda _line: None, "cache_dir": False}


def _shapes(root: Path, per_class: int, splits: bool = False) -> Path:
    # mixed formats go through captcha.imageio
    return write_shapes(root, per_class, size=36, splits=splits, mixed_formats=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return _shapes(tmp_path_factory.mktemp("shapes"), per_class=12)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """A torchvision ResNet18 state dict saved like a downloaded ImageNet file (random values)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, shapes) -> Path:
    out = tmp_path_factory.mktemp("cnn_run")
    recipe = build_recipe("default", model="cnn", epochs=[3], input_size=(32, 32), lr=[3e-3], batch_size=16)
    train_classifier(shapes, out, recipe, device="cpu", **QUIET)
    return out


def _write_idx(path: Path, array: np.ndarray, packed: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if packed:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_classifiers_are_registered_and_return_one_head():
    assert {"mlp", "cnn", "resnet18_cls", "resnet50"} <= set(list_models("classification"))
    for name, channels, side in (("mlp", 1, 28), ("cnn", 1, 28), ("resnet18_cls", 3, 32)):
        model = create_model(name, num_classes=7, in_channels=channels)
        assert model(torch.rand(2, channels, side, side)).shape == (2, 1, 7)
    keras = create_model("resnet18_cls", num_classes=7, top="keras")
    assert keras(torch.rand(2, 3, 32, 32)).shape == (2, 1, 7)
    assert create_model("mlp", num_classes=3, activation="softmax")(torch.rand(4, 1, 28, 28)).shape == (4, 1, 3)


def test_classification_metrics_report_every_class():
    rng = np.random.default_rng(7)
    names = ["a", "b", "c", "d", "e"]
    targets = rng.integers(0, 5, 200)
    logits = rng.normal(size=(200, 5)) + 2.0 * np.eye(5)[targets] * (rng.random(200) < 0.6)[:, None]
    logits[:, 4] -= 10  # class "e" is never predicted: its precision is 0, not an error
    metrics = classification_metrics(logits[:, None, :], targets, names)
    predictions = logits.argmax(1)
    assert metrics["top1"] == pytest.approx((predictions == targets).mean())
    assert metrics["top1"] <= metrics["top3"] <= 1.0
    assert metrics["per_class"]["e"]["precision"] == 0.0 and metrics["per_class"]["e"]["support"] == (targets == 4).sum()
    assert np.asarray(metrics["confusion_matrix"]).sum() == 200
    report = format_report(metrics)
    assert "weighted avg" in report and report.splitlines()[-1].startswith("top-1 ")
    assert classification_metrics(np.zeros((3, 2)), np.array([0, 1, 1]), ["x", "y"])["top3"] == 1.0  # fewer classes than k


def test_mnist_idx_files_are_read_and_split(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images[:1000], packed=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", digits.target[:1000], packed=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[1000:1200], packed=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", digits.target[1000:1200], packed=False)
    data = load_mnist(tmp_path, (16, 16), channels=1, split=(0.8, 0.1))
    assert data.sizes() == {"train": 800, "val": 100, "test": 200}
    assert data.splits["train"].images.shape[1:] == (1, 16, 16)
    assert data.class_names == [str(i) for i in range(10)]
    assert torch.equal(data.splits["test"].targets, torch.as_tensor(digits.target[1000:1200]))
    assert load_data(tmp_path, (8, 8), 3).splits["val"].images.shape[1:] == (3, 8, 8)  # detected as MNIST


def test_image_folder_splits_and_unreadable_files(tmp_path, shapes):
    split_tree = _shapes(tmp_path / "split", per_class=8, splits=True)
    data = load_image_folder(split_tree, (16, 16), channels=3, cache_dir=False)
    assert data.class_names == list(CLASSES) and data.sizes() == {"train": 20, "val": 10, "test": 10}
    seeded = load_image_folder(shapes, (16, 16), channels=1, cache_dir=False)
    assert seeded.sizes() == {"train": 48, "val": 12, "test": 0}
    assert seeded.splits["train"].images.shape[1:] == (1, 16, 16)
    (split_tree / "train" / "ring" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (split_tree / "test" / "cross" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_image_folder(split_tree, (16, 16), cache_dir=False)
    assert {Path(p).name for p, _ in err.value.problems} == {"broken.png", "empty.jpg"}


@pytest.mark.parametrize(
    "recipe,overrides",
    [
        ("default", {"model": "mlp", "activation": "sigmoid", "lr": [1e-3]}),
        ("two-phase", {"model": "resnet18_cls", "epochs": [1, 1]}),
        ("tricks", {"model": "resnet18_cls", "batch_size": 16, "warmup_epochs": 1, "epochs": [2]}),
        ("finetune", {"epochs": [1]}),
        ("probe", {"epochs": [1]}),
    ],
)
def test_each_recipe_trains_and_reloads(tmp_path, shapes, recipe, overrides):
    overrides = {"epochs": [1], "input_size": (32, 32), **overrides}
    r = build_recipe(recipe, **overrides)
    result = train_classifier(shapes, tmp_path, r, device="cpu", **QUIET)
    with open(tmp_path / "metrics.csv") as f:  # the run files of every task (history.json and curves.png before)
        history = list(csv.DictReader(f))
    stages = sum(s.epochs for s in r.stages)
    assert len(history) == 2 * stages and {row["phase"] for row in history} == {"train", "val"}
    assert all({"loss", "top1", "top3"} <= row.keys() for row in history)
    for name in ("learning_curves.png", "confusion_matrix.png", "last.pt", "metrics.json"):
        assert (tmp_path / name).exists(), name
    model, meta = load_model(tmp_path)
    assert meta["task"] == "classification" and meta["class_names"] == list(CLASSES)
    assert meta["model"]["name"] == r.model and meta["length"] == 1 and meta["head"] == "fixed"
    assert meta["normalization"] == {"mean": 0.0, "std": 1.0} and meta["preprocess"] == "original"
    assert len(meta["input_normalization"]["mean"]) == 3
    data = load_image_folder(shapes, (32, 32), cache_dir=False)
    logits = predict(model, data.splits["val"])
    assert logits.shape == (12, 5)
    top1 = float((logits.argmax(1) == data.splits["val"].targets.numpy()).mean())
    assert top1 == pytest.approx(result.scores["val"]["top1"])


def test_recipes_follow_the_reports_and_take_overrides():
    tricks = build_recipe("tricks")
    assert tricks.stages[0].lr == pytest.approx(0.1 * 64 / 256) and tricks.label_smoothing == 0.1
    assert build_recipe("tricks", batch_size=128).stages[0].lr == pytest.approx(0.05)
    two = build_recipe("two-phase", lr=[1e-2, 1e-5])
    assert [s.freeze_backbone for s in two.stages] == [True, False] and two.stages[1].lr == 1e-5 and two.top == "keras"
    assert all(s.freeze_backbone for s in build_recipe("default", freeze="backbone").stages)
    with pytest.raises(ValueError):
        build_recipe("two-phase", epochs=[1, 2, 3])


def test_pretrained_weights_from_file_and_hub_dir(tmp_path, resnet18_file):
    reference = torch.load(resnet18_file, weights_only=True)
    model = create_model("resnet18_cls", num_classes=5)
    skipped = load_pretrained(model, "resnet18_cls", resnet18_file)
    assert skipped == ["fc.bias", "fc.weight"]
    state = model.backbone.features.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in state)
    hub = tmp_path / "torch_home"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / resnet18_file.name).write_bytes(resnet18_file.read_bytes())
    other = create_model("resnet18_cls", num_classes=5, top="keras")
    load_pretrained(other, "resnet18_cls", hub)  # torchvision's ResNet18_Weights loader, no download
    assert torch.equal(other.backbone.features.conv1.weight, reference["conv1.weight"])
    with pytest.raises(FileNotFoundError):
        load_pretrained(other, "resnet50", hub)


def test_freeze_backbone_keeps_backbone_weights(tmp_path, shapes, resnet18_file):
    reference = torch.load(resnet18_file, weights_only=True)
    probe = build_recipe("probe", model="resnet18_cls", epochs=[1], input_size=(32, 32), lr=[1e-2])
    train_classifier(shapes, tmp_path / "probe", probe, weights=resnet18_file, device="cpu", **QUIET)
    state = torch.load(tmp_path / "probe" / "last.pt", weights_only=False)["model_state"]
    body = {k.removeprefix("backbone.features."): v for k, v in state.items() if k.startswith("backbone.features.")}
    assert all(torch.equal(body[k], reference[k]) for k in body)  # weights and BatchNorm statistics
    # Unfrozen, the same backbone moves: the freezing above is what kept it still.
    two = build_recipe("two-phase", model="resnet18_cls", epochs=[1, 1], input_size=(32, 32))
    train_classifier(shapes, tmp_path / "two", two, weights=resnet18_file, device="cpu", **QUIET)
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=False)["model_state"]
    assert not torch.equal(state["backbone.features.conv1.weight"], reference["conv1.weight"])


def test_svm_on_penultimate_features(shapes, cnn_run):
    result = svm_compare(cnn_run, shapes, device="cpu", cache_dir=False)
    assert result["features"] == 128 and result["svm_train_samples"] == 48
    for who in ("svm", "network"):
        assert set(result[who]) >= {"train", "val"} and all(0.0 <= result[who][s] <= 1.0 for s in ("train", "val"))
    assert result["svm"]["fit_seconds"] >= 0


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="captcha")
    classify_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_train_evaluate_svm_json(tmp_path, shapes, capsys):
    run = tmp_path / "run"
    assert _cli(["classify", "train", "--data", str(shapes), "--model", "cnn", "--input-size", "32", "32", "--epochs", "2",
                 "--lr", "0.003", "--out", str(run), "--no-cache", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "top3" in out and (run / "best.pt").exists()
    assert _cli(["classify", "evaluate", str(run), "--data", str(shapes), "--json", "--no-cache"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"top1", "top3", "precision_macro", "recall_macro", "f1_macro", "per_class"} <= report.keys()
    assert sum(row["support"] for row in report["per_class"].values()) == 12 and report["split"] == "val"
    assert Path(report["confusion_matrix_png"]).exists()
    assert _cli(["classify", "svm", str(run), "--data", str(shapes), "--json", "--no-cache"]) == 0
    assert "svm" in json.loads(capsys.readouterr().out)


def test_evaluate_rejects_other_classes(tmp_path, shapes, cnn_run):
    other = tmp_path / "other"
    for name in ("x", "y"):
        (other / name).mkdir(parents=True)
        cv2.imwrite(str(other / name / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError):
        evaluate_run(cnn_run, other, cache_dir=False)


def test_sweep_writes_tables(tmp_path, shapes, capsys):
    assert _cli(["classify", "sweep", "--data", str(shapes), "--out", str(tmp_path), "--factors", "activation", "model",
                 "--values", "activation=relu,softmax", "--epochs", "1", "--input-size", "16", "16", "--no-cache"]) == 0
    rows = (tmp_path / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # activation: relu, softmax; model: mlp, cnn
    assert len(list((tmp_path / "runs").iterdir())) == 3  # the baseline is trained once
    assert "| activation | **relu** |" in (tmp_path / "sweep.md").read_text()


def test_r2_cnn_at_28x28_exports_to_onnx_and_agrees_with_torch(tmp_path, shapes):
    from captcha.export import export_onnx

    recipe = build_recipe("default", model="cnn", epochs=[1], input_size=(28, 28), batch_size=16)
    train_classifier(shapes, tmp_path / "run", recipe, device="cpu", **QUIET)  # 28 -> 7 x 7 features, pooled to 4 x 4
    result = export_onnx(tmp_path / "run", tmp_path / "cnn.onnx", verify_images=8, log=lambda s: None)
    assert result.path.is_file() and result.max_abs_diff < 1e-4


def test_bad_mnist_files_and_weights_files_are_named(tmp_path, shapes, resnet18_file):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    for name, array in (("train-images-idx3-ubyte", images[:100]), ("t10k-images-idx3-ubyte", images[100:150]),
                        ("t10k-labels-idx1-ubyte", digits.target[100:150])):
        _write_idx(tmp_path / name, array, packed=False)
    labels = digits.target[:100].copy()
    labels[7] = 12
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, packed=False)
    with pytest.raises(DataError, match=r"labels must be digits 0-9, found \[12\]") as info:
        load_mnist(tmp_path, (16, 16))
    assert "--skip-bad" not in str(info.value)  # the classification track has no such flag
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    leftovers = set(Path(tempfile.gettempdir()).iterdir())
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a readable gzip file"):
        load_mnist(tmp_path, (16, 16))
    assert set(Path(tempfile.gettempdir()).iterdir()) <= leftovers  # no temporary file left behind
    model = create_model("resnet50", num_classes=len(CLASSES))
    with pytest.raises(ValueError, match="does not fit resnet50"):
        load_pretrained(model, "resnet50", resnet18_file)  # a ResNet18 file is not ResNet50 weights
    (tmp_path / "bogus.pth").write_text("hi")
    with pytest.raises(ValueError, match="bogus.pth: not a weights file"):
        load_pretrained(model, "resnet50", tmp_path / "bogus.pth")


def test_recipes_refuse_values_no_run_can_use_and_svm_wants_a_classifier(trained_run, shapes):
    for overrides, flag in (({"batch_size": 0}, "--batch-size"), ({"input_size": (0, 28)}, "--input-size"), ({"epochs": [0]}, "--epochs")):
        with pytest.raises(ValueError, match=flag):
            build_recipe("default", **overrides)
    with pytest.raises(ValueError, match="not a classification run"):
        svm_compare(trained_run, shapes)


def test_augmented_runs_score_every_split_at_the_input_size(tmp_path, shapes):
    # With crops, training images are kept at 256/224 of the input size; the scores must read the
    # images the model reads (the MLP could not even take the larger ones).
    out = tmp_path / "mlp"
    recipe = build_recipe("default", model="mlp", epochs=[1], input_size=(16, 16), augment="tricks", batch_size=16)
    result = train_classifier(shapes, out, recipe, device="cpu", **QUIET)
    assert (out / "metrics.json").exists()
    for split in ("train", "val"):
        assert result.scores[split]["top1"] == pytest.approx(evaluate_run(out, shapes, split=split, cache_dir=False)["top1"])


def test_classifier_data_mistakes_are_named_before_training(tmp_path, shapes):
    empty = tmp_path / "empty_class"
    shutil.copytree(shapes, empty)
    (empty / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra: class folder without images"):
        load_data(empty, (16, 16), 3)
    no_train = tmp_path / "no_train"
    shutil.copytree(shapes, no_train / "val")
    shutil.copytree(shapes, no_train / "test")
    with pytest.raises(DataError, match="no train/ folder beside val/, test/"):
        load_data(no_train, (16, 16), 3)
    with pytest.raises(ValueError, match="model sepnet: not a classifier; choose from mlp, cnn"):
        _cli(["classify", "sweep", "--data", str(shapes), "--out", str(tmp_path / "sw"), "--factors", "model",
              "--values", "model=mlp,sepnet", "--epochs", "1", "--no-cache"])
    assert not (tmp_path / "sw" / "runs").exists()  # refused before any run trained
    assert build_recipe("tricks", epochs=[2]).stages[0].warmup_epochs == 1  # the recipe's warm-up fits a short run
    with pytest.raises(ValueError, match="--warmup-epochs 3 leaves no epoch"):
        build_recipe("tricks", epochs=[2], warmup_epochs=3)


def test_mnist_resizes_as_the_exported_preprocessor_does(tmp_path):
    from captcha.classify.data import _resize_stack
    from captcha.preprocess import resize

    digits = np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8)
    stacked = _resize_stack(digits, (10, 10), 1)
    assert all(np.array_equal(stacked[i, 0], resize(digits[i], (10, 10))) for i in range(3))


def test_an_interrupted_two_stage_run_resumes_to_the_same_result(tmp_path, shapes):
    # Classifiers run through the one trainer: they resume as recognizers do, with an EMA of the
    # weights, whether the interruption fell at the end of the frozen stage or inside the next one.
    from captcha.classify.train import ClassificationTask
    from captcha.train import fit

    def task(out: str, resume: bool = False) -> ClassificationTask:
        recipe = build_recipe("two-phase", model="cnn", epochs=[1, 2], input_size=(16, 16), batch_size=16)
        return ClassificationTask(shapes, tmp_path / out, recipe, device="cpu", cache_dir=False, resume=resume, ema=0.9)

    fit(task("whole"), log=lambda _line: None)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    assert [(r["epoch"], r["stage"]) for r in whole["history"][::2]] == [(1, "frozen"), (2, "finetune"), (3, "finetune")]
    for stop in (1, 2):

        def interrupt(epoch, row, stop=stop):
            if epoch == stop:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            fit(task(f"cut{stop}"), on_epoch_end=interrupt, log=lambda _line: None)
        lines: list[str] = []
        fit(task(f"cut{stop}", resume=True), log=lines.append)
        assert any(line.startswith(f"Resuming {tmp_path / f'cut{stop}'} from epoch {stop} of 3") for line in lines)
        cut = torch.load(tmp_path / f"cut{stop}" / "last.pt", weights_only=False)
        assert [r["loss"] for r in cut["history"]] == pytest.approx([r["loss"] for r in whole["history"]], abs=1e-5)
        for part in ("model_state", "ema"):
            for key, value in whole[part].items():
                assert torch.allclose(value.float(), cut[part][key].float(), atol=1e-5), (stop, part, key)
    header = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,stage,phase,samples,loss,top1,top3,elapsed_s,lr"


def test_cli_resumes_a_classifier_run(tmp_path, shapes, capsys):
    flags = ["classify", "train", "--data", str(shapes), "--model", "mlp", "--input-size", "16", "16", "--epochs", "1",
             "--out", str(tmp_path / "run"), "--no-cache", "--device", "cpu"]
    assert _cli(flags) == 0
    capsys.readouterr()
    assert _cli(flags + ["--resume", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "Resuming" in out and "ignoring" in out and "epoch 2/" not in out  # the run's own recipe: 1 epoch, done


def test_image_folder_files_outside_the_root_and_broken_entries_are_named(tmp_path, shapes):
    root = tmp_path / "tree"
    shutil.copytree(shapes, root)
    outside = _shapes(tmp_path / "outside", per_class=2)
    (root / "circle" / "from_outside.png").symlink_to(outside / "circle" / "0001.png")
    (root / "circle" / "gone.png").symlink_to(outside / "circle" / "none.png")  # outside and dangling: "outside" too
    (root / "ring" / "dangling.png").symlink_to(root / "ring" / "none.png")
    (root / "ring" / "loop.png").symlink_to(root / "ring" / "loop.png")
    os.mkfifo(root / "square" / "pipe.png")  # reading it would block for ever
    (root / "star").symlink_to(outside / "cross", target_is_directory=True)  # a whole class folder linked out of the root
    with pytest.raises(DataError) as info:
        load_data(root, (16, 16), 3, cache_dir=False)
    outside_reason = f"resolves outside {root}: only files inside the data folder are read"
    assert sorted(info.value.problems) == sorted([
        (str(root / "circle" / "from_outside.png"), outside_reason), (str(root / "circle" / "gone.png"), outside_reason),
        (str(root / "star"), outside_reason),
        (str(root / "ring" / "dangling.png"), "a broken symbolic link (its target is missing)"),
        (str(root / "ring" / "loop.png"), "a symbolic link loop"),
        (str(root / "square" / "pipe.png"), "not a regular file"),
    ])
    split_root = tmp_path / "split_tree"  # a split folder linked elsewhere: its files are outside too
    shutil.copytree(shapes, split_root / "train")
    (split_root / "val").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError) as info:
        load_data(split_root, (16, 16), 3, cache_dir=False)
    assert {p for p, _ in info.value.problems} == {str(split_root / "val" / c) for c in CLASSES}
