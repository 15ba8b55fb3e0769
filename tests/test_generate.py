import csv

import numpy as np

from captcha.generate import EVAL_STYLES, PRETRAIN_STYLES, STYLES, GeneratorConfig, generate_dataset, render
from captcha.imageio import read_image


def test_default_set_layout_and_labels(tiny_data):
    for split, count in (("train", 120), ("val", 40), ("test", 40)):
        files = sorted((tiny_data / split).glob("*.png"))
        assert len(files) == count
        with open(tiny_data / split / "labels.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count
        for row in rows:
            assert len(row["label"]) == 4 and row["filename"].startswith(row["label"] + "_")
        image = read_image(files[0])
        assert image.shape == (50, 130, 3)


def test_generation_is_seeded(tmp_path):
    config = GeneratorConfig(splits={"train": 5}, seed=11)
    generate_dataset(tmp_path / "a", config)
    generate_dataset(tmp_path / "b", config)
    for fa in sorted((tmp_path / "a" / "train").glob("*.png")):
        assert fa.read_bytes() == (tmp_path / "b" / "train" / fa.name).read_bytes()


def test_every_style_renders_at_any_size():
    rng = np.random.default_rng(0)
    for style in STYLES.values():
        for size in ((50, 130), (64, 200)):
            img = render("a7K2", style, rng, size)
            assert img.shape == (*size, 3) and img.dtype == np.uint8
            assert img.std() > 5  # something was drawn


def test_eval_styles_are_held_out_from_pretraining_styles():
    pre = [STYLES[s] for s in PRETRAIN_STYLES]
    for name in EVAL_STYLES:
        style = STYLES[name]
        for other in pre:
            assert not set(style.fonts) & set(other.fonts), f"{name} shares a font with {other.name}"
        assert style.curve_color == "text" or style.extra_lines != (0, 0)


def test_variable_length(tmp_path):
    generate_dataset(tmp_path, GeneratorConfig(length=(3, 6), splits={"train": 40}, seed=1))
    lengths = {len(p.stem.split("_")[0]) for p in (tmp_path / "train").glob("*.png")}
    assert lengths <= {3, 4, 5, 6} and len(lengths) > 1
