import csv
import json
from pathlib import Path

import pytest
import torch

from captcha.checkpoint import load_checkpoint, load_model
from captcha.cli import main
from captcha.inference import Predictor, evaluate_folder
from captcha.runtime import loss_fn
from captcha.recognition import ParameterBudgetError
from captcha.train import TrainConfig, fit

QUIET = {"log": lambda s: None}


def test_tiny_run_really_learns(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    # 4 symbols per character: chance is 25% per character and 6.25% per string.
    assert min(metrics["test"]["per_char_accuracy"]) > 0.6
    assert metrics["test"]["sequence_accuracy"] > 0.4


def test_run_directory_holds_the_artifacts(trained_run):
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "learning_curves.png"):
        assert (trained_run / name).exists(), name
    header = (trained_run / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,phase,samples,loss,sequence_accuracy,char1_accuracy")


def test_checkpoint_is_self_describing(trained_run):
    meta = load_checkpoint(trained_run)["meta"]
    for key in ("model", "alphabet", "length", "input_size", "channels", "preprocess", "normalization", "config", "metrics", "versions", "task", "head"):
        assert key in meta, key
    assert meta["alphabet"] == "27bx" and meta["length"] == 2 and meta["channels"] == 1
    model, _ = load_model(trained_run)  # rebuilt from the meta alone
    assert model(torch.zeros(1, 1, 50, 130)).shape == (1, 2, 4)
    pointwise = model.backbone.stages[1].pointwise[0].weight  # 1 x 1: its two layouts differ in strides
    assert pointwise.is_contiguous(memory_format=torch.channels_last)  # laid out as training does: faster reading
    assert load_model(trained_run, channels_last=False)[0].backbone.stages[1].pointwise[0].weight.is_contiguous()


def test_evaluate_and_predict_agree(trained_run, easy_data):
    report = evaluate_folder(trained_run, easy_data)
    assert report["samples"] == 100
    paths = sorted((easy_data / "test").glob("*.png"))
    predictions = Predictor.from_run(trained_run, "cpu").predict_paths(paths)
    right = sum(p.text == path.name.split("_")[0] for p, path in zip(predictions, paths))
    assert right / len(paths) == pytest.approx(report["sequence_accuracy"])
    for p in predictions:
        assert len(p.char_confidences) == 2 and 0 < p.confidence <= 1


def test_evaluate_reads_the_views_asked_for(trained_run, easy_data, capsys):
    from captcha.tta import read_views

    run_views = load_checkpoint(trained_run)["meta"].get("tta", 1)
    assert evaluate_folder(trained_run, easy_data)["tta"] == run_views
    one = evaluate_folder(trained_run, easy_data, tta=1)
    assert one["tta"] == 1
    predictor = Predictor.from_run(trained_run, "cpu")
    read_views(predictor.model, 1)
    paths = sorted((easy_data / "test").glob("*.png"))
    right = sum(p.text == path.name.split("_")[0] for p, path in zip(predictor.predict_paths(paths), paths))
    assert right / len(paths) == pytest.approx(one["sequence_accuracy"])
    assert main(["evaluate", str(trained_run), "--data", str(easy_data), "--tta", "9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == 9
    with pytest.raises(SystemExit):
        main(["evaluate", str(trained_run), "--data", str(easy_data), "--tta", "4"])
    assert "--tta" in capsys.readouterr().err


def test_cli_evaluate_and_predict_json(trained_run, easy_data, capsys):
    assert main(["evaluate", str(trained_run), "--data", str(easy_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"samples", "per_char_accuracy", "sequence_accuracy"} <= report.keys()
    image = next((easy_data / "test").glob("*.png"))
    assert main(["predict", str(trained_run), str(image), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert set(line) == {"path", "text", "confidence", "char_confidences"}


def test_evaluate_lists_and_draws_the_misread_images(trained_run, easy_data, tmp_path, capsys):
    import shutil

    import cv2

    report = evaluate_folder(trained_run, easy_data)
    assert len(report["misread"]) == round((1 - report["sequence_accuracy"]) * report["samples"])
    # relabel 6 test images with a wrong label: the model reads what is drawn, so they are misread
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    swap = str.maketrans("27bx", "bx27")
    for i, path in enumerate(sorted((easy_data / "test").glob("*.png"))[:6]):
        shutil.copy(path, wrong / f"{path.name.split('_')[0].translate(swap)}_{i}.png")
    out = tmp_path / "errors.png"
    assert main(["evaluate", str(trained_run), "--data", str(wrong), "--errors", str(out), "--max-errors", "4", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert len(report["misread"]) >= 5
    for m in report["misread"]:
        assert m["predicted"] != m["label"] and Path(m["path"]).name.startswith(m["label"] + "_")
    assert f"4 of {len(report['misread'])} misread images" in captured.err
    image = cv2.imread(str(out))
    cell_h = 2 * 50 + 24  # at 2x, with a caption
    assert cell_h < image.shape[0] < 2 * cell_h and image.shape[1] > 4 * 2 * 130  # one row of 4 cells


def test_predict_names_a_broken_image(trained_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nonsense")
    assert main(["predict", str(trained_run), str(bad)]) == 1
    assert "bad.png" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_result(easy_data, tmp_path):
    # with an EMA of the weights, whose state must survive the interruption too
    base = dict(data=str(easy_data), epochs=3, cache_dir=str(tmp_path / "cache"), batch_size=128, ema=0.9)
    fit(TrainConfig(out=str(tmp_path / "whole"), **base), **QUIET)

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(out=str(tmp_path / "cut"), **base), on_epoch_end=interrupt, **QUIET)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    fit(TrainConfig(out=str(tmp_path / "cut"), resume=True, **base), **QUIET)

    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["epoch"] == 3 and len(cut["history"]) == len(whole["history"])
    for key, value in whole["model_state"].items():
        assert torch.allclose(value.float(), cut["model_state"][key].float(), atol=1e-5), key
    for key, value in whole["ema"].items():
        assert torch.allclose(value.float(), cut["ema"][key].float(), atol=1e-5), key


def test_parameter_budget_is_enforced_before_training(easy_data, tmp_path, capsys):
    with pytest.raises(ParameterBudgetError, match="over the budget"):
        fit(TrainConfig(data=str(easy_data), out=str(tmp_path / "r"), max_params=50_000, cache_dir=str(tmp_path / "c")), **QUIET)
    assert not (tmp_path / "r" / "last.pt").exists()
    code = main(["train", "--data", str(easy_data), "--out", str(tmp_path / "r2"), "--model", "resnet18", "--max-params", "1000000", "--cache-dir", str(tmp_path / "c")])
    assert code == 2 and "over the budget" in capsys.readouterr().err


def test_cli_train_end_to_end(easy_data, tmp_path, capsys):
    code = main(["train", "--data", str(easy_data), "--out", str(tmp_path / "run"), "--epochs", "1", "--cache-dir", str(tmp_path / "c"), "--batch-size", "128",
                 "--ink-curves", "0.25"])
    assert code == 0
    assert load_checkpoint(tmp_path / "run")["meta"]["config"]["ink_curves"] == 0.25  # the option reached the run
    out = capsys.readouterr().out
    assert "Epoch [1/1], phase: train, samples: 600, Loss:" in out
    assert "Top-1 Accuracies: [" in out and "Sequence:" in out and "Elapsed:" in out
    assert "Run saved in" in out and (tmp_path / "run" / "best.pt").exists()


def test_ctc_head_trains_on_variable_length_labels(tmp_path):
    from captcha.generate import GeneratorConfig, generate_dataset

    generate_dataset(tmp_path / "d", GeneratorConfig(alphabet="27bx", length=(2, 4), splits={"train": 80, "val": 20, "test": 20}))
    result = fit(TrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "r"), head="ctc", epochs=1, cache_dir=str(tmp_path / "c")), **QUIET)
    assert result.test["samples"] == 20
    meta = load_checkpoint(tmp_path / "r")["meta"]
    assert meta["length"] is None and meta["head"] == "ctc"
    predictions = Predictor.from_run(tmp_path / "r", "cpu").predict_paths(sorted((tmp_path / "d" / "test").glob("*.png"))[:3])
    assert all(isinstance(p.text, str) for p in predictions)
    from captcha.decoding import label_smoothing_of

    assert meta["config"]["label_smoothing"] == 0.2 and label_smoothing_of(meta) == 0.0  # the CTC loss takes none


def test_inputs_too_wide_for_the_attention_head_are_refused_and_short_ctc_outputs_named(tiny_data, tmp_path):
    from captcha.recognition import ctc_columns_needed

    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), epochs=1, input_size=(50, 260), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="attention head reads at most 64; use a width of at most 256, or --head ctc"):
        fit(config, **QUIET)
    assert not (tmp_path / "r" / "last.pt").exists()
    lines = []
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), epochs=1, head="ctc", input_size=(50, 12), cache_dir=str(tmp_path / "c"))
    fit(config, log=lines.append)
    assert any("of 120 training labels" in line and "need more than the 3 output columns" in line for line in lines)
    assert [ctc_columns_needed(t) for t in ("ab", "aab", "aaa", "abab")] == [2, 4, 5, 4]


def test_misread_captions_mark_wrong_and_missing_characters():
    from captcha.plots import marked_prediction

    assert marked_prediction("ab12", "ab13") == [("a", False), ("b", False), ("1", False), ("3", True)]
    assert marked_prediction("w86yw3", "w86yw")[-1] == ("_", True)  # a dropped character is shown, in red
    assert [wrong for _, wrong in marked_prediction("abc", "abxc")] == [False, False, True, False]  # an extra one


def test_per_character_accuracy_counts_only_the_labels_that_reach_a_position():
    from captcha.metrics import per_char_accuracy

    labels = ["ab", "abc", "abcd"]
    assert per_char_accuracy(labels, labels, 4) == [1.0, 1.0, 1.0, 1.0]  # every image read right: 100% everywhere
    assert per_char_accuracy(["ab", "abx", "ab"], labels, 4) == [1.0, 1.0, 0.0, 0.0]  # a dropped character is wrong
    assert per_char_accuracy(["xb", "ab"], ["ab", "ab"], 4) == [0.5, 1.0, 0.0, 0.0]  # no label reaches 3, 4


def test_label_smoothing_spreads_the_target_and_bad_values_are_refused():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])
    targets = torch.tensor([[0, 1]])
    plain, smoothed = loss_fn(logits, targets, "attention"), loss_fn(logits, targets, "attention", 0.2)
    flat = logits.reshape(-1, 3).log_softmax(-1)
    expected = -(0.8 * flat.gather(1, targets.reshape(-1, 1)).squeeze(1) + 0.2 * flat.mean(1)).mean()
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-6) and smoothed > plain
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="--label-smoothing"):
            TrainConfig(label_smoothing=bad)


def test_confidences_are_reported_on_the_unsmoothed_scale(trained_run):
    import numpy as np

    from captcha.decoding import decode, label_smoothing_of

    # Smoothing 0.2 over 36 symbols trains a sure character towards 0.8 + 0.2/36 = 0.806, so a sure
    # 4-character string would read 0.42: decoding maps the surest reading back to 1, chance stays 1/36.
    symbols = "0123456789abcdefghijklmnopqrstuvwxyz"
    surest = 0.8 + 0.2 / 36
    logits = np.full((2, 4, 36), np.log((1 - surest) / 35))
    logits[0, :, 7] = np.log(surest)
    logits[1] = 0.0  # every symbol alike
    raw, rescaled = decode(logits, symbols), decode(logits, symbols, "attention", 0.2)
    assert raw[0].char_confidences == pytest.approx([surest] * 4, abs=1e-6) and raw[0].confidence == pytest.approx(surest**4)
    assert rescaled[0].char_confidences == pytest.approx([1.0] * 4, abs=1e-6) and rescaled[0].confidence == pytest.approx(1.0)
    assert rescaled[1].char_confidences == pytest.approx([1 / 36] * 4, abs=1e-6)
    assert rescaled[0].text == raw[0].text == "7777"
    assert decode(logits, symbols[:35], "ctc", 0.2)[0].confidence == decode(logits, symbols[:35], "ctc")[0].confidence  # CTC: no smoothing
    meta = load_checkpoint(trained_run)["meta"]
    assert label_smoothing_of(meta) == meta["config"]["label_smoothing"] == 0.2  # the default, recorded
    assert label_smoothing_of({"task": "recognition"}) == 0.0  # checkpoints from before the field
    assert label_smoothing_of({"task": "classification", "config": {"label_smoothing": 0.1}}) == 0.0


def test_augment_views_reads_each_image_in_independent_copies(monkeypatch):
    import captcha.recognition as recognition
    from captcha.models import create_model
    from captcha.tasks import LabeledImages, PreparedRun, Stage
    from captcha.train import Run, enter_stage, train_one_epoch

    seen = []
    real_augment = recognition.augment_batch

    def spy(x, level, generator=None, ink_curves=0.0):
        out = real_augment(x, level, generator, ink_curves)
        seen.append((x.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(recognition, "augment_batch", spy)
    images = torch.randint(0, 256, (6, 1, 50, 130), dtype=torch.uint8)
    targets = torch.randint(0, 4, (6, 2))
    labels = ["".join("27bx"[i] for i in row) for row in targets.tolist()]
    model = create_model("sepnet", num_classes=4, length=2, in_channels=1, head="attention")
    task = recognition.RecognitionTask(TrainConfig(batch_size=4, augment_views=3, channels_last=False))
    task.alphabet = "27bx"
    split = LabeledImages(images, targets, labels)
    frozen_lr = Stage("train", 1, lambda params: torch.optim.SGD(params, lr=0.0), lambda optimizer, steps: None)
    run = Run(task, PreparedRun(model, {}, split, {"val": split}, "val", ""), torch.device("cpu"), Path("unused"), [frozen_lr],
              torch.Generator().manual_seed(0))
    stats = train_one_epoch(run, enter_stage(run, 1))
    assert [x.shape[0] for x, _ in seen] == [12, 6]  # batches of 4 and 2 images, 3 copies each
    x, out = seen[0]
    assert torch.equal(x[:4], x[4:8]) and torch.equal(x[:4], x[8:])  # the same images ...
    assert not torch.allclose(out[:4], out[4:8])  # ... augmented independently
    assert stats.samples == 6  # the statistics count each labeled image once
    with pytest.raises(ValueError, match="--augment-views"):
        TrainConfig(augment_views=0)
    with pytest.raises(ValueError, match="--augment-views"):
        TrainConfig(augment_views=2, augment="none")


def test_a_corrupt_or_foreign_checkpoint_is_refused_by_name(trained_run, easy_data, tmp_path, capsys):
    image = str(next((easy_data / "test").glob("*.png")))
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "best.pt").write_bytes((trained_run / "best.pt").read_bytes()[:20000])
    assert main(["predict", str(tmp_path / "trunc"), image]) == 2
    assert "trunc/best.pt: not a readable checkpoint" in capsys.readouterr().err
    assert main(["predict", image, image]) == 2  # an image where the run belongs
    assert "not a readable checkpoint" in capsys.readouterr().err
    torch.save({"weights": 1}, tmp_path / "other.pt")
    assert main(["evaluate", str(tmp_path / "other.pt"), "--data", str(easy_data)]) == 2
    assert "not a captchakit checkpoint" in capsys.readouterr().err
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "last.pt").write_bytes((trained_run / "last.pt").read_bytes())
    assert main(["predict", str(tmp_path / "cut"), image]) == 2
    assert "only last.pt" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "cut" / "last.pt"), image]) == 0


def test_predict_reads_every_image_of_a_folder(trained_run, easy_data, capsys):
    assert main(["predict", str(trained_run), str(easy_data / "test"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 100 and lines[0]["path"].endswith(".png")


def test_out_naming_a_file_is_refused_before_any_work(easy_data, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="a file of that name is there"):
        fit(TrainConfig(data=str(easy_data), out=str(tmp_path / "afile"), cache_dir=str(tmp_path / "c")), **QUIET)


def test_resume_says_which_given_settings_it_ignores(easy_data, tmp_path, monkeypatch):
    base = dict(data=str(easy_data), epochs=1, cache_dir=str(tmp_path / "cache"), batch_size=128, init="none", tta=1)
    fit(TrainConfig(out=str(tmp_path / "run"), **base), **QUIET)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert saved["data"] == str(easy_data.resolve())  # resumable from any working directory
    monkeypatch.chdir(tmp_path)
    messages: list[str] = []
    fit(TrainConfig(out=str(tmp_path / "run"), resume=True, **{**base, "epochs": 4, "lr": 0.5}), log=messages.append)
    ignored = [m for m in messages if m.startswith("--resume continues")]
    assert len(ignored) == 1 and "epochs=4 (the run's: 1)" in ignored[0] and "lr=0.5" in ignored[0] and "data=" not in ignored[0]
    messages.clear()  # a value given on the command line is named even where it equals the default
    fit(TrainConfig(out=str(tmp_path / "run"), resume=True, **{**base, "epochs": 60}), log=messages.append, given={"epochs", "out", "resume"})
    assert any("epochs=60 (the run's: 1)" in m for m in messages)


def test_a_run_saved_before_ink_curves_existed_resumes_without_them(easy_data, tmp_path):
    from captcha.recognition import RecognitionTask, config_dict

    saved = config_dict(TrainConfig(data=str(easy_data), ink_curves=0.0))
    del saved["ink_curves"]  # as a checkpoint of 2026-12-04 or earlier holds it
    resumed, ignored = RecognitionTask(TrainConfig(out=str(tmp_path / "run"), resume=True)).resumed(saved)
    assert resumed.config.ink_curves == 0.0 and ignored == []
    assert TrainConfig().ink_curves == 0.5  # while a new run draws them by default


def test_resuming_an_early_stopped_run_trains_no_more(easy_data, tmp_path, monkeypatch):
    import dataclasses

    import captcha.train

    # Validation reads the same whole-string score every epoch, so the run stops after the second;
    # (a tiny learning rate alone leaves batch-norm statistics to drift the score either way).
    scored = captcha.train.score_split
    monkeypatch.setattr(captcha.train, "score_split", lambda *args: dataclasses.replace(scored(*args), sequence=0.5))
    config = TrainConfig(data=str(easy_data), out=str(tmp_path / "run"), epochs=4, patience=1, lr=1e-9, init="none", tta=1,
                         cache_dir=str(tmp_path / "cache"), batch_size=128, validate_from=0.0)
    fit(config, **QUIET)
    monkeypatch.undo()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    last = int(rows[-1].split(",")[0])
    assert last < 4  # stopped early
    messages: list[str] = []
    fit(TrainConfig(out=str(tmp_path / "run"), resume=True), log=messages.append)
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines() == rows  # no epoch more
    assert any(f"stopped early at epoch {last}" in m for m in messages)


def test_settings_no_run_can_use_are_refused(tiny_data, tmp_path, capsys):
    for kwargs, message in (({"patience": -1}, "--patience must be 0"), ({"input_size": (0, 130)}, "at least 8 pixels, not 0 130"),
                            ({"head": "ctc", "length": 5}, "--length does not apply to --head ctc")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)
    assert main(["preview", str(tiny_data), "--count", "0", "--out", str(tmp_path / "p.png")]) == 2
    assert main(["sweep", "--data", str(tiny_data), "--head", "attention", "--models", "resnet18_mod", "baseline",
                 "--preprocessors", "gray", "--epochs", "1", "--out", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err
    assert "--count must be at least 1" in err and "baseline: only --head fixed" in err
    assert not (tmp_path / "sw" / "resnet18_mod-gray").exists()  # refused before any cell trained


def test_a_new_run_over_an_old_one_keeps_the_old_one(easy_data, tmp_path, monkeypatch):
    base = dict(data=str(easy_data), epochs=1, cache_dir=str(tmp_path / "cache"), batch_size=128, init="none", tta=1)
    run = tmp_path / "run"
    fit(TrainConfig(out=str(run), seed=1, **base), **QUIET)
    (run / "notes.txt").write_text("mine")
    first = load_checkpoint(run / "best.pt")["model_state"]
    messages: list[str] = []
    fit(TrainConfig(out=str(run), seed=2, **base), log=messages.append)  # no --resume: a new run
    previous = tmp_path / "run.previous"
    assert any("moved to" in m and str(previous) in m for m in messages)
    assert (previous / "notes.txt").read_text() == "mine" and not (run / "notes.txt").exists()
    kept = load_checkpoint(previous / "best.pt")["model_state"]
    assert all(torch.equal(first[k], kept[k]) for k in first)
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    fit(TrainConfig(out=str(run), seed=3, **base), **QUIET)  # only the one before is kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run", "run.previous"]
    assert not (previous / "notes.txt").exists()
    monkeypatch.chdir(run)  # --out . : nowhere to move it, so it says it starts over
    messages.clear()
    fit(TrainConfig(out=".", seed=4, **base), log=messages.append)
    assert any("starting a new one over it" in m for m in messages)


def test_resume_with_nothing_to_resume_is_refused_naming_the_path(easy_data, tmp_path, monkeypatch, capsys):
    import captcha.train

    base = dict(data=str(easy_data), epochs=1, cache_dir=str(tmp_path / "cache"), batch_size=128, init="none", tta=1)
    cut = tmp_path / "cut"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # killed in epoch 1: the run folder is there, its last.pt is not
        m.setattr(captcha.train, "train_one_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            fit(TrainConfig(out=str(cut), **base), **QUIET)
    assert cut.is_dir() and not (cut / "last.pt").exists()
    with pytest.raises(FileNotFoundError, match=f"--resume: no {cut / 'last.pt'} to continue"):
        fit(TrainConfig(out=str(cut), resume=True, **base), **QUIET)
    assert not (tmp_path / "cut.previous").exists() and cut.is_dir()  # nothing moved, nothing trained
    typo = tmp_path / "tpyo"
    assert main(["train", "--resume", "--out", str(typo), "--data", str(easy_data), "--epochs", "1", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"no {typo / 'last.pt'} to continue" in err and "check --out, or start the run without --resume" in err
    assert not typo.exists()


def test_validation_runs_after_the_first_epoch_and_the_last_third(easy_data, tmp_path):
    messages: list[str] = []
    settings = dict(data=str(easy_data), epochs=6, init="none", tta=1, cache_dir=str(tmp_path / "cache"), batch_size=128)
    config = TrainConfig(out=str(tmp_path / "run"), **settings)
    assert config.validate_from == pytest.approx(0.67)
    result = fit(config, log=messages.append)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        phases = [(int(r["epoch"]), r["phase"]) for r in csv.DictReader(f)]
    assert [e for e, phase in phases if phase == "train"] == [1, 2, 3, 4, 5, 6]
    assert [e for e, phase in phases if phase == "val"] == [1, 5, 6]  # past 0.67 x 6 = 4.02 epochs
    assert sum("phase: val" in m for m in messages) == 3 and sum("phase: train" in m for m in messages) == 6
    assert result.best_epoch in (1, 5, 6)
    # validating every epoch reads more, and changes nothing in training: the same weights at the end
    every = fit(TrainConfig(out=str(tmp_path / "every"), validate_from=0.0, **settings), **QUIET)
    with open(tmp_path / "every" / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f) if r["phase"] == "val"] == [1, 2, 3, 4, 5, 6]
    last, last_every = (load_checkpoint(tmp_path / name / "last.pt")["model_state"] for name in ("run", "every"))
    assert all(torch.equal(last[k], last_every[k]) for k in last)
    if every.best_epoch in (1, 5, 6):  # the same best epoch: the same checkpoint, the same test reading
        assert every.test == result.test
    with pytest.raises(ValueError, match="--validate-from"):
        TrainConfig(data=str(easy_data), validate_from=1.0)
