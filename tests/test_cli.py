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


def test_generate_refuses_nonsense_and_never_writes_outside_out(tmp_path, capsys):
    from captcha.data import load_splits

    for flags, reason in ((["--length", "0"], "at least 1 character"), (["--splits", "-1", "1", "1"], "must not be negative"),
                          (["--alphabet", ""], "at least one symbol"), (["--min-length", "5", "--length", "3"], "above --length"),
                          (["--alphabet", "aab"], "repeats a symbol")):
        assert main(["generate", str(tmp_path / "x"), *flags]) == 2, flags
        assert reason in capsys.readouterr().err
    out = tmp_path / "odd"
    assert main(["generate", str(out), "--alphabet", "a_b/", "--splits", "6", "2", "2", "--seed", "1"]) == 0
    files = sorted(p.name for p in tmp_path.rglob("*.png"))
    assert len(files) == 10 and all(p.is_relative_to(out) for p in tmp_path.rglob("*.png"))
    splits = load_splits(out)  # the labels come from labels.csv
    assert sum(len(v) for v in splits.values()) == 10 and all(set(s.label) <= set("a_b/") for v in splits.values() for s in v)


def test_pictures_go_where_asked_or_say_why_not(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "d"), "--splits", "4", "1", "1"]) == 0
    assert main(["preview", str(tmp_path / "d"), "--out", str(tmp_path / "new" / "folder" / "p.png")]) == 0
    assert (tmp_path / "new" / "folder" / "p.png").is_file()
    assert main(["preview", str(tmp_path / "d"), "--out", str(tmp_path / "p.jpgx")]) == 2
    assert "cannot write an image of type .jpgx" in capsys.readouterr().err


def test_models_lists_every_model_for_any_head_and_sweep_help_shows_its_defaults(capsys):
    assert main(["models", "--head", "attention"]) == 0
    out = capsys.readouterr().out
    assert "sepnet" in out and "baseline" in out and "supports only --head fixed" in out
    help_text = build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()
    assert "(default fixed)" in " ".join(help_text.split()) and "1,000,000" not in help_text


def test_evaluate_on_a_classifier_run_points_to_classify_evaluate(tmp_path, capsys):
    from captcha.classify.recipes import build_recipe
    from captcha.classify.shapes import write_shapes
    from captcha.classify.train import train_classifier

    shapes = write_shapes(tmp_path / "shapes", 4, size=32)
    train_classifier(shapes, tmp_path / "run", build_recipe("default", model="mlp", epochs=[1], input_size=(16, 16)), device="cpu",
                     log=lambda s: None, cache_dir=False)
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(shapes)]) == 2
    assert "captcha classify evaluate" in capsys.readouterr().err


def test_serve_and_client_start_without_importing_torch():
    # `captcha serve` / `captcha client` build only the serving verbs' parser: no torch, no model zoo
    code = ("import sys\nfrom captcha.cli import main\n"
            "for verb in ('serve', 'client'):\n"
            "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
            "import serving.server\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'captcha.models') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: captcha serve" in out.stdout and "usage: captcha client" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_interrupt_names_the_run_to_resume_and_only_for_train(tmp_path, monkeypatch, capsys):
    import captcha.generate
    import captcha.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(captcha.train, "fit", interrupted)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "myrun")]) == 130
    assert f"captcha train --resume --out {tmp_path / 'myrun'}` continues the run" in capsys.readouterr().err
    monkeypatch.setattr(captcha.generate, "generate_dataset", interrupted)
    assert main(["generate", str(tmp_path / "g")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
