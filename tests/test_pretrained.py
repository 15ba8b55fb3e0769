"""Synthetic pre-training: the mixed style, weight transfer across alphabets, the pretrain command."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from captcha import pretrained
from captcha.checkpoint import load_checkpoint, make_meta, save_checkpoint
from captcha.cli import build_parser
from captcha.generate import EVAL_STYLES, MIX_CHOICES, MIX_RANGES, MIX_VARIETY, PRETRAIN_STYLES, STYLES, Style, mixed_style, render
from captcha.models import create_model
from captcha.pretrain import PretrainConfig, pretrain
from captcha.train import TrainConfig, fit

QUIET = {"log": lambda s: None}


def test_mixed_style_only_recombines_pretraining_traits():
    rng = np.random.default_rng(0)
    held_out_fonts = {f for name in EVAL_STYLES for f in STYLES[name].fonts}
    seen_fonts = set()
    for _ in range(200):
        style = mixed_style(rng)
        for f in fields(style):
            if f.name in ("name", "description", "background", "text_color", *MIX_VARIETY):
                continue
            recombined = {getattr(STYLES[n], f.name) for n in PRETRAIN_STYLES}
            value = getattr(style, f.name)
            if f.name in MIX_RANGES and value not in recombined:  # drawn from the mix's wider range
                low, high = MIX_RANGES[f.name]
                assert all(low <= v <= high for v in (value if isinstance(value, tuple) else (value,))), f.name
            elif f.name in MIX_CHOICES and value not in recombined:
                assert value in MIX_CHOICES[f.name], f.name
            else:
                assert value in recombined, f.name
        low, high = MIX_VARIETY["glyph_aspect"]
        assert low <= style.glyph_aspect[0] <= style.glyph_aspect[1] <= high
        assert MIX_VARIETY["glyph_elastic"][0] <= style.glyph_elastic <= MIX_VARIETY["glyph_elastic"][1]
        seen_fonts |= set(style.fonts)
        assert not (style.background == "dark") ^ (style.text_color == "light"), "light text only on dark"
        img = render("aB3x", style, rng)
        assert img.shape == (50, 130, 3) and img.std() > 5
    assert not seen_fonts & held_out_fonts
    assert len(seen_fonts) >= 4  # fonts of several pre-training styles


def test_letter_shape_variety_is_for_pretraining_only():
    """Named styles (the evaluation styles among them) keep the no-op defaults, so their images
    are exactly what they were before the variety existed; the mix bends and stretches glyphs."""
    for style in STYLES.values():
        for name in MIX_VARIETY:
            assert getattr(style, name) == getattr(Style, name), (style.name, name)
    plain = Style("t", fonts=STYLES["course"].fonts, curves=(0, 0), dots=(0, 0))
    varied = Style("t", fonts=STYLES["course"].fonts, curves=(0, 0), dots=(0, 0), glyph_aspect=(1.3, 1.3), glyph_elastic=0.2)
    a = render("mw5k", plain, np.random.default_rng(3))
    b = render("mw5k", varied, np.random.default_rng(3))
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 1
    ink = lambda img: (img.min(axis=2) < 150).any(axis=0).sum()  # noqa: E731  columns with text
    assert ink(b) > ink(a)  # stretched glyphs take more columns


def _checkpoint(tmp_path, alphabet: str, head: str):
    torch.manual_seed(1)
    model = create_model("resnet18_mod", num_classes=len(alphabet), length=4, in_channels=1, head=head)
    meta = make_meta(task="recognition", model_name="resnet18_mod", model_args={"num_classes": len(alphabet), "length": 4, "in_channels": 1, "head": head},
                     input_size=(50, 130), channels=1, preprocess="gray", mean=0.5, std=0.5, alphabet=alphabet, length=4)
    return model, save_checkpoint(tmp_path / f"{head}.pt", model, meta)


@pytest.mark.parametrize("head", ["attention", "fixed", "ctc"])
def test_transfer_maps_classifier_rows_by_symbol(tmp_path, head):
    source, path = _checkpoint(tmp_path, pretrained.PRETRAIN_ALPHABET, head)
    alphabet = "Zb7"  # a subset, in another order
    length = 5 if head != "ctc" else 4
    model = create_model("resnet18_mod", num_classes=len(alphabet), length=length, in_channels=1, head=head)
    filled = pretrained.transfer_weights(model, path, alphabet, head)
    assert filled == len(model.state_dict()) - (1 if head == "fixed" else 0) * 2  # fixed: a 5th head (weight, bias) is new
    src, dst = source.state_dict(), model.state_dict()
    offset = 1 if head == "ctc" else 0
    cls = {"attention": "head.classifier.weight", "fixed": "head.heads.0.weight", "ctc": "head.classifier.weight"}[head]
    for i, ch in enumerate(alphabet):
        assert torch.equal(dst[cls][i + offset], src[cls][pretrained.PRETRAIN_ALPHABET.index(ch) + offset])
    if head == "ctc":
        assert torch.equal(dst[cls][0], src[cls][0])  # the blank
    if head == "attention":
        assert torch.equal(dst["head.queries"][:4], src["head.queries"])  # a longer label keeps the learned positions
    assert torch.equal(dst["backbone.stem.0.weight"], src["backbone.stem.0.weight"])


def test_compact_weights_are_half_precision_and_small(tmp_path):
    _, path = _checkpoint(tmp_path, pretrained.PRETRAIN_ALPHABET, "attention")
    out = pretrained.save_compact(path, tmp_path / "w.pt")
    saved = load_checkpoint(out)
    assert all(v.dtype == torch.float16 for v in saved["model_state"].values() if v.is_floating_point())
    assert out.stat().st_size < 300_000 and saved["meta"]["alphabet"] == pretrained.PRETRAIN_ALPHABET


def test_shipped_weights_load_into_their_model():
    names = pretrained.list_pretrained()
    assert names, "captcha/weights/ ships at least one pre-trained file (make it with `captcha pretrain`)"
    for name in names:
        path = pretrained.WEIGHTS_DIR / f"{name}.pt"
        meta = load_checkpoint(path)["meta"]
        model = create_model(meta["model"]["name"], **meta["model"]["args"])
        assert pretrained.transfer_weights(model, path, meta["alphabet"], meta["head"]) == len(model.state_dict())
        assert sum(p.numel() for p in model.parameters()) <= (100_000 if meta["model"]["name"] != "sepnet_wide" else 300_000)


def test_pretrain_command_writes_weights_that_train_finds(tmp_path, easy_data):
    out = tmp_path / "w.pt"
    pretrain(PretrainConfig(images=64, val_images=16, epochs=1, batch_size=32, work_dir=str(tmp_path / "work"), out=str(out)), **QUIET)
    assert load_checkpoint(out)["meta"]["alphabet"] == pretrained.PRETRAIN_ALPHABET
    run_config = load_checkpoint(tmp_path / "work" / "run-sepnet-gray-attention" / "best.pt")["meta"]["config"]
    assert run_config["label_smoothing"] == 0.0 and run_config["ink_curves"] == 0.0  # as the shipped weights were made, whatever train's defaults
    messages = []
    fit(TrainConfig(data=str(easy_data), out=str(tmp_path / "ft"), epochs=1, preprocess="gray", init=str(out), cache_dir=str(tmp_path / "c")), log=messages.append)
    assert any(m.startswith("Initialised") and str(out) in m for m in messages)


def test_pretrain_reads_at_the_given_size_in_a_run_folder_of_its_own(tmp_path):
    work, messages = tmp_path / "work", []
    out = pretrain(PretrainConfig(images=32, val_images=16, epochs=1, batch_size=16, input_size=(40, 104), work_dir=str(work),
                                  out=str(tmp_path / "w.pt")), log=messages.append)
    assert any(m.startswith("Training sepnet") and "read at 40 x 104" in m for m in messages)  # the start line says the size
    meta = load_checkpoint(out)["meta"]
    assert meta["input_size"] == [40, 104] and meta["pretraining"]["input_size"] == [40, 104]
    assert (work / "run-sepnet-gray-attention-40x104" / "best.pt").exists()  # never resumed into a run of another size
    assert PretrainConfig().input_size == (50, 130)  # the shipped weights' size, whatever training's default


def test_pretrain_starts_at_random_or_continues_from_given_weights(tmp_path):
    messages: list[str] = []
    small = dict(images=64, val_images=16, epochs=1, batch_size=32, work_dir=str(tmp_path / "work"))
    first = pretrain(PretrainConfig(**small, out=str(tmp_path / "a.pt")), log=messages.append)
    assert any(m.startswith("Initialised at random") for m in messages)
    messages.clear()
    pretrain(PretrainConfig(**small, out=str(tmp_path / "b.pt"), init=str(first)), log=messages.append)
    assert any(m.startswith("Initialised") and str(first) in m and "at random" not in m for m in messages)
    args = build_parser().parse_args(["pretrain", "--init", "pretrained", "--epochs", "5", "--lr", "0.01", "--weight-decay", "0.05"])
    assert (args.init, args.epochs, args.lr, args.weight_decay) == ("pretrained", 5, 0.01, 0.05)


def test_shipped_weights_learn_an_unseen_style_faster_than_scratch(tmp_path):
    """Same small budget on a held-out style: the pre-trained start must be clearly ahead."""
    from captcha.generate import GeneratorConfig, generate_dataset

    data = tmp_path / "unseen"
    generate_dataset(data, GeneratorConfig(alphabet="0123456789abcdefghij", styles=("eval-plain",), seed=11,
                                           splits={"train": 600, "val": 200}))
    scores = {}
    for init in ("pretrained", "none"):
        result = fit(TrainConfig(data=str(data), out=str(tmp_path / init), epochs=4, init=init, cache_dir=str(tmp_path / "c")), **QUIET)
        scores[init] = sum(result.val["per_char_accuracy"]) / 4
    assert scores["pretrained"] > scores["none"] + 0.2, scores


def test_transfer_across_heads_and_reordered_alphabets_maps_rows_by_symbol(tmp_path):
    """Attention weights into a CTC model (blank row first), and into an alphabet of the same
    size in another order: every row lands on its own symbol, not on its old index."""
    source, path = _checkpoint(tmp_path, pretrained.PRETRAIN_ALPHABET, "attention")
    src = source.state_dict()["head.classifier.weight"]
    ctc = create_model("resnet18_mod", num_classes=3, length=4, in_channels=1, head="ctc")
    pretrained.transfer_weights(ctc, path, "Zb7", "ctc")
    for i, ch in enumerate("Zb7"):
        assert torch.equal(ctc.state_dict()["head.classifier.weight"][i + 1], src[pretrained.PRETRAIN_ALPHABET.index(ch)])
    reordered = pretrained.PRETRAIN_ALPHABET[::-1]
    model = create_model("resnet18_mod", num_classes=62, length=4, in_channels=1, head="attention")
    pretrained.transfer_weights(model, path, reordered, "attention")
    assert torch.equal(model.state_dict()["head.classifier.weight"][0], src[61])


def test_a_head_without_its_own_weights_starts_from_the_model_s_other_weights():
    found = pretrained.find_pretrained("sepnet", "gray", "ctc")
    assert found is not None and found.name.startswith("sepnet-gray-")
    assert pretrained.find_pretrained("sepnet", "denoise", "ctc") is None


def test_only_classifier_rows_are_remapped_by_symbol(tmp_path):
    """A 16-symbol checkpoint has 16-channel backbone tensors too: those are copied as they are."""
    symbols = "0123456789abcdef"
    source, path = _checkpoint(tmp_path, symbols, "attention")
    model = create_model("resnet18_mod", num_classes=16, length=4, in_channels=1, head="attention")
    pretrained.transfer_weights(model, path, symbols[::-1], "attention")
    src, dst = source.state_dict(), model.state_dict()
    assert torch.equal(dst["backbone.stem.0.weight"], src["backbone.stem.0.weight"])  # 16 output channels
    assert torch.equal(dst["head.queries"], src["head.queries"])
    assert torch.equal(dst["head.classifier.weight"][0], src["head.classifier.weight"][15])


def test_every_shipped_file_is_declared_where_its_model_is_registered():
    # `--init pretrained` looks the files up in the registry, timm-style, not by a file-name glob:
    # each file in captcha/weights/ is declared with its model, and the declaration agrees with
    # what the file's own meta says it is.
    from captcha.models import shipped_weights

    declared = shipped_weights()
    assert {w.file for _, w in declared} == {p.name for p in pretrained.WEIGHTS_DIR.glob("*.pt")}
    for model, weights in declared:
        meta = load_checkpoint(pretrained.WEIGHTS_DIR / weights.file)["meta"]
        assert (meta["model"]["name"], meta["preprocess"], meta["head"]) == (model, weights.preprocess, weights.head)
        assert pretrained.find_pretrained(model, weights.preprocess, weights.head) == pretrained.WEIGHTS_DIR / weights.file


def test_streamed_pretraining_reads_new_images_every_epoch_and_resumes_on_the_stream(tmp_path):
    from captcha.generate import GeneratorConfig
    from captcha.pretrain import StreamedTask, _train_config
    from captcha.synth_stream import draw_batch

    small = dict(images=32, val_images=16, epochs=2, batch_size=16, work_dir=str(tmp_path / "work"), stream=True, workers=1)
    out = tmp_path / "w.pt"
    messages: list[str] = []
    pretrain(PretrainConfig(**small, out=str(out)), log=messages.append)
    assert any("64 images over the run" in m for m in messages)
    meta = load_checkpoint(out)["meta"]
    assert meta["alphabet"] == pretrained.PRETRAIN_ALPHABET
    assert meta["pretraining"] | {"font_files": None} == {"style": "mix", "stream": True, "images": 64, "images_seen": 64, "epochs": 2,
                                                          "input_size": [50, 130], "seed": 0, "init": "none", "font_packages": [],
                                                          "font_files": None}
    run = tmp_path / "work" / "run-sepnet-gray-attention-stream"
    assert (run / "last.pt").exists() and not any((tmp_path / "work").glob("data-*"))  # nothing drawn to disk

    config = PretrainConfig(**small)
    drawn = GeneratorConfig(alphabet=pretrained.PRETRAIN_ALPHABET, styles=("mix",), splits={"train": 32, "val": 16})
    task = StreamedTask(_train_config(config, None), drawn, workers=1)
    data, source = task.read_data()
    assert source == "the mix stream"
    assert data.splits["train"].labels == draw_batch(drawn, 0, 0, 32).labels
    assert data.splits["val"].labels == draw_batch(drawn, 1, 0, 16).labels
    second = task.epoch_images(data, torch.device("cpu"))(2)
    assert second.labels == draw_batch(drawn, 0, 32, 32).labels  # epoch 2: the next 32 images of the stream
    resumed, _ = task.resumed(load_checkpoint(run / "last.pt")["config"])
    assert isinstance(resumed, StreamedTask) and resumed.drawn == drawn


def test_streamed_pretraining_draws_each_epoch_while_the_one_before_trains():
    from captcha.generate import GeneratorConfig
    from captcha.pretrain import StreamedTask, _train_config
    from captcha.synth_stream import draw_batch

    config = PretrainConfig(images=16, val_images=8, epochs=3, batch_size=8, stream=True, workers=1)
    drawn = GeneratorConfig(alphabet=pretrained.PRETRAIN_ALPHABET, styles=("mix",), splits={"train": 16, "val": 8})
    on_cpu = StreamedTask(_train_config(config, None), drawn, workers=1)
    data, _ = on_cpu.read_data()
    first = on_cpu.epoch_images(data, torch.device("cpu"))
    assert first(1) is None and on_cpu._ahead is None  # on the CPU drawing waits for its epoch: the cores are training
    assert first(2).labels == draw_batch(drawn, 0, 16, 16).labels and on_cpu._ahead is None

    task = StreamedTask(_train_config(config, None), drawn, workers=1, draw_ahead=True)  # as on a GPU
    images = task.epoch_images(data, torch.device("cpu"))
    assert images(1) is None and task._ahead[0] == 2  # epoch 1 trains on read_data's images while epoch 2's are drawn
    second = images(2)
    assert second.labels == draw_batch(drawn, 0, 16, 16).labels and task._ahead[0] == 3
    assert images(3).labels == draw_batch(drawn, 0, 32, 16).labels
    assert task._ahead is None  # nothing is drawn past the last epoch

    resumed = StreamedTask(_train_config(config, None), drawn, workers=1, draw_ahead=True)  # a resumed run starts at epoch 3, nothing ahead
    assert resumed.epoch_images(data, torch.device("cpu"))(3).labels == draw_batch(drawn, 0, 32, 16).labels
