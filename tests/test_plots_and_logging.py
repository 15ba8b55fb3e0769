"""Pictures (matplotlib), TensorBoard event files and the missing-extra error."""

import sys

import cv2
import numpy as np
import pytest

from captcha.cli import main
from captcha.plots import confusion_matrix_image, learning_curves
from captcha.train import TrainConfig, fit

HISTORY = [
    {"epoch": e, "phase": phase, "loss": 2.0 / e, "per_char_accuracy": [1 - 1 / (e + 1)] * 3, "sequence_accuracy": 1 - 2 / (e + 2), "lr": 0.01 / e}
    for e in range(1, 6) for phase in ("train", "val")
]


def _png_size(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None
    return image.shape


def test_learning_curves_as_png_and_svg(tmp_path):
    height, width, _ = _png_size(learning_curves(HISTORY, tmp_path / "curves.png"))
    assert width > 2 * height  # loss, accuracy and learning-rate panels side by side
    svg = learning_curves(HISTORY, tmp_path / "curves.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "learning rate" in svg
    classify_rows = [{"epoch": 1, "phase": "train", "loss": 1.0, "top1": 0.5}, {"epoch": 1, "phase": "val", "loss": 1.1, "top1": 0.4}]
    _png_size(learning_curves(classify_rows, tmp_path / "classify.png", metric="top1", metric_label="top-1"))
    with pytest.raises(ValueError, match="png or svg"):
        learning_curves(HISTORY, tmp_path / "curves.jpg")


def test_confusion_matrix_is_a_picture_with_every_label(tmp_path):
    matrix = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]])
    _png_size(confusion_matrix_image(matrix, ["a", "b", "c"], tmp_path / "cm.png"))
    svg = confusion_matrix_image(matrix, ["cat", "dog", "bird"], tmp_path / "cm.svg").read_text()
    assert all(name in svg for name in ("cat", "dog", "bird", "predicted"))


def test_a_run_writes_its_symbol_confusion_matrix(trained_run):
    height, width, _ = _png_size(trained_run / "confusion_matrix.png")
    assert height > 100 and width > 100


def test_tensorboard_logs_scalars_misread_images_and_settings(easy_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    fit(TrainConfig(data=str(easy_data), out=str(out), epochs=2, init="none", tta=1, cache_dir=str(tmp_path / "cache"),
                    tensorboard="", plot_format="svg"), log=lambda s: None)
    assert (out / "learning_curves.svg").exists() and (out / "confusion_matrix.svg").exists()
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "whole_string_accuracy/val", "char_accuracy/val_1", "char_accuracy/val_2", "learning_rate"} <= scalars
    assert [e.step for e in events.Scalars("loss/val")] == [1, 2]
    assert "misread/test" in events.Tags()["images"]  # two epochs from scratch misread some test images
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the settings, for the HPARAMS tab


def test_tensorboard_without_the_extra_fails_at_start_naming_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package looks like to import
    with pytest.raises(ValueError, match=r"captchakit\[tensorboard\]"):
        TrainConfig(tensorboard="")
    assert main(["train", "--tensorboard", "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "captchakit[tensorboard]" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_learning_curves_break_where_epochs_were_not_validated():
    import math

    from captcha.plots import _gapped

    xs, ys = _gapped([1, 41, 42, 43], [0.1, 0.8, 0.9, 0.95])  # validated after epoch 1, then in the last third
    assert xs[0] == 1 and math.isnan(xs[1]) and math.isnan(ys[1]) and xs[2:] == [41, 42, 43] and ys[2:] == [0.8, 0.9, 0.95]
    assert _gapped([1, 2, 3], [3, 2, 1]) == ([1, 2, 3], [3, 2, 1])  # consecutive epochs: one line, unchanged
