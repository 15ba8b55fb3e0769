import subprocess
import sys

from captcha.cli import build_parser, main

CORE_VERBS = ("generate", "styles", "preview", "models", "train", "evaluate", "predict", "sweep")


def test_help_lists_every_verb():
    text = build_parser().format_help()
    for verb in CORE_VERBS:
        assert verb in text


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "captcha", "--help"], capture_output=True, text=True, check=True).stdout
    assert "train" in out


def test_generate_and_preview(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "d"), "--splits", "6", "2", "2", "--style", "course", "eval-lines"]) == 0
    assert len(list((tmp_path / "d" / "train").glob("*.png"))) == 6
    assert main(["preview", str(tmp_path / "d"), "--count", "3", "--out", str(tmp_path / "grid.png")]) == 0
    import cv2

    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid is not None and grid.shape[0] > 3 * 50


def test_preview_shows_colours_as_they_are(tmp_path):
    """The `original` preprocessor hands the model RGB; the preview must still draw red as red."""
    import cv2
    import numpy as np

    (tmp_path / "d").mkdir()
    red = np.zeros((50, 130, 3), np.uint8)
    red[:, :, 2] = 255  # BGR red
    cv2.imwrite(str(tmp_path / "d" / "abcd_0.png"), red)
    assert main(["preview", str(tmp_path / "d"), "--preprocess", "original", "--out", str(tmp_path / "grid.png")]) == 0
    grid = cv2.imread(str(tmp_path / "grid.png")).reshape(-1, 3).astype(int)
    assert ((grid[:, 2] > 200) & (grid[:, 0] < 50)).sum() > 2 * 50 * 130 * 3  # input and original columns, at 2x
    assert not ((grid[:, 0] > 200) & (grid[:, 2] < 50)).any()  # nothing turned blue


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such data folder" in capsys.readouterr().err


def test_sweep_writes_a_table(easy_data, tmp_path, capsys):
    code = main(["sweep", "--data", str(easy_data), "--models", "resnet18_mod", "--preprocessors", "original", "denoise",
                 "--epochs", "1", "--out", str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert table.count("| resnet18_mod |") == 2
    assert (tmp_path / "sweep" / "sweep.csv").read_text().startswith("model,preprocess,parameters")
